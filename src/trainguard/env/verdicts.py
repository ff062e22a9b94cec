"""A cache of ``.pyc`` verdicts, so a verify without a seal need not compile every source
again: the slow part of a seal-less check (~25-55 s on a large venv) becomes a hash.

Each entry is the sha256 of one verdict's whole key (``probe/pyc.verdict_key``): the
interpreter's magic number and optimisation level, and for both the ``.pyc`` and its
source the path, identity (device, inode, size, ``mtime_ns``) and the sha256 of the
bytes that were compiled and compared. Only "this ``.pyc`` is the compiled form of this
source" is remembered; a mismatch is found again on every run. Both files are hashed on
every run (the content, not the stat, decides a hit): a hit only saves the compile.

*What it trusts:* that no one but this user (or root) wrote the cache file (checked by
``state.why_unsafe`` before it is read; a cache that fails is ignored and left alone) and
that this interpreter's ``compile()`` gave the verdict when it was written. Whoever can
write the cache can make any ``.pyc`` pass.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from trainguard.env.state import ensure_private_dir, why_unsafe

__all__ = ["KEY_BYTES", "MAX_ENTRIES", "load", "save"]

MAGIC = b"trainguard.pyc-verdicts.v1\n"
KEY_BYTES = 32
MAX_ENTRIES = 400_000
"""About 13 MB: every ``.pyc`` of a few large environments and the standard library."""


def load(path: Path) -> tuple[bytes, str | None]:
    """The cached keys (concatenated) and, when the cache cannot be used, why not. A
    missing cache is empty and fine."""
    if not os.path.lexists(path):
        return b"", None
    problem = why_unsafe(path)
    if problem is not None:
        return b"", f"pyc verdict cache not used: {problem}"
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return b"", f"pyc verdict cache not used: {exc.strerror or exc}"
    body = data[len(MAGIC) :]
    if not data.startswith(MAGIC) or len(body) % KEY_BYTES:
        return b"", f"pyc verdict cache not used: {path} is not a verdict cache"
    return body, None


def save(path: Path, fresh: bytes, old: bytes) -> str | None:
    """Write ``fresh`` keys (this run's passes) first, then the ``old`` ones not among
    them, up to ``MAX_ENTRIES``; atomically, mode 0600. Returns why it could not."""
    problem = ensure_private_dir(Path(path).parent)
    if problem is not None:
        return f"pyc verdict cache not saved: {problem}"
    keys: set[bytes] = set()
    out: list[bytes] = []
    for blob in (fresh, old):
        for i in range(0, len(blob), KEY_BYTES):
            key = blob[i : i + KEY_BYTES]
            if len(out) < MAX_ENTRIES and len(key) == KEY_BYTES and key not in keys:
                keys.add(key)
                out.append(key)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".verdicts.", dir=Path(path).parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(MAGIC + b"".join(out))
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        return f"pyc verdict cache not saved: {exc.strerror or exc}"
    return None
