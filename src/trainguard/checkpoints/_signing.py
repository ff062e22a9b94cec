"""``sign`` and ``verify``: a checkpoint against an OpenSSF model-signing signature.

The rule for what raises and what is returned (STYLE: ``verify_*`` raises):

* the signature itself (wrong key, bad signature, malformed or unsupported bundle, an
  unreadable signature file) raises ``VerificationError``: nothing about the files can
  be trusted, so there is nothing to report about them;
* once the signature verifies, differences in the files are findings, every one of
  them: ``checkpoint.modified``, ``checkpoint.added``, ``checkpoint.missing``, and
  ``checkpoint.error`` for what could not be read;
* no signature at all is the finding ``checkpoint.unsigned`` (a checkpoint that is gone
  altogether, signature included, is ``checkpoint.missing``), never a pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from trainguard import keys
from trainguard.checkpoints import _bundle, _tree
from trainguard.checkpoints._results import (
    CheckpointVerification,
    FileDigest,
    LedgerPosition,
    Manifest,
    SignResult,
)
from trainguard.errors import ConfigError, IntegrityError, ScanError, VerificationError
from trainguard.findings import Finding, Location, Rule, Severity

PrivateKeySource = str | os.PathLike[str] | keys.EcdsaPrivateKey
"""A PEM file (refused unless private to its owner) or a loaded P-256 key."""
PublicKeySource = str | os.PathLike[str] | bytes | keys.EcdsaPublicKey
"""A PEM file, PEM bytes, or a loaded P-256 key."""


def load_private(source: PrivateKeySource) -> keys.EcdsaPrivateKey:
    if isinstance(source, str | os.PathLike):
        return keys.load_ecdsa_private_key(source)
    return source


def load_public(source: PublicKeySource) -> keys.EcdsaPublicKey:
    if isinstance(source, str | os.PathLike | bytes):
        return keys.load_ecdsa_public_key(source)
    return source


def ignore_list(lay: _tree.Layout, extra: Iterable[str]) -> tuple[str, ...]:
    """What a signature leaves out: upstream's defaults, the caller's, and the signature
    itself when it lies inside the folder. Recorded in the statement, so the verifier
    (ours or upstream's) leaves out exactly the same."""
    paths = set(_tree.DEFAULT_IGNORE) | {Path(p).as_posix() for p in extra}
    own = lay.signature_ignore()
    if own is not None:
        paths.add(own)
    return tuple(sorted(paths))


def build_manifest(
    lay: _tree.Layout,
    ignore: Iterable[str],
    *,
    known: Mapping[str, tuple[str, int]] | None = None,
    workers: int | None = None,
) -> Manifest:
    """Hash every file of the checkpoint. ``known`` carries digests taken while writing
    (``save``); those files are not read again, only their size is checked."""
    if not lay.root.exists():
        raise ConfigError(f"{lay.root} does not exist")
    found = _tree.walk(lay, ignore)
    if found.unreadable:
        name, why = next(iter(found.unreadable.items()))
        raise ScanError(f"cannot list {lay.root / name}: {why}")
    if found.odd:
        shown = ", ".join(f"{n} ({why})" for n, why in sorted(found.odd.items())[:5])
        raise ConfigError(
            f"cannot sign {lay.root}: only regular files can be signed, found {shown}; "
            "move them out or add them to ignore_paths"
        )
    for name in found.files:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"cannot sign a file whose name is not UTF-8: {name!r}") from None
    known = known or {}
    digests: dict[str, tuple[str, int]] = {}
    for name, path in found.files.items():
        if name in known:
            size = path.stat().st_size
            if size != known[name][1]:
                raise IntegrityError(
                    f"{path} changed after it was written ({known[name][1]} -> {size} bytes)"
                )
            digests[name] = known[name]
    todo = {n: p for n, p in found.files.items() if n not in digests}
    for name, result in _tree.hash_files(todo, workers=workers).items():
        if isinstance(result, OSError):
            raise ScanError(f"cannot read {todo[name]}: {result.strerror or result}")
        digests[name] = result
    files = tuple(
        FileDigest(name, digests[name][0], digests[name][1])
        for name in sorted(digests, key=_tree.sort_key)
    )
    return Manifest(model_name=lay.model_name, files=files, ignore_paths=tuple(ignore))


def write_signature(lay: _tree.Layout, manifest: Manifest, key: keys.EcdsaPrivateKey) -> str:
    """Sign ``manifest`` and write the bundle; returns the key id."""
    resources = [(f.name, f.sha256) for f in manifest.files]
    position = manifest.ledger.to_json() if manifest.ledger is not None else None
    payload = _bundle.statement_bytes(
        manifest.model_name, resources, manifest.ignore_paths, position
    )
    signature = keys.ecdsa_sign(key, _bundle.pae(payload))
    public: keys.EcdsaPublicKey = key.public_key()
    data = _bundle.bundle_bytes(payload, signature, keys.key_hint(public))
    _tree.write_atomic(lay.signature, data)
    return keys.fingerprint(public)


def sign(
    path: str | os.PathLike[str],
    private_key: PrivateKeySource,
    *,
    out: str | os.PathLike[str] | None = None,
    ignore_paths: Iterable[str] = (),
    workers: int | None = None,
) -> SignResult:
    """Sign a checkpoint file or folder with an ECDSA P-256 key.

    Writes an OpenSSF model-signing v1.0 bundle that ``model_signing verify key``
    accepts: ``model.sig`` inside a folder, ``NAME.sig`` beside a file, or ``out``.
    Every regular file is hashed (in parallel); a symbolic link or special file is
    refused (``ConfigError``) rather than silently followed or skipped. ``ignore_paths``
    are folder-relative prefixes to leave out, on top of ``.git`` and friends.
    """
    start = time.perf_counter()
    key = load_private(private_key)
    lay = _tree.layout(path, out)
    manifest = build_manifest(lay, ignore_list(lay, ignore_paths), workers=workers)
    key_id = write_signature(lay, manifest, key)
    return SignResult(
        path=str(lay.root),
        signature=str(lay.signature),
        key_id=key_id,
        manifest=manifest,
        seconds=time.perf_counter() - start,
    )


def _read_signature(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > _bundle.MAX_BUNDLE_BYTES:
                raise VerificationError(
                    f"{path} is larger than {_bundle.MAX_BUNDLE_BYTES} bytes; not a signature"
                )
            return f.read(_bundle.MAX_BUNDLE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise VerificationError(f"cannot read signature {path}: {exc.strerror or exc}") from exc


def read_signed_manifest(signature: bytes, key: keys.EcdsaPublicKey) -> Manifest:
    """Check a bundle's signature with ``key`` and return what it signed; raise
    ``VerificationError`` for anything else."""
    envelope = _bundle.read_envelope(signature)
    expected = keys.key_hint(key)
    if envelope.key_hint is not None and envelope.key_hint != expected:
        raise VerificationError(
            f"signed by a different key (hint {envelope.key_hint[:16]}, given key {expected[:16]})"
        )
    keys.ecdsa_verify(key, _bundle.pae(envelope.payload), envelope.signature)
    statement = _bundle.read_statement(envelope.payload)
    bound = statement.ledger
    return Manifest(
        model_name=statement.model_name,
        files=tuple(FileDigest(n, d) for n, d in statement.resources),
        ignore_paths=statement.ignore_paths,
        ledger=LedgerPosition(bound["origin"], bound["size"], bound["root"]) if bound else None,
    )


def verify(
    path: str | os.PathLike[str],
    public_key: PublicKeySource,
    *,
    signature: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> CheckpointVerification:
    """Check a checkpoint file or folder against its model-signing signature.

    Raises ``VerificationError`` when the signature does not verify with the key or
    cannot be read; returns findings for every file that differs (see the module
    docstring). Bundles made by ``model_signing sign key`` with a P-256 key verify here.
    """
    start = time.perf_counter()
    key = load_public(public_key)
    lay = _tree.layout(path, signature)
    where = str(lay.root)
    data = _read_signature(lay.signature)
    if data is None:
        gone = not lay.root.exists() and not lay.root.is_symlink()
        rule, message = (
            (Rule.CHECKPOINT_MISSING, f"checkpoint {where} is gone, its signature too")
            if gone
            else (Rule.CHECKPOINT_UNSIGNED, f"checkpoint {where} has no signature")
        )
        finding = Finding(
            rule,
            Severity.HIGH if gone else Severity.MEDIUM,
            message,
            Location(where),
            {"expected_signature": str(lay.signature)},
        )
        return CheckpointVerification(
            path=where,
            signature=None,
            signed=False,
            key_id=None,
            manifest=None,
            findings=(finding,),
            seconds=time.perf_counter() - start,
        )
    manifest = read_signed_manifest(data, key)
    findings, checked = compare(lay, manifest, workers=workers)
    return CheckpointVerification(
        path=where,
        signature=str(lay.signature),
        signed=True,
        key_id=keys.fingerprint(key),
        manifest=manifest,
        findings=findings,
        checked=checked,
        seconds=time.perf_counter() - start,
    )


def compare(
    lay: _tree.Layout, manifest: Manifest, *, workers: int | None = None
) -> tuple[tuple[Finding, ...], int]:
    """The files on disk against a signed manifest: findings in name order, and how many
    files were hashed. Names from the manifest are only compared, never opened, so a
    signed ``../../x`` can at most be reported missing."""
    ignore = list(manifest.ignore_paths)
    own = lay.signature_ignore()
    if own is not None:
        ignore.append(own)
    found = _tree.walk(lay, ignore)
    signed = {f.name: f.sha256 for f in manifest.files}
    common = {n: p for n, p in found.files.items() if n in signed}
    results = _tree.hash_files(common, workers=workers)

    def loc(name: str) -> Location:
        return Location(str(lay.root if name == "." else lay.root / name))

    out: list[tuple[tuple[str, ...], Finding]] = []

    def add(name: str, rule: Rule, message: str, **evidence: object) -> None:
        ev = {"name": name, "signature": str(lay.signature), **evidence}
        out.append((_tree.sort_key(name), Finding(rule, Severity.HIGH, message, loc(name), ev)))

    for folder, why in found.unreadable.items():
        add(folder, Rule.CHECKPOINT_ERROR, f"cannot list {loc(folder).path}: {why}")
    for name, expected in signed.items():
        if name in common:
            result = results[name]
            if isinstance(result, FileNotFoundError):
                add(name, Rule.CHECKPOINT_MISSING, f"signed file {name} is gone")
            elif isinstance(result, OSError):
                add(name, Rule.CHECKPOINT_ERROR, f"cannot read {name}: {result}")
            elif result[0] != expected:
                add(
                    name,
                    Rule.CHECKPOINT_MODIFIED,
                    f"{name} differs from what was signed",
                    expected_sha256=expected,
                    actual_sha256=result[0],
                    size=result[1],
                )
        elif name in found.odd:
            add(
                name,
                Rule.CHECKPOINT_MODIFIED,
                f"{name} was replaced by a {found.odd[name]}",
                expected_sha256=expected,
                kind=found.odd[name],
            )
        elif not found.under_unreadable(name):
            add(
                name,
                Rule.CHECKPOINT_MISSING,
                f"signed file {name} is gone",
                expected_sha256=expected,
            )
    for name in found.files.keys() - signed.keys():
        add(name, Rule.CHECKPOINT_ADDED, f"{name} was not signed", kind="file")
    for name in found.odd.keys() - signed.keys():
        add(
            name,
            Rule.CHECKPOINT_ADDED,
            f"{name} ({found.odd[name]}) was not signed",
            kind=found.odd[name],
        )
    out.sort(key=lambda item: (item[0], item[1].rule.value))
    return tuple(f for _, f in out), len(common)
