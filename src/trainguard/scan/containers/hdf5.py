"""HDF5 files: data, unless they are legacy Keras models whose config names code.

Keras 2 (and Keras 3's ``.h5`` export) keep the model JSON in the root group's
``model_config`` attribute; ``load_model`` rebuilds it, Lambda bytecode included. The JSON
is judged by ``keras.py``. Reading it needs libhdf5, and libhdf5 is not safe on hostile
input: one flipped byte in a global heap sends it into an endless loop that holds the GIL
(no Python timeout can interrupt it). So h5py runs in a child process with a deadline and
a memory cap, and only when the bytes could hold such an attribute at all.

HDF5 finds its superblock at 0, 512, 1024, ... so a file may start with a "user block" of
other bytes: a pickle there is what ``pickle.load``/``joblib.load``/``torch.load`` would read
from byte 0, so ``polyglot.py`` judges it as well (``scan.differential``). Without h5py the
config cannot be read: the error finding names the extra to install, never a traceback.

Trusted about the bytes: the superblock signature positions libhdf5 probes and its
end-of-file address; everything else is read by libhdf5 itself, in a child process.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

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
H5PY_TIMEOUT = 60.0
"""Seconds the isolated h5py reader may run (also bounded by the file's time budget)."""
INSTALL_HINT = "pip install 'trainguard[scan]'"
"""The extra that brings h5py (named in the error finding when it is missing)."""
SEARCH_MAX = 64 << 20
"""Top-level files above this go to h5py directly: reading them whole costs more."""
_CHUNK = 1 << 20
# Attribute names are stored as plain bytes, unless they sit in a fractal heap ("FRHP")
# that declares I/O filters (compression): then the search cannot rule anything out.
_NEEDLES = re.compile(rb"model_config|training_config|FRHP")
_LAMBDA = re.compile(rb'"class_name":\s*"(?:Lambda|__lambda__)"')
_CHILD = r"""
import json, sys
try:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[3]), int(sys.argv[3])))
except (ImportError, ValueError, OSError):
    pass
import h5py
out = {}
with h5py.File(sys.argv[1], "r") as f:
    for name in sys.argv[4:]:
        if name in f.attrs:
            v = None
            if f.attrs.get_id(name).get_storage_size() <= int(sys.argv[2]):
                v = f.attrs[name]
                v = v.tolist() if hasattr(v, "tolist") else v
                v = v[0] if isinstance(v, list) and len(v) == 1 else v
                v = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
            out[name] = v if isinstance(v, str) else None
json.dump(out, sys.stdout)
"""


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


def superblock_at(win: Window) -> int | None:
    """Where libhdf5 finds a superblock in ``win`` (``None``: it is not HDF5)."""
    return _superblock(win.peek_at(0, 4096), win)


def _h5py_installed() -> bool:
    return importlib.util.find_spec("h5py") is not None


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    off = _superblock(win.peek_at(0, 4096), win) or 0
    if off and win.peek_at(0, off).strip(b"\x00"):
        _user_block(ctx, win, off, member, depth)
    _judge(ctx, win, off, member, top)


def scan_at(ctx: FileScan, win: Window, off: int, member: str | None, depth: int) -> None:
    """The HDF5 view of a file whose first reader saw another format (``polyglot.py``)."""
    ctx.members.append(member or "")
    _judge(ctx, win, off, member, False)


def _judge(ctx: FileScan, win: Window, off: int, member: str | None, top: bool) -> None:
    _check_superblock(win, off, member)
    if not _h5py_installed():
        _byte_search(ctx, win, member)
        return
    big_file = member is None and len(win) > SEARCH_MAX
    configs = _read_attrs(ctx, win, member) if big_file or _may_hold(ctx, win) else {}
    if top:
        ctx.kind = "keras-h5" if "model_config" in configs else "hdf5"
    for name, text in configs.items():
        keras.check_json(ctx, text, member, name)


def _user_block(ctx: FileScan, win: Window, off: int, member: str | None, depth: int) -> None:
    """Bytes before the superblock: other loaders read them from byte 0.

    A pickle there is judged by ``polyglot.py`` (it reads on past the block, as
    ``pickle.load`` does); any other content is judged as a file of its own.
    """
    from trainguard.scan.containers import raw_pickle

    label = f"{member}!<userblock>" if member else "<userblock>"
    msg = f"{off}-byte user block before the HDF5 data: other loaders read these bytes"
    ctx.add(Rule.CONTAINER_ANOMALY, Severity.LOW, msg, member, 0, {"user_block": off})
    if not raw_pickle.is_pickle(win.sub(0, len(win))):
        ctx.scan_window(win.sub(0, off), label, depth + 1)


def _check_superblock(win: Window, off: int, member: str | None) -> None:
    """Version, field sizes and the end-of-file address libhdf5 insists on (truncation)."""
    raw = win.peek_at(off, 160)
    version = raw[8] if len(raw) > 8 else -1
    if version in (0, 1):
        sizes, fixed = raw[13:15], 24 + 4 * version
    elif version in (2, 3):
        sizes, fixed = raw[9:11], 12
    else:
        raise ScanError(f"unknown HDF5 superblock version {version}", member=member, offset=off)
    if len(sizes) < 2 or not {sizes[0], sizes[1]} <= {2, 4, 8, 16, 32}:
        raise ScanError("HDF5 superblock field sizes are invalid", member=member, offset=off)
    at = off + fixed + 2 * sizes[0]  # base address, free-space or extension address, then EOF
    eof = int.from_bytes(raw[at - off : at - off + sizes[0]], "little")
    if len(raw) < at - off + sizes[0] or (eof != (1 << 8 * sizes[0]) - 1 and eof > len(win)):
        msg = f"HDF5 file truncated: its superblock says {eof} bytes, {len(win)} are there"
        raise ScanError(msg, member=member, offset=at)


def _may_hold(ctx: FileScan, win: Window) -> bool:
    """Whether the bytes could hold a config attribute (a full, chunked search)."""
    pos = 0
    while pos < len(win):
        ctx.budget.check_time()
        chunk = win.peek_at(pos, _CHUNK + 32)
        for m in _NEEDLES.finditer(chunk):
            if m.group() != b"FRHP" or chunk[m.start() + 7 : m.start() + 9] != b"\x00\x00":
                return True
        pos += _CHUNK
    return False


def _read_attrs(ctx: FileScan, win: Window, member: str | None) -> dict[str, str]:
    """The root's config attributes, read by h5py in a child process."""
    path, tmp = _on_disk(ctx, win, member), None
    try:
        if path is None:
            with tempfile.NamedTemporaryFile(suffix=".h5", delete=False) as fh:
                tmp = path = Path(fh.name)
                for pos in range(0, len(win), _CHUNK):
                    ctx.budget.check_time()
                    fh.write(win.peek_at(pos, _CHUNK))
        got = _run_child(ctx, path, member)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    out: dict[str, str] = {}
    for name in CONFIG_ATTRS:
        if name in got:
            value = got[name]
            if not isinstance(value, str):
                msg = f"attribute {name} is not text or is over {ctx.limits.max_header} bytes"
                raise ScanError(msg, member=member)
            out[name] = value
    return out


def _run_child(ctx: FileScan, path: Path, member: str | None) -> dict[str, object]:
    limit = max(1.0, min(H5PY_TIMEOUT, ctx.budget.deadline - time.monotonic()))
    memory = str(max(2 << 30, 4 * ctx.limits.max_header))
    argv = [sys.executable, "-I", "-c", _CHILD, str(path), str(ctx.limits.max_header), memory]
    try:
        proc = subprocess.run(
            [*argv, *CONFIG_ATTRS], capture_output=True, timeout=limit, check=False
        )
    except subprocess.TimeoutExpired:
        msg = f"libhdf5 did not finish reading the root attributes in {limit:.0f} s (looping?)"
        raise LimitExceeded(msg, member=member) from None
    if proc.returncode:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines() or ["killed"]
        if "No module named 'h5py'" in lines[-1]:  # the isolated child may see fewer packages
            raise ScanError(f"h5py cannot be imported to read this HDF5 file: {INSTALL_HINT}")
        raise ScanError(f"unreadable HDF5: {lines[-1][:300]}", member=member)
    try:
        got = json.loads(proc.stdout)
    except ValueError:
        raise ScanError("h5py reader returned no result", member=member) from None
    return got if isinstance(got, dict) else {}


def _on_disk(ctx: FileScan, win: Window, member: str | None) -> Path | None:
    """The scanned file itself, when the window is all of it (else a copy is made)."""
    if member is not None or len(win) <= SEARCH_MAX:
        return None
    try:
        if os.path.getsize(ctx.path) != len(win):
            return None
        with open(ctx.path, "rb") as fh:
            same = fh.read(1 << 16) == win.peek_at(0, 1 << 16)
    except OSError:
        return None
    return ctx.path if same else None


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
    hint = (
        "h5py is not installed, so this HDF5 file (Keras .h5 model) could not be judged: "
        f"{INSTALL_HINT}"
    )
    ctx.fail(ScanError(hint, member=member), member)
