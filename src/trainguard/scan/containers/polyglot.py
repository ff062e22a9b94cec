"""Other loaders' views of the same bytes: one file can be a tar, a zip, HDF5 and a pickle at once.

``detect`` picks the format ``torch.load`` would see first, but other loaders pick by other
rules, so after the first format's reader every other view a real loader takes is judged too:

* a pickle at byte 0: ``pickle.load``, ``joblib.load`` and ``numpy.load(allow_pickle=True)``
  (for anything that is not zip or ``.npy`` magic) unpickle from byte 0 whatever else the file
  is. It is a view when CPython's own unpicklers make a pickle of it
  (``raw_pickle.is_pickle``: the C and the Python unpickler run over the head with the
  judge's stand-ins).
* a zip found from the end: ``zipfile`` (Keras, ``zipfile.is_zipfile``) and miniz
  (``torch.jit.load``) look for the end record near the end of the file, not at byte 0.
* HDF5 at 512, 1024, ...: libhdf5 (``h5py``, Keras ``.h5``) looks for its superblock there.

A view that lies inside a member the first reader already handed on is not a second view.
When a second view exists, loaders disagree on what the file is: ``scan.differential``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

__all__ = ["extra_views"]

HEAD = 64 << 10
_ZIP_TAIL = 69584
"""How far from the end miniz searches for the end record (``zipfile`` searches less)."""


def extra_views(ctx: FileScan, win: Window, member: str | None, depth: int, fmt: str) -> None:
    """Judge every view of ``win`` other than ``fmt``'s; errors are recorded, never raised."""
    if fmt == "empty" or len(win) == 0:
        return
    covered: list[tuple[int, int]] | None = None
    for view in ("pickle", "zip", "hdf5"):
        if view == fmt:
            continue
        try:
            if view == "pickle":
                _pickle_view(ctx, win, member, depth, fmt)
                continue
            if covered is None:
                covered = _member_ranges(ctx, win, fmt)
            if view == "zip":
                _zip_view(ctx, win, member, depth, fmt, covered)
            else:
                _hdf5_view(ctx, win, member, depth, fmt, covered)
        except LimitExceeded as exc:
            ctx.fail(exc, member)
        except ScanError as exc:
            ctx.fail(exc, member)
        except (OSError, ValueError, EOFError, MemoryError, RecursionError) as exc:
            ctx.fail(ScanError(f"{view} view: {type(exc).__name__}: {exc}"), member)


def _label(member: str | None, view: str) -> str:
    return f"{member}!<{view}>" if member else f"<{view}>"


def _differential(
    ctx: FileScan, member: str | None, sev: Severity, msg: str, fmt: str, view: str, at: int
) -> None:
    ev = {"first_reader_sees": fmt, "other_reader_sees": view, "offset": at}
    ctx.add(Rule.DIFFERENTIAL, sev, msg, member, at, ev)


def _pickle_view(ctx: FileScan, win: Window, member: str | None, depth: int, fmt: str) -> None:
    from trainguard.scan.containers import raw_pickle

    if not raw_pickle.is_pickle(win.sub(0, len(win))):
        return
    label = _label(member, "pickle")
    ctx.members.append(label)
    try:
        raw_pickle.scan(ctx, win.sub(0, len(win)), label, depth + 1, False)
    except LimitExceeded:
        raise
    except ScanError as exc:
        if win.peek_at(0, 1) == b"\x80":  # a binary pickle on purpose: it must be judged
            ctx.fail(exc, label)
            return
        msg = f"byte 0 decodes as a pickle that breaks ({exc.message}); pickle.load stops there"
        ctx.add(Rule.CONTAINER_ANOMALY, Severity.INFO, msg, label, exc.offset)
        return
    msg = (
        f"the file is a {fmt} and also a pickle from byte 0: pickle.load, joblib.load and "
        "numpy.load(allow_pickle=True) run the pickle; both were judged"
    )
    _differential(ctx, member, Severity.HIGH, msg, fmt, "pickle", 0)


def _member_ranges(ctx: FileScan, win: Window, fmt: str) -> list[tuple[int, int]]:
    """Data ranges of members the first reader already judged as files of their own."""
    from trainguard.scan.containers import tar, zipped

    if fmt == "zip":
        return zipped.member_ranges(ctx, win)
    if fmt == "tar":
        return tar.member_ranges(ctx, win)
    return []


def _inside(start: int, end: int, covered: list[tuple[int, int]]) -> bool:
    return any(a <= start and end <= b for a, b in covered)


def _zip_view(
    ctx: FileScan,
    win: Window,
    member: str | None,
    depth: int,
    fmt: str,
    covered: list[tuple[int, int]],
) -> None:
    from trainguard.scan.containers import zipped

    start = max(len(win) - _ZIP_TAIL, 0)
    if b"PK\x05\x06" not in win.peek_at(start, len(win) - start):
        return
    ranges = zipped.member_ranges(ctx, win)
    if not ranges:
        return
    lo, hi = min(a for a, _b in ranges), max(b for _a, b in ranges)
    if _inside(lo, hi, covered):
        return
    zipped.scan(ctx, win, _label(member, "zip"), depth + 1, False)
    sev = Severity.HIGH if fmt == "pickle" else Severity.MEDIUM
    msg = (
        f"the file is a {fmt} and also a zip found from its end ({len(ranges)} members at "
        f"{lo}): zipfile-based loaders and torch.jit.load read the zip; both were judged"
    )
    _differential(ctx, member, sev, msg, fmt, "zip", lo)


def _hdf5_view(
    ctx: FileScan,
    win: Window,
    member: str | None,
    depth: int,
    fmt: str,
    covered: list[tuple[int, int]],
) -> None:
    from trainguard.scan.containers import hdf5

    off = hdf5.superblock_at(win)
    if off is None or off == 0 or _inside(off, off + 8, covered):
        return
    hdf5.scan_at(ctx, win, off, _label(member, f"hdf5@{off}"), depth + 1)
    msg = (
        f"the file is a {fmt} and also HDF5 with its superblock at {off}: h5py (Keras .h5) "
        "reads the HDF5; both were judged"
    )
    _differential(ctx, member, Severity.MEDIUM, msg, fmt, "hdf5", off)
