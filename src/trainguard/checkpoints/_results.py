"""What signing, verifying and saving a checkpoint return. All frozen: results are
evidence, and evidence that can be edited after the fact is not worth recording."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from trainguard.errors import IntegrityError
from trainguard.findings import Finding


@dataclass(frozen=True, slots=True)
class FileDigest:
    name: str
    """POSIX path relative to the checkpoint folder; ``.`` for a single-file checkpoint."""
    sha256: str
    size: int | None = None
    """Bytes hashed; ``None`` when read from a signature (the format has no sizes)."""


@dataclass(frozen=True, slots=True)
class LedgerPosition:
    """Where a ledger stood when a checkpoint was signed: its origin (unique per ledger),
    its size (records appended so far) and the Merkle root over those records."""

    origin: str
    size: int
    root: str

    def to_json(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": self.root}


@dataclass(frozen=True, slots=True)
class Manifest:
    """Every file of a checkpoint and its sha256, in model-signing order."""

    model_name: str
    files: tuple[FileDigest, ...]
    ignore_paths: tuple[str, ...] = ()
    ledger: LedgerPosition | None = None
    """The ledger position the signature was made at (``save(..., ledger=...)``): signed
    with the files, so the checkpoint names the run it belongs to."""

    @property
    def root_digest(self) -> str:
        """model-signing's subject digest: sha256 over the file digests in order (it
        does not cover names; ``manifest_digest`` does)."""
        h = hashlib.sha256()
        for f in self.files:
            h.update(bytes.fromhex(f.sha256))
        return h.hexdigest()

    @property
    def manifest_digest(self) -> str:
        """``sha256:`` + sha256 of ``[[name, "sha256", hex], ...]`` as compact JSON.

        What the ledger records: it binds names and contents, and (unlike a hash of
        ``model.sig``, whose ECDSA signature changes every time) it is the same for the
        same checkpoint whoever signed it and with which tool, so a rollback to an older
        signed state or a folder swapped in from another run shows up as a different
        digest. For this shape (arrays of strings) compact JSON is RFC 8785 canonical.
        """
        text = json.dumps(
            [[f.name, "sha256", f.sha256] for f in self.files],
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def total_bytes(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)

    def to_json(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "manifest_digest": self.manifest_digest,
            "root_digest": self.root_digest,
            "ignore_paths": list(self.ignore_paths),
            "files": [{"name": f.name, "sha256": f.sha256, "size": f.size} for f in self.files],
            "ledger": self.ledger.to_json() if self.ledger is not None else None,
        }


@dataclass(frozen=True, slots=True)
class SignResult:
    path: str
    signature: str
    key_id: str
    """``keys.fingerprint`` of the signing key (16 hex digits)."""
    manifest: Manifest
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "signature": self.signature,
            "key_id": self.key_id,
            "manifest": self.manifest.to_json(),
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True, slots=True)
class CheckpointVerification:
    """The outcome of checking a checkpoint against its signature.

    A signature that fails, or a bundle that cannot be read, never gets here (``verify``
    raises ``VerificationError``): this holds only checkpoints whose signature verified
    (``signed``) or that have none. Content differences are ``findings``; ``ok`` is true
    only for a signed checkpoint with none, so "unsigned" can never read as a pass.
    """

    path: str
    signature: str | None
    signed: bool
    key_id: str | None
    manifest: Manifest | None
    """The signed manifest (what the files should be), when there is a signature."""
    findings: tuple[Finding, ...]
    checked: int = 0
    """Files hashed and compared."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.signed and not self.findings

    def require_ok(self) -> None:
        """Raise ``IntegrityError`` unless ``ok``: for "verify before load" call sites
        that have nothing to do with a finding but stop."""
        if self.ok:
            return
        shown = "; ".join(f"{f.rule}: {f.location.path}" for f in self.findings[:5])
        more = f" (+{len(self.findings) - 5} more)" if len(self.findings) > 5 else ""
        raise IntegrityError(f"checkpoint {self.path} does not verify: {shown}{more}")

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "signature": self.signature,
            "signed": self.signed,
            "ok": self.ok,
            "key_id": self.key_id,
            "manifest": self.manifest.to_json() if self.manifest else None,
            "findings": [f.to_json() for f in self.findings],
            "checked": self.checked,
            "seconds": round(self.seconds, 4),
        }


@dataclass(frozen=True, slots=True)
class SaveResult:
    """A checkpoint written by ``save``: the file torch wrote, its digest taken while
    writing, and the manifest (signed when a key was given)."""

    path: str
    """The checkpoint: the file itself, or the folder it was saved into."""
    file: str
    sha256: str
    size: int
    manifest: Manifest
    signature: str | None
    key_id: str | None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "file": self.file,
            "sha256": self.sha256,
            "size": self.size,
            "signature": self.signature,
            "key_id": self.key_id,
            "manifest": self.manifest.to_json(),
            "seconds": round(self.seconds, 4),
        }
