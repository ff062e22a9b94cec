"""The one place trainguard does public-key cryptography (via ``cryptography``).

Two key types, each for a reason. Ed25519 signs what only trainguard reads (environment
seals, ledger heads): small, fast, no parameter choices. ECDSA P-256 signs checkpoints,
because OpenSSF model-signing (the format other tools verify) accepts only EC keys and
P-256 with SHA-256 is the pair every sigstore verifier knows.

Everything that signs or verifies goes through these few functions, so algorithms,
key-file rules and error types are decided once. ``cryptography`` is imported lazily: it
is the ``sign`` extra, and ``import trainguard`` must work without it.

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
    "derive_seed",
    "ed25519_from_seed",
    "ed25519_seed",
    "fingerprint",
    "generate_ed25519",
    "load_private_key",
    "load_public_key",
    "public_key_from_raw",
    "public_key_of",
    "public_raw",
    "sign",
    "verify",
    "write_private_pem",
]


class PublicKey(Protocol):
    def verify(self, signature: bytes, data: bytes) -> None: ...
    def public_bytes(self, encoding: Any, format: Any) -> bytes: ...


class PrivateKey(Protocol):
    def sign(self, data: bytes) -> bytes: ...
    def public_key(self) -> Any: ...


class EcdsaPublicKey(Protocol):
    """An EC public key as ``cryptography`` gives it (typed loosely: ``cryptography`` is an
    optional dependency, so its classes cannot appear in signatures)."""

    @property
    def curve(self) -> Any: ...
    def verify(self, signature: bytes, data: bytes, signature_algorithm: Any) -> None: ...
    def public_bytes(self, encoding: Any, format: Any) -> bytes: ...


class EcdsaPrivateKey(Protocol):
    @property
    def curve(self) -> Any: ...
    def sign(self, data: bytes, signature_algorithm: Any) -> bytes: ...
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


def write_private_pem(path: Path, pem: bytes) -> None:
    """Create ``path`` holding ``pem``, readable by its owner only (0600 from the start,
    never a moment wider), and never over an existing file (``FileExistsError``)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)


def _public_pem(key: Any) -> bytes:
    serialization, _ = _crypto()
    pem: bytes = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def _read_private_pem(p: Path) -> Any:
    """Read and parse a private key file, refusing one that is not private to its owner.

    The mode is checked on the open descriptor, so a file swapped between the check and
    the read cannot slip through.
    """
    serialization, _ = _crypto()
    try:
        with open(p, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read private key {p}: {exc.strerror or exc}") from exc
    if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"private key {p} is readable or writable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {p}"
        )
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{p} is not an unencrypted PEM private key: {exc}") from exc


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Load an Ed25519 private key, refusing one that is not private to its owner."""
    _, ed25519 = _crypto()
    p = Path(path)
    key = _read_private_pem(p)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{p} is not an Ed25519 key ({type(key).__name__})")
    return cast(PrivateKey, key)


def _read_public_pem(source: str | os.PathLike[str] | bytes) -> tuple[Any, str]:
    """(key object of whatever type, how to name the source in an error)."""
    serialization, _ = _crypto()
    if isinstance(source, bytes):
        data, what = source, "public key"
    else:
        what = str(source)
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read public key {source}: {exc.strerror or exc}") from exc
    try:
        return serialization.load_pem_public_key(data), what
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{what} is not a PEM public key: {exc}") from exc


def load_public_key(source: str | os.PathLike[str] | bytes) -> PublicKey:
    """Load an Ed25519 public key from a PEM file path or PEM bytes."""
    _, ed25519 = _crypto()
    key, _what = _read_public_pem(source)
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise ConfigError(f"not an Ed25519 public key ({type(key).__name__})")
    return cast(PublicKey, key)


def public_key_of(private_key: PrivateKey) -> PublicKey:
    return cast(PublicKey, private_key.public_key())


def fingerprint(public_key: PublicKey | EcdsaPublicKey) -> str:
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


# Raw forms, for the ledger's key ratchet and its C2SP signed-note key ids. A ratchet
# needs the 32-byte seed (to derive the next key) and the raw public key (to publish it
# inside a signed head); PEM would only wrap the same bytes.


def ed25519_seed(private_key: PrivateKey) -> bytes:
    """The 32-byte Ed25519 private seed (RFC 8032) of ``private_key``."""
    serialization, _ = _crypto()
    seed: bytes = cast(Any, private_key).private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return seed


def ed25519_from_seed(seed: bytes) -> PrivateKey:
    """The Ed25519 private key whose RFC 8032 seed is ``seed`` (32 bytes)."""
    _, ed25519 = _crypto()
    if len(seed) != 32:
        raise ConfigError(f"an Ed25519 seed is 32 bytes, not {len(seed)}")
    return cast(PrivateKey, ed25519.Ed25519PrivateKey.from_private_bytes(seed))


def public_raw(public_key: PublicKey) -> bytes:
    """The 32-byte raw Ed25519 public key."""
    serialization, _ = _crypto()
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_from_raw(raw: bytes) -> PublicKey:
    """An Ed25519 public key from its 32 raw bytes."""
    _, ed25519 = _crypto()
    try:
        return cast(PublicKey, ed25519.Ed25519PublicKey.from_public_bytes(raw))
    except ValueError as exc:
        raise ConfigError(f"not a raw Ed25519 public key: {exc}") from None


def derive_seed(seed: bytes, label: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) of ``seed`` under ``label``: the next 32-byte seed.

    One-way: the derived seed reveals nothing about ``seed``, which is what lets a
    ratchet erase the old seed and still move forward.
    """
    try:
        from cryptography.hazmat.primitives import (  # type: ignore[import-not-found, unused-ignore]
            hashes,
        )
        from cryptography.hazmat.primitives.kdf.hkdf import (  # type: ignore[import-not-found, unused-ignore]
            HKDF,
        )
    except ImportError:  # pragma: no cover
        _crypto()
        raise
    out: bytes = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(seed)
    return out


# --- ECDSA P-256 (checkpoint signing, OpenSSF model-signing compatible) -------------------


def _ec() -> tuple[Any, Any, Any]:
    serialization, _ = _crypto()
    from cryptography.hazmat.primitives import (  # type: ignore[import-not-found, unused-ignore]
        hashes,
    )
    from cryptography.hazmat.primitives.asymmetric import (  # type: ignore[import-not-found, unused-ignore]
        ec,
    )

    return serialization, ec, hashes


def generate_ecdsa_p256() -> tuple[bytes, bytes]:
    """A new P-256 key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM): the
    same files ``openssl`` makes and ``model_signing sign key`` / ``verify key`` read."""
    serialization, ec, _ = _ec()
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, _public_pem(key.public_key())


def _require_p256(key: Any, what: str) -> None:
    """Only P-256: it is what ``generate_ecdsa_p256`` makes, and one curve means one hash
    (SHA-256) and no choice for an attacker to steer."""
    _, ec, _ = _ec()
    if not isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{what} is not an ECDSA key ({type(key).__name__})")
    if key.curve.name != "secp256r1":
        raise ConfigError(f"{what} is an ECDSA key on {key.curve.name}; only P-256 is supported")


def load_ecdsa_private_key(path: str | os.PathLike[str]) -> EcdsaPrivateKey:
    """Load a P-256 private key, refusing one that is not private to its owner (the same
    file-mode rule as ``load_private_key``)."""
    p = Path(path)
    key = _read_private_pem(p)
    _require_p256(key, str(p))
    return cast(EcdsaPrivateKey, key)


def load_ecdsa_public_key(source: str | os.PathLike[str] | bytes) -> EcdsaPublicKey:
    """Load a P-256 public key from a PEM file path or PEM bytes."""
    key, what = _read_public_pem(source)
    _require_p256(key, what)
    return cast(EcdsaPublicKey, key)


def key_hint(public_key: EcdsaPublicKey | PublicKey) -> str:
    """sha256 of the public key's PEM, in full hex: the ``verificationMaterial.publicKey
    .hint`` model-signing writes, so a bundle names its key the way upstream does.
    ``fingerprint`` is its first 16 digits."""
    return hashlib.sha256(_public_pem(public_key)).hexdigest()


def ecdsa_sign(private_key: EcdsaPrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 over ``data``, DER-encoded (what sigstore bundles carry)."""
    _, ec, hashes = _ec()
    _require_p256(private_key, "signing key")
    return private_key.sign(data, ec.ECDSA(hashes.SHA256()))


def ecdsa_verify(public_key: EcdsaPublicKey, data: bytes, signature: bytes) -> None:
    """Return if ``signature`` (DER) is ``public_key``'s over ``data``; raise otherwise.

    A signature that is not even DER is the same failure as a wrong one: the caller
    learns "does not verify", never a parser error from deep inside ``cryptography``.
    """
    _, ec, hashes = _ec()
    from cryptography.exceptions import (  # type: ignore[import-not-found, unused-ignore]
        InvalidSignature,
    )

    _require_p256(public_key, "verification key")
    try:
        public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise VerificationError("signature does not verify with the given key") from None
