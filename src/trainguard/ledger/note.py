"""Signed tree heads as C2SP checkpoints in signed notes.

::

    trainguard.ledger/4f1c...e2          origin: which ledger
    1000                                 tree size
    q1w2...=                             base64 RFC 6962 root of the first 1000 records
    epoch 3                              } ratchet only: which key signed, and the public
    next-key AAAA...=                    } key that signs the next head
    run 20240612T0812Z-9f3a 1 Zm9v...=   `trainguard run` only: the run whose key signed,
                                         and the seq and leaf hash of its origin record
    meta 3q2+...=                        SHA-256 of the ledger's header (the meta table)
                                         blank line
    — trainguard.ledger/4f1c...e2 Ab3x...==   key name, base64(4-byte key id || Ed25519 sig)

The format is the one transparency logs and their witnesses already exchange
(c2sp.org/signed-note, c2sp.org/tlog-checkpoint), so a head exported to a second place
can be checked by tools that are not trainguard. The signature covers the text above the
blank line, so nothing a verifier reads is unsigned; extension lines are allowed by the
checkpoint spec, which is where the ratchet publishes its next key, where a run binds
its origin into every head it signs, and where the header is covered: an edited ``meta``
row (mode, origin, format, version) no longer matches the digest that signed heads carry.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from trainguard import keys
from trainguard.errors import VerificationError

__all__ = [
    "Checkpoint",
    "RunBinding",
    "body_text",
    "key_id",
    "meta_digest",
    "meta_line",
    "parse",
    "sign",
]

_DASH = "\u2014 "
RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,79}")


@dataclass(frozen=True, slots=True)
class RunBinding:
    """The ``run`` line: which run signed, and where its origin record is (seq, leaf)."""

    run: str
    seq: int
    leaf: bytes

    def line(self) -> str:
        return f"run {self.run} {self.seq} {base64.b64encode(self.leaf).decode()}"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed head. ``signatures`` are (key name, 4-byte key id, signature)."""

    origin: str
    size: int
    root: bytes
    epoch: int | None
    next_key: bytes | None
    body: str
    signatures: tuple[tuple[str, bytes, bytes], ...]
    run: RunBinding | None = None
    meta: bytes | None = None
    """SHA-256 of the ledger's meta rows when the head was signed (``meta_digest``)."""

    @property
    def text(self) -> str:
        """The whole note, as stored and exported."""
        return self.body + "\n" + "".join(_sig_line(*s) for s in self.signatures)

    def verify(self, public_key: keys.PublicKey) -> bool:
        """True if one signature line is ``public_key``'s (named by the origin)."""
        kid = key_id(self.origin, keys.public_raw(public_key))
        for name, sig_kid, sig in self.signatures:
            if name != self.origin or sig_kid != kid:
                continue
            try:
                keys.verify(public_key, self.body.encode(), sig)
            except VerificationError:
                return False
            return True
        return False


def key_id(name: str, public_raw: bytes) -> bytes:
    """The signed-note key id: SHA-256(name || LF || 0x01 (Ed25519) || key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n\x01" + public_raw).digest()[:4]


def body_text(
    origin: str,
    size: int,
    root: bytes,
    *,
    epoch: int | None = None,
    next_key: bytes | None = None,
    extra: Sequence[str] = (),
) -> str:
    """The signed text. ``extra``: further extension lines (``run``, ``meta``)."""
    lines = [origin, str(size), base64.b64encode(root).decode()]
    if epoch is not None:
        lines.append(f"epoch {epoch}")
    if next_key is not None:
        lines.append(f"next-key {base64.b64encode(next_key).decode()}")
    lines.extend(extra)
    return "".join(line + "\n" for line in lines)


def meta_line(digest: bytes) -> str:
    return f"meta {base64.b64encode(digest).decode()}"


def meta_digest(meta: dict[str, str]) -> bytes:
    """SHA-256 over every meta row, sorted: a row edited, added or removed changes it."""
    text = "".join(f"{len(k)}:{k}={len(v)}:{v}\n" for k, v in sorted(meta.items()))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).digest()


def sign(body: str, origin: str, private_key: keys.PrivateKey | None) -> Checkpoint:
    """Sign ``body`` with the key named ``origin``; ``None`` gives an unsigned head (for a
    witness of a ledger without a key: a root held elsewhere still pins history)."""
    sigs: tuple[tuple[str, bytes, bytes], ...] = ()
    if private_key is not None:
        raw = keys.public_raw(keys.public_key_of(private_key))
        sigs = ((origin, key_id(origin, raw), keys.sign(private_key, body.encode())),)
    return parse(body + "\n" + "".join(_sig_line(*s) for s in sigs))


def _sig_line(name: str, kid: bytes, sig: bytes) -> str:
    return f"{_DASH}{name} {base64.b64encode(kid + sig).decode()}\n"


def parse(text: str) -> Checkpoint:
    """Parse a note; ``ValueError`` says what is wrong with it."""
    body, sep, sig_block = text.partition("\n\n")
    if not sep:
        raise ValueError("not a signed note: no blank line before the signatures")
    body += "\n"
    lines = body.splitlines()
    if len(lines) < 3:
        raise ValueError("a checkpoint has an origin, a size and a root hash")
    origin, size_text, root_text = lines[:3]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise ValueError(f"bad tree size {size_text!r}")
    try:
        root = base64.b64decode(root_text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the root hash is not base64") from None
    if len(root) != 32:
        raise ValueError("the root hash is not 32 bytes")
    epoch, next_key, run, meta = _extensions(lines[3:])
    sigs = []
    for line in sig_block.splitlines():
        if not line.startswith(_DASH):
            raise ValueError(f"not a signature line: {line[:60]!r}")
        name, _, b64 = line[len(_DASH) :].rpartition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("a signature is not base64") from None
        if not name or len(raw) < 5:
            raise ValueError("a signature line has no name or no signature")
        sigs.append((name, raw[:4], raw[4:]))
    return Checkpoint(
        origin, int(size_text), root, epoch, next_key, body, tuple(sigs), run=run, meta=meta
    )


def _extensions(
    lines: list[str],
) -> tuple[int | None, bytes | None, RunBinding | None, bytes | None]:
    epoch: int | None = None
    next_key = meta = None
    run: RunBinding | None = None
    for line in lines:
        word, _, value = line.partition(" ")
        if word == "epoch" and value.isdigit():
            epoch = int(value)
        elif word == "next-key":
            next_key = _b64(value, "next-key")
        elif word == "meta":
            meta = _b64(value, "meta")
        elif word == "run":
            parts = value.split(" ")
            if len(parts) != 3 or not RUN_ID.fullmatch(parts[0]) or not parts[1].isdigit():
                raise ValueError(f"bad run line {line[:80]!r}")
            run = RunBinding(parts[0], int(parts[1]), _b64(parts[2], "the run's origin leaf"))
    return epoch, next_key, run, meta


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None
