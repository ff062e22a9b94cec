"""The OpenSSF model-signing v1.0 signature file (``model.sig``), written and read by hand.

The file is a sigstore bundle (media type v0.3) whose DSSE envelope carries an in-toto
v1 statement: one subject (the model's name and a root digest) and a predicate listing
every file with its sha256. Key-based bundles have no certificate and no transparency
log entry, only a ``publicKey.hint`` (sha256 of the signer's public key PEM).

Why not import ``model_signing``: it pulls in sigstore, pydantic, protobuf and (without
declaring it) pyOpenSSL, all to produce a few hundred bytes of JSON. The format is small
and fixed, and the interoperability tests run the real upstream CLI against this code in
both directions, so a drift would fail loudly.

Reading is strict: anything this module does not understand is a ``VerificationError``
naming the field, never a guess. Old upstream formats (v0.2 predicate, the buggy pre-1.0
PAE) and certificate or sharded bundles are refused by name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainguard.errors import VerificationError

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
_PREDICATE_TYPE_V01 = "https://model_signing/Digests/v0.1"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
"""A signature file larger than this is refused before parsing (a million files' worth)."""

_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Statement:
    """What a bundle says was signed: resources in their signed order."""

    model_name: str
    resources: tuple[tuple[str, str], ...]
    """``(name, sha256 hex)`` per file; a single-file model has the one name ``.``."""
    ignore_paths: tuple[str, ...]
    root_digest: str
    ledger: dict[str, Any] | None = None
    """``predicate["trainguard.ledger"]``: the ledger position signed with the files."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """The parts of a bundle a verifier needs, before anything is trusted."""

    payload: bytes
    signature: bytes
    key_hint: str | None


LEDGER_FIELD = "trainguard.ledger"


def root_digest(resources: Sequence[tuple[str, str]]) -> str:
    """The subject digest: sha256 over the raw file digests, concatenated in order.

    This is upstream's definition; it binds contents and order but not names (the
    names are bound by the signature over the whole statement).
    """
    h = hashlib.sha256()
    for _, digest in resources:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def pae(payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed, so the payload type
    cannot be swapped under a valid signature."""
    head = f"DSSEv1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} "
    return head.encode("ascii") + payload


def statement_bytes(
    model_name: str,
    resources: Sequence[tuple[str, str]],
    ignore_paths: Sequence[str],
    ledger: dict[str, Any] | None = None,
) -> bytes:
    """The in-toto statement, as compact JSON with sorted keys, so the same checkpoint
    signed twice gives the same payload (upstream's own key order is not stable).
    ``ledger`` goes into the predicate under ``LEDGER_FIELD``, which upstream's verifier
    leaves alone (tests/test_checkpoints.py runs it on such a bundle)."""
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": list(ignore_paths),
            },
            "resources": [
                {"name": name, "algorithm": "sha256", "digest": digest}
                for name, digest in resources
            ],
            **({LEDGER_FIELD: dict(ledger)} if ledger is not None else {}),
        },
    }
    return json.dumps(statement, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def bundle_bytes(payload: bytes, signature: bytes, key_hint: str) -> bytes:
    """The ``model.sig`` file. Only fields upstream's strict (``extra="forbid"``) parser
    knows; ``keyid`` is empty as upstream writes it, the key is named by ``hint``."""
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return (json.dumps(bundle, indent=2) + "\n").encode("ascii")


def _field(obj: Any, key: str, kind: type, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise VerificationError(f"malformed signature: {where} has no {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        raise VerificationError(
            f"malformed signature: {where}.{key} is {type(value).__name__}, "
            f"expected {kind.__name__}"
        )
    return value


def _b64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VerificationError(f"malformed signature: {where} is not base64") from None


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def read_envelope(data: bytes) -> Envelope:
    """Parse a bundle up to (not including) signature verification."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise VerificationError(f"signature file is larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        bundle = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"malformed signature: not JSON ({exc})") from None
    media = _field(bundle, "mediaType", str, "bundle")
    if media != BUNDLE_MEDIA_TYPE:
        raise VerificationError(f"unsupported bundle media type {media!r}")
    material = _field(bundle, "verificationMaterial", dict, "bundle")
    if "publicKey" not in material:
        kinds = sorted(k for k in material if k != "tlogEntries")
        raise VerificationError(
            f"the bundle is signed with {', '.join(kinds) or 'no key material'}; "
            "trainguard verifies key-signed (publicKey) bundles only"
        )
    hint = _field(material, "publicKey", dict, "verificationMaterial").get("hint")
    if hint is not None and not isinstance(hint, str):
        raise VerificationError("malformed signature: publicKey.hint is not a string")
    envelope = _field(bundle, "dsseEnvelope", dict, "bundle")
    payload_type = _field(envelope, "payloadType", str, "dsseEnvelope")
    if payload_type != PAYLOAD_TYPE:
        raise VerificationError(f"unsupported DSSE payload type {payload_type!r}")
    signatures = _field(envelope, "signatures", list, "dsseEnvelope")
    if len(signatures) != 1:
        raise VerificationError(
            f"malformed signature: expected one DSSE signature, found {len(signatures)}"
        )
    sig = _b64(_field(signatures[0], "sig", str, "signatures[0]"), "signatures[0].sig")
    payload = _b64(_field(envelope, "payload", str, "dsseEnvelope"), "dsseEnvelope.payload")
    return Envelope(payload=payload, signature=sig, key_hint=hint or None)


def read_statement(payload: bytes) -> Statement:
    """Parse a payload whose signature has already verified. Still strict: a signer's
    tool may be buggy, and an inconsistent root digest means the manifest is not what
    other verifiers would see."""
    try:
        statement = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise VerificationError(f"malformed statement: not JSON ({exc})") from None
    kind = _field(statement, "_type", str, "statement")
    if kind != STATEMENT_TYPE:
        raise VerificationError(f"unsupported in-toto statement type {kind!r}")
    predicate_type = _field(statement, "predicateType", str, "statement")
    if predicate_type == _PREDICATE_TYPE_V01:
        raise VerificationError("model-signing v0.2 signature (Digests/v0.1); re-sign it")
    if predicate_type != PREDICATE_TYPE:
        raise VerificationError(f"unsupported predicate type {predicate_type!r}")
    subjects = _field(statement, "subject", list, "statement")
    if len(subjects) != 1:
        raise VerificationError(f"malformed statement: {len(subjects)} subjects, expected 1")
    name = _field(subjects[0], "name", str, "subject")
    claimed_root = _field(_field(subjects[0], "digest", dict, "subject"), "sha256", str, "digest")
    predicate = _field(statement, "predicate", dict, "statement")
    serialization = _field(predicate, "serialization", dict, "predicate")
    method = _field(serialization, "method", str, "serialization")
    if method != "files":
        raise VerificationError(f"unsupported serialization method {method!r} (only 'files')")
    hash_type = _field(serialization, "hash_type", str, "serialization")
    if hash_type != "sha256":
        raise VerificationError(f"unsupported hash {hash_type!r} (only sha256)")
    ignore = serialization.get("ignore_paths", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise VerificationError("malformed statement: ignore_paths is not a list of strings")
    resources: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(_field(predicate, "resources", list, "predicate")):
        where = f"resources[{i}]"
        rname = _field(item, "name", str, where)
        algorithm = _field(item, "algorithm", str, where)
        digest = _field(item, "digest", str, where)
        if algorithm != "sha256" or not _HEX64.fullmatch(digest):
            raise VerificationError(f"malformed statement: {where} is not a sha256 digest")
        if not _utf8(rname):
            raise VerificationError(f"malformed statement: {where}.name is not UTF-8")
        if rname in seen:
            raise VerificationError(f"malformed statement: {rname!r} is listed twice")
        seen.add(rname)
        resources.append((rname, digest))
    if root_digest(resources) != claimed_root:
        raise VerificationError(
            "malformed statement: the subject digest does not match the listed files"
        )
    ledger = predicate.get(LEDGER_FIELD)
    if ledger is not None and not _position(ledger):
        raise VerificationError(f"malformed statement: {LEDGER_FIELD} is not a ledger position")
    return Statement(
        model_name=name,
        resources=tuple(resources),
        ignore_paths=tuple(ignore),
        root_digest=claimed_root,
        ledger=ledger,
    )


def _position(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"origin", "size", "root"}
        and isinstance(value["origin"], str)
        and isinstance(value["size"], int)
        and isinstance(value["root"], str)
        and bool(_HEX64.fullmatch(value["root"]))
    )
