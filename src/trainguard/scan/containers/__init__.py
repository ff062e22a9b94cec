"""One module per file format; each recognises its bytes and yields what a loader would read.

A format module has ``FORMATS`` (names it handles), ``sniff(head, win) -> str | None`` and
``scan(ctx, win, member, depth, top)``. Detection is by content only, in the order of
``_MODULES``: the order mirrors the real loaders (``torch.load`` tests the zip magic first,
then tar, then reads a pickle; ``numpy.load`` tests zip, then the ``.npy`` magic).
Adding a format is adding a module here.

One format per file is not enough: other loaders choose by other rules (``pickle.load`` reads
from byte 0 whatever the file is, ``zipfile`` finds a zip from the end, libhdf5 probes at 512,
1024, ...). So every handler is followed by ``polyglot.extra_views``, which judges those other
views and reports ``scan.differential`` when they exist.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING

from trainguard.scan.containers import (
    compressed,
    gguf,
    hdf5,
    numpy,
    onnx,
    polyglot,
    raw_pickle,
    safetensors,
    sevenzip,
    tar,
    text,
    zipped,
)

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

__all__ = ["detect", "handler"]

Handler = Callable[["FileScan", "Window", "str | None", int, bool], None]

_MODULES: tuple[ModuleType, ...] = (
    zipped,
    numpy,
    gguf,
    hdf5,
    sevenzip,
    compressed,
    tar,
    safetensors,
    raw_pickle,
    onnx,
    text,
)
_HANDLERS: dict[str, Handler] = {fmt: m.scan for m in _MODULES for fmt in m.FORMATS}

HEAD = 4096


def detect(win: Window) -> str:
    """The format name of the window's bytes (``unknown`` if nothing matches)."""
    head = win.peek_at(0, HEAD)
    if not head:
        return "empty"
    for module in _MODULES:
        fmt: str | None = module.sniff(head, win)
        if fmt:
            return fmt
    return "unknown"


def handler(fmt: str) -> Handler:
    """The reader for ``fmt``, followed by every other view a real loader takes of the bytes."""
    first = _HANDLERS.get(fmt, _unknown)

    def run(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
        try:
            first(ctx, win, member, depth, top)
        finally:  # the first reader's error is still raised to the engine, after the others
            polyglot.extra_views(ctx, win, member, depth, fmt)

    return run


def _unknown(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    from trainguard.findings import Rule, Severity

    if len(win) == 0:
        return
    ctx.add(
        Rule.UNKNOWN_FORMAT,
        Severity.MEDIUM if top else Severity.LOW,
        "format not recognised: its bytes were not judged",
        member,
        0,
        {"size": len(win), "head": win.peek_at(0, 16).hex()},
    )
