"""Signed checkpoints: OpenSSF model-signing signatures that other tools verify too.

``sign(path, key)`` writes a model-signing v1.0 bundle (``model.sig`` in a folder,
``NAME.sig`` beside a file): a DSSE envelope over an in-toto statement that lists every
file and its sha256, signed with ECDSA P-256. ``model_signing verify key`` accepts it,
and ``verify(path, public_key)`` accepts what ``model_signing sign key`` writes.
``save(obj, path, ...)`` is ``torch.save`` that hashes as it writes, signs and records
the manifest digest in a ledger.

``verify`` raises ``VerificationError`` when the signature does not verify and returns
findings (``checkpoint.modified``/``added``/``missing``/``unsigned``/``error``) for the
files; see ``_signing``. Importing this package imports neither torch nor
``cryptography``; keys are loaded through ``trainguard.keys`` when first needed.
"""

from __future__ import annotations

from trainguard.checkpoints._recorded import RecordedVerification, verify_recorded
from trainguard.checkpoints._results import (
    CheckpointVerification,
    FileDigest,
    Manifest,
    SaveResult,
    SignResult,
)
from trainguard.checkpoints._save import DEFAULT_FILE, HashingWriter, Ledger, save
from trainguard.checkpoints._signing import (
    PrivateKeySource,
    PublicKeySource,
    read_signed_manifest,
    sign,
    verify,
)
from trainguard.checkpoints._tree import SIGNATURE_NAME

__all__ = [
    "DEFAULT_FILE",
    "SIGNATURE_NAME",
    "CheckpointVerification",
    "FileDigest",
    "HashingWriter",
    "Ledger",
    "Manifest",
    "PrivateKeySource",
    "PublicKeySource",
    "RecordedVerification",
    "SaveResult",
    "SignResult",
    "read_signed_manifest",
    "save",
    "sign",
    "verify",
    "verify_recorded",
]
