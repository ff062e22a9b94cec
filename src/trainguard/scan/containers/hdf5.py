"""HDF5 files: data, unless they are legacy Keras models whose config names code.

Keras 2 (and Keras 3's ``.h5`` export) keep the model JSON in the root group's
``model_config`` attribute; ``load_model`` rebuilds it, Lambda bytecode included. Only the
root attributes are read (with h5py, never a dataset); the JSON is judged by ``keras.py``.
HDF5 finds its superblock at 0, 512, 1024, ... so a file may start with a "user block" of
other bytes: a pickle there is what ``torch.load`` would read, so the user block is
scanned as well.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.containers import keras

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

__all__ = ["FORMATS", "SIGNATURE", "scan", "sniff"]

FORMATS = ("hdf5",)
SIGNATURE = b"\x89HDF\r\n\x1a\n"
CONFIG_ATTRS = ("model_config", "training_config")
_LAMBDA = re.compile(rb'"class_name":\s*"(?:Lambda|__lambda__)"')
_CHUNK = 1 << 20


def _superblock(head: bytes, win: Window) -> int | None:
    """Where the signature is: 0, then every power of two from 512 (as libhdf5 searches)."""
    off = 0
    while off + 8 <= len(win):
        sig = head[off : off + 8] if off + 8 <= len(head) else win.peek_at(off, 8)
        if sig == SIGNATURE:
            return off
        off = max(off * 2, 512)
    return None


def sniff(head: bytes, win: Window) -> str | None:
    return "hdf5" if _superblock(head, win) is not None else None


def _h5py() -> Any:
    """h5py, when installed (it is optional: without it only a byte search is possible)."""
    try:
        import h5py
    except ImportError:
        return None
    return h5py


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    off = _superblock(win.peek_at(0, 4096), win) or 0
    if off and win.peek_at(0, off).strip(b"\x00"):
        _user_block(ctx, win, off, member, depth)
    h5py = _h5py()
    if h5py is None:
        _byte_search(ctx, win, member)
        return
    configs = _read_attrs(ctx, h5py, win, member)
    if top:
        ctx.kind = "keras-h5" if "model_config" in configs else "hdf5"
    for name, text in configs.items():
        keras.check_json(ctx, text, member, name)


def _user_block(ctx: FileScan, win: Window, off: int, member: str | None, depth: int) -> None:
    from trainguard.scan.containers import raw_pickle

    label = f"{member}!<userblock>" if member else "<userblock>"
    msg = f"{off}-byte user block before the HDF5 data: other loaders read these bytes"
    ctx.add(Rule.CONTAINER_ANOMALY, Severity.LOW, msg, member, 0, {"user_block": off})
    if not raw_pickle.sniff(win.peek_at(0, 4096), win):
        ctx.scan_window(win.sub(0, off), label, depth + 1)
        return
    ctx.members.append(label)  # pickle.load reads on past the block: give it the whole file
    try:
        raw_pickle.scan(ctx, win.sub(0, len(win)), label, depth + 1, False)
    except ScanError as exc:
        ctx.fail(exc, label)


def _read_attrs(ctx: FileScan, h5py: Any, win: Window, member: str | None) -> dict[str, str]:
    """The root's config attributes as text, each bounded by ``max_header``."""
    out: dict[str, str] = {}
    cap = ctx.limits.max_header
    try:
        with h5py.File(win, "r") as f:
            for name in CONFIG_ATTRS:
                if name not in f.attrs:
                    continue
                if f.attrs.get_id(name).get_storage_size() > cap:
                    raise LimitExceeded(f"attribute {name} is over {cap} bytes", member=member)
                out[name] = _text(f.attrs[name], name, member)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError) as exc:
        raise ScanError(f"unreadable HDF5: {exc}"[:300], member=member) from None
    return out


def _text(value: Any, name: str, member: str | None) -> str:
    if hasattr(value, "tolist"):  # numpy scalar or array
        value = value.tolist()
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ScanError(f"attribute {name} is not text", member=member)
    return value


def _byte_search(ctx: FileScan, win: Window, member: str | None) -> None:
    """Without h5py: look for a Lambda layer in the raw bytes, then admit the rest is unjudged."""
    end = min(len(win), ctx.limits.max_header)
    pos = 0
    while pos < end:
        ctx.budget.check_time()
        chunk = win.peek_at(pos, min(_CHUNK + 64, end - pos))
        hit = _LAMBDA.search(chunk)
        if hit:
            msg = "Lambda layer (marshalled bytecode) in the model config, found by byte search"
            ev = {"match": hit.group().decode("ascii", "replace")}
            ctx.add(Rule.CODE_EXECUTION, Severity.CRITICAL, msg, member, pos + hit.start(), ev)
            return
        pos += _CHUNK
    hint = "h5py is not installed: install h5py to judge HDF5 files (Keras .h5 models)"
    ctx.fail(ScanError(hint, member=member), member)
