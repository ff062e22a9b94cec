"""``save``: ``torch.save`` that knows what it wrote, signs it, and tells the ledger.

The digest is taken from the bytes on their way to disk, never by reading the file back:
reading back costs a second pass over gigabytes, and it would vouch for whatever is on
disk by then, including an edit made in between. The file is written under a temporary
name, fsynced and renamed, so a crash leaves the previous checkpoint or the new one,
never a torn file that a later verify would (rightly, but uselessly) call modified.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from trainguard.checkpoints import _signing, _tree
from trainguard.checkpoints._results import LedgerPosition, SaveResult
from trainguard.errors import ConfigError

DEFAULT_FILE = "checkpoint.pt"
"""The file name ``save`` uses when given a folder."""
_OVERLAP = 1024 * 1024
"""Writes at least this big are hashed on a second thread while the first writes them:
the save then costs max(write, hash) instead of their sum."""


class Ledger(Protocol):
    """What ``save`` needs of a ledger (``trainguard.ledger`` or anything alike; one with
    a ``position()`` method, as ``trainguard.ledger.Ledger`` has, also gets its position
    signed into the checkpoint's manifest)."""

    def append_event(self, message: str, *, evidence: Mapping[str, Any]) -> Any: ...


class HashingWriter:
    """A write-only file object for ``torch.save`` that hashes every byte it passes on.

    torch hands each record (a tensor's whole storage, for the big ones) to ``write`` as
    one buffer, valid only until ``write`` returns, so the hash of a large buffer runs
    beside the disk write and both finish before returning; order is kept because each
    write waits for its own hash.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self._hash = hashlib.sha256()
        self._pool: ThreadPoolExecutor | None = None
        self.size = 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        if n >= _OVERLAP:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="trainguard-save")
            pending = self._pool.submit(self._hash.update, view)
            try:
                self._raw.write(view)
            finally:
                pending.result()
        else:
            self._hash.update(view)
            self._raw.write(view)
        self.size += n
        return n

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


def _write(obj: object, file: Path, torch_kwargs: Mapping[str, Any]) -> tuple[str, int]:
    try:
        import torch
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigError("save needs torch: pip install 'trainguard[torch]'") from None
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            writer = HashingWriter(raw)
            try:
                torch.save(obj, writer, **torch_kwargs)  # type: ignore[arg-type]
                raw.flush()
                os.fsync(raw.fileno())
            finally:
                writer.close()
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _tree.fsync_dir(file.parent)
    return writer.hexdigest(), writer.size


def save(
    obj: object,
    path: str | os.PathLike[str],
    *,
    private_key: _signing.PrivateKeySource | None = None,
    ledger: Ledger | None = None,
    name: str = DEFAULT_FILE,
    ignore_paths: Iterable[str] = (),
    workers: int | None = None,
    **torch_kwargs: Any,
) -> SaveResult:
    """``torch.save(obj)`` into a checkpoint, hashed as written, then signed and recorded.

    ``path`` is the file to write, or an existing folder, into which ``name`` is written
    and which is then signed as a whole (its other files are hashed by reading them;
    the one just written is not read back). With ``private_key`` the checkpoint gets a
    model-signing signature (``NAME.sig`` or ``model.sig``, as ``sign`` writes). With
    ``ledger``, ``ledger.append_event(message, evidence=...)`` records the manifest
    digest, so a later check against the ledger sees a checkpoint that was deleted,
    rolled back or swapped; with both, the signed manifest also carries the ledger's
    position (origin, size, root) at the save, so the checkpoint names its run and
    ``verify_recorded`` refuses it against any other ledger. ``torch_kwargs`` go to
    ``torch.save``.
    """
    start = time.perf_counter()
    key = _signing.load_private(private_key) if private_key is not None else None
    target = Path(path)
    if target.is_dir():
        inner = Path(name)
        if inner.is_absolute() or ".." in inner.parts or not inner.name:
            raise ConfigError(f"name {name!r} must be a relative path inside {target}")
        file, rel = target / inner, inner.as_posix()
    else:
        file, rel = target, "."
    if not file.parent.is_dir():
        raise ConfigError(f"cannot save to {file}: {file.parent} is not a folder")
    lay = _tree.layout(target, None)
    digest, size = _write(obj, file, torch_kwargs)
    ignore = _signing.ignore_list(lay, ignore_paths)
    manifest = _signing.build_manifest(lay, ignore, known={rel: (digest, size)}, workers=workers)
    position = getattr(ledger, "position", None)
    if key is not None and callable(position):
        manifest = replace(manifest, ledger=LedgerPosition(**position()))
    key_id = _signing.write_signature(lay, manifest, key) if key is not None else None
    signature = str(lay.signature) if key is not None else None
    if ledger is not None:
        ledger.append_event(
            f"checkpoint saved: {lay.root}",
            evidence={
                "event": "checkpoint.saved",
                "path": str(lay.root.absolute()),
                "file": str(file.absolute()),
                "manifest_digest": manifest.manifest_digest,
                "root_digest": manifest.root_digest,
                "files": len(manifest.files),
                "bytes": manifest.total_bytes,
                "signature": signature,
                "key_id": key_id,
                "ledger_position": manifest.ledger.to_json() if manifest.ledger else None,
            },
        )
    return SaveResult(
        path=str(lay.root),
        file=str(file),
        sha256=digest,
        size=size,
        manifest=manifest,
        signature=signature,
        key_id=key_id,
        seconds=time.perf_counter() - start,
    )
