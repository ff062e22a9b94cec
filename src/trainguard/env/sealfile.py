"""The seal file: canonical JSON lines under one Merkle root, optionally signed.

::

    {"format":"trainguard.env.seal","version":1,...,"roots":[...],"files":[...]}   header
    {"dist":"torch==2.13.0","hint":"...","mode":420,"path":"/...","sha256":"...",...}
    ...                                                                            one per entry
    {"leaves":N,"merkle_root":"<hex>","signature":{"algorithm":"ed25519",...}|null}

The root is RFC 6962's over every line but the last (each line's bytes without its
newline); the signature is Ed25519 over ``SIGNING_CONTEXT + root``, so a signature made
for something else can never be replayed as a seal signature. Without a signature the
root only detects damage: whoever can edit the seal can recompute it.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard import keys
from trainguard.env import canonical, merkle
from trainguard.errors import VerificationError

FORMAT = "trainguard.env.seal"
VERSION = 1
SIGNING_CONTEXT = b"trainguard.env.seal.v1\x00"


@dataclass(frozen=True, slots=True)
class Seal:
    header: Mapping[str, Any]
    footer: Mapping[str, Any]
    body: tuple[bytes, ...]
    """Every line under the root: the header line, then one line per entry."""

    @property
    def entry_lines(self) -> bytes:
        """The entry lines, newline-separated, for the probe to parse."""
        return b"\n".join(self.body[1:])

    @property
    def signed(self) -> bool:
        return bool(self.footer.get("signature"))

    def check(self, public_key: keys.PublicKey | None) -> tuple[str, list[str]]:
        """Recompute the root and check the signature. Returns (root hex, notes); raises
        ``SealProblem`` when either fails."""
        root = merkle.root(self.body)
        if root.hex() != self.footer.get("merkle_root"):
            raise SealProblem("the seal's lines do not match its Merkle root: it was edited")
        sig = self.footer.get("signature")
        if public_key is None:
            if sig:
                return root.hex(), ["seal signature not checked: no public key given"]
            return root.hex(), [
                "seal is not signed: its root detects damage, not a deliberate edit"
            ]
        if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519":
            raise SealProblem("a key was given but the seal is not signed (ed25519)")
        try:
            value = base64.b64decode(str(sig.get("value")), validate=True)
        except (binascii.Error, ValueError):
            raise SealProblem("the seal's signature is not base64") from None
        try:
            keys.verify(public_key, SIGNING_CONTEXT + root, value)
        except VerificationError as exc:
            raise SealProblem(f"the seal's signature does not verify: {exc}") from None
        return root.hex(), []


def write(
    out: Path,
    header: Mapping[str, Any],
    entries: Sequence[Mapping[str, Any]],
    private_key: keys.PrivateKey | None,
) -> tuple[str, str | None]:
    """Write atomically (a reader never sees half a seal). Returns (root hex, key id)."""
    lines = [canonical.dumps(dict(header))] + [canonical.dumps(dict(e)) for e in entries]
    root = merkle.root(lines)
    signature = key_id = None
    if private_key is not None:
        key_id = keys.fingerprint(keys.public_key_of(private_key))
        value = keys.sign(private_key, SIGNING_CONTEXT + root)
        signature = {
            "algorithm": "ed25519",
            "key_id": key_id,
            "value": base64.b64encode(value).decode(),
        }
    footer = {"leaves": len(lines), "merkle_root": root.hex(), "signature": signature}
    lines.append(canonical.dumps(footer))
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\n".join(lines) + b"\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return root.hex(), key_id


class SealProblem(Exception):
    """Raised inside ``read``: the seal is not what it claims (reported, never ignored)."""


def load(path: Path) -> Seal:
    """Split and parse header and footer (cheap); ``Seal.check`` does the hashing."""
    lines = Path(path).read_bytes().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) < 2:
        raise SealProblem("not a seal: fewer than two lines")
    try:
        footer = json.loads(lines[-1])
        header = json.loads(lines[0])
        bytes.fromhex(footer["merkle_root"])
    except (ValueError, KeyError, TypeError) as exc:
        raise SealProblem(f"not a seal: unreadable header or footer ({exc})") from None
    body = tuple(lines[:-1])
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SealProblem("not a trainguard environment seal")
    if header.get("version") != VERSION:
        raise SealProblem(f"unsupported seal version {header.get('version')!r}")
    if footer.get("leaves") != len(body):
        raise SealProblem(f"the seal has {len(body)} lines, its footer says {footer.get('leaves')}")
    return Seal(header, footer, body)


def read(path: Path, public_key: keys.PublicKey | None) -> tuple[Seal, list[str]]:
    """``load`` then ``check``."""
    seal = load(path)
    return seal, seal.check(public_key)[1]
