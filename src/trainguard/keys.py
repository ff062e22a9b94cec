"""The one place trainguard does public-key cryptography (Ed25519, via ``cryptography``).

Everything that signs or verifies (environment seals now; checkpoint manifests and model
signing later) goes through these few functions, so algorithms, key-file rules and error
types are decided once. ``cryptography`` is imported lazily: it is the ``sign`` extra, and
``import trainguard`` must work without it.

Key files are PEM: PKCS#8 private keys without a passphrase (the file mode protects
them, so a private key that group or others can read is refused) and
SubjectPublicKeyInfo public keys.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any, Protocol, cast

from trainguard.errors import ConfigError, VerificationError

__all__ = [
    "PrivateKey",
    "PublicKey",
    "fingerprint",
    "generate_ed25519",
    "load_private_key",
    "load_public_key",
    "public_key_of",
    "sign",
    "verify",
]


class PublicKey(Protocol):
    def verify(self, signature: bytes, data: bytes) -> None: ...
    def public_bytes(self, encoding: Any, format: Any) -> bytes: ...


class PrivateKey(Protocol):
    def sign(self, data: bytes) -> bytes: ...
    def public_key(self) -> Any: ...


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import (  # type: ignore[import-not-found, unused-ignore]
            serialization,
        )
        from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found, unused-ignore]
            ed25519,
        )
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError(
            "signing needs the 'cryptography' package: pip install 'trainguard[sign]'"
        ) from None
    return serialization, ed25519


def generate_ed25519() -> tuple[bytes, bytes]:
    """A new key pair as (private PEM, public PEM)."""
    serialization, ed25519 = _crypto()
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, _public_pem(key.public_key())


def _public_pem(key: Any) -> bytes:
    serialization, _ = _crypto()
    pem: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Load an Ed25519 private key, refusing one that is not private to its owner."""
    serialization, ed25519 = _crypto()
    p = Path(path)
    try:
        st = p.stat()
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read private key {p}: {exc.strerror or exc}") from exc
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"private key {p} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {p}"
        )
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{p} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{p} is not an Ed25519 key ({type(key).__name__})")
    return cast(PrivateKey, key)


def load_public_key(source: str | os.PathLike[str] | bytes) -> PublicKey:
    """Load an Ed25519 public key from a PEM file path or PEM bytes."""
    serialization, ed25519 = _crypto()
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read public key {source}: {exc.strerror or exc}") from exc
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"not an Ed25519 public key ({type(key).__name__})")
    return cast(PublicKey, key)


def public_key_of(private_key: PrivateKey) -> PublicKey:
    return cast(PublicKey, private_key.public_key())


def fingerprint(public_key: PublicKey) -> str:
    """A short stable key id: sha256 of the public key's PEM, first 16 hex digits."""
    return hashlib.sha256(_public_pem(public_key)).hexdigest()[:16]


def sign(private_key: PrivateKey, data: bytes) -> bytes:
    return private_key.sign(data)


def verify(public_key: PublicKey, data: bytes, signature: bytes) -> None:
    """Return if ``signature`` is ``public_key``'s over ``data``; raise otherwise."""
    try:
        from cryptography.exceptions import (  # type: ignore[import-not-found, unused-ignore]
            InvalidSignature,
        )
    except ImportError:  # pragma: no cover
        _crypto()
        raise
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        raise VerificationError("signature does not verify with the given key") from None
