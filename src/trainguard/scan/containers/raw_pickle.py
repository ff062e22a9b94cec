"""Raw pickle files: one or several pickles back to back, legacy torch, joblib, DCP metadata.

Each stream is judged as the loaders that read it would read it (``scan/judge.py``):

* ``pickle.load``/``numpy.load``/``torch.load``'s magic-number check read the first
  stream with the C unpickler (``pickle`` view); ``pickle.load`` ignores what follows STOP,
  but code that calls it again reads the next stream, so every stream that parses is judged;
* a legacy (pre-1.6) torch file, whose first stream is torch's magic number, has four more
  that ``torch.load`` reads: the fourth with torch's legacy ``persistent_load``; an error in
  any of them is an error of the file, never a note;
* ``joblib.load`` (and ``pickle._load``) read the same bytes with Python's unpickler, and
  joblib skips array data after each array wrapper (``joblib`` view). It runs when the
  ``pickle`` view met an array wrapper, when the C unpickler stopped on an error (where the
  two unpicklers part: a last line without its newline, a frame shorter than declared), and
  on every small stream. Where ``pickle.load`` stops at array data that joblib skips, that
  is a note.

Whether bytes are a pickle at all is decided by CPython too (``is_pickle``): the judge runs
over the head and the answer is yes when it reached STOP, resolved a global whose module
name ``import`` could find, or ran out of head bytes while parsing.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from trainguard.errors import LimitExceeded
from trainguard.findings import Rule, Severity
from trainguard.scan.feed import IN_MEMORY, FrameFeed, MemoryFeed
from trainguard.scan.judge import Recorder, StreamResult, judge_stream
from trainguard.scan.limits import Budget, Limits

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("pickle",)

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_STREAMS = 10_000
LEGACY_VIEWS = ("pickle", "pickle", "torch-legacy", "pickle")
"""Views of streams 2-5 of a legacy torch file (protocol, sys_info, object, storage keys)."""
SNIFF = 64 << 10
JOBLIB_WRAPPERS = (
    "joblib.numpy_pickle.NumpyArrayWrapper",
    "joblib.numpy_pickle_compat.NDArrayWrapper",
)


def sniff(head: bytes, win: Window) -> str | None:
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if is_pickle(win.sub(0, len(win))):
        return "pickle"
    return None


def is_pickle(win: Window) -> bool:
    """True when CPython's unpickler makes sense of the bytes at ``win``'s position."""
    start = win.tell()
    if not win.remaining or win.peek_at(start, 1) == b"P":
        # PERSID first: with no persistent_load (pickle.load, joblib.load, numpy.load, the
        # first stream torch.load reads) both unpicklers refuse it before anything resolves.
        # Every zip starts so ("PK").
        return False
    head = win.peek_at(start, SNIFF)
    rec = Recorder.silent()
    budget = Budget(Limits(max_seconds=10.0))
    feed: MemoryFeed | FrameFeed = MemoryFeed(head, 0, budget)
    if b"\x95" in head:
        feed = FrameFeed(io.BytesIO(head), budget)
    res = judge_stream(feed, rec, "pickle")
    if isinstance(feed, FrameFeed) and feed.straddles:
        return True  # readers disagree from here on: judged as a pickle, and reported
    if res.error is None or any(_importable(g.written_module) for g in res.globals.values()):
        return True
    text = res.error.message
    if len(head) == SNIFF and ("truncated" in text or "EOFError" in text):
        return True
    # Python's own unpickler (joblib.load, pickle._load) reads a last line without its
    # newline and a frame shorter than declared, where the C one stops
    from trainguard.scan.judge_joblib import judge_joblib

    py = judge_joblib(MemoryFeed(head, 0, budget), rec)
    return py.error is None or any(_importable(g.written_module) for g in py.globals.values())


def _importable(module: str) -> bool:
    """Could ``import`` ever find this name (text lines read as ``GLOBAL`` mostly can't)?"""
    return all(part.isidentifier() for part in module.split("."))


def scan(
    ctx: FileScan, win: Window, member: str | None, depth: int, top: bool, *, view: str = "pickle"
) -> None:
    """Judge the streams at ``win``; ``view`` is the loader of the first one (``torch`` for
    the ``data.pkl`` that ``torch.load`` reads from a zip, with its ``persistent_load``)."""
    small = len(win) <= IN_MEMORY
    first = ctx.scan_pickle(win, member, depth, view, strict=False)
    if view != "pickle":
        ctx.settle(first, member)
        return
    joblib = None
    if small or first.error is not None or any(k in first.globals for k in JOBLIB_WRAPPERS):
        joblib = ctx.scan_pickle(
            win.sub(first.start, len(win)), member, depth, "joblib", strict=False
        )
        if joblib.joblib_arrays:
            ctx.settle(joblib, member)
            if first.error is not None:
                ctx.add(
                    Rule.CONTAINER_ANOMALY,
                    Severity.INFO,
                    f"pickle.load stops at array data that joblib.load skips "
                    f"({first.error.message})",
                    member,
                    first.error.offset,
                )
            if top:
                ctx.kind = "joblib"
            return
    ctx.settle(first, member)
    legacy = first.value == TORCH_LEGACY_MAGIC and type(first.value) is int
    if top:
        ctx.kind = _kind(first, legacy)
    if legacy:
        for view in LEGACY_VIEWS:
            ctx.scan_pickle(win, member, depth, view)
        return
    _more_streams(ctx, win, member, depth)


def _more_streams(ctx: FileScan, win: Window, member: str | None, depth: int) -> None:
    streams = 1
    while win.remaining:
        start = win.tell()
        if not is_pickle(win.sub(start, win.remaining)):
            break
        if streams >= MAX_STREAMS:
            ctx.add(
                Rule.CONTAINER_ANOMALY,
                Severity.MEDIUM,
                f"more than {MAX_STREAMS} pickles back to back; the rest was not scanned",
                member,
                start,
            )
            ctx.complete = False
            return
        res = ctx.scan_pickle(win, member, depth, strict=False)
        if res.error is not None:
            if isinstance(res.error, LimitExceeded) or res.globals or res.diverged:
                ctx.settle(res, member)
            ctx.add(
                Rule.CONTAINER_ANOMALY,
                Severity.INFO,
                f"data after the first pickle is not a complete pickle "
                f"({res.error.message}); pickle.load never reads it",
                member,
                start,
            )
            return
        streams += 1
    if win.remaining:
        ctx.add(
            Rule.CONTAINER_ANOMALY,
            Severity.INFO,
            f"{win.remaining} bytes after the last pickle (ignored by pickle.load)",
            member,
            win.tell(),
        )


def _kind(first: StreamResult, legacy: bool) -> str:
    if legacy:
        return "torch-legacy"
    if any(k.startswith("torch.distributed.checkpoint.") for k in first.globals):
        return "torch-dcp-metadata"
    return "pickle"


__all__ = ["FORMATS", "is_pickle", "scan", "sniff"]
