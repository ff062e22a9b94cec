"""Raw pickle files: one or several pickles back to back, legacy torch, joblib, DCP metadata.

``pickle.load`` reads one stream and ignores what follows its STOP, but loaders that call it
repeatedly (legacy ``torch.load`` reads five) see the next ones, so every stream that parses
is scanned. Bytes that are not a pickle after the last STOP are noted, not judged.
"""

from __future__ import annotations

import pickletools
from typing import TYPE_CHECKING

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.opcodes import Lit, StreamResult, looks_like_pickle_start

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("pickle",)

TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
MAX_STREAMS = 10_000


def sniff(head: bytes, win: Window) -> str | None:
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:
        return "pickle"
    if looks_like_pickle_start(head[0]) and parses_a_while(win.sub(0, len(win))):
        return "pickle"
    return None


def parses_a_while(win: Window, ops: int = 4) -> bool:
    """True when the first opcodes decode (protocol 0/1 pickles have no magic number).

    A line too long for the reader still counts: ``pickle.load`` would read it.
    """
    n = 0
    try:
        for op, _arg, _pos in pickletools.genops(win):  # type: ignore[arg-type]
            n += 1
            if op.name == "STOP" or n >= ops:
                return True
    except LimitExceeded:
        return True
    except Exception:  # noqa: BLE001 - any decode failure means "not a pickle here"
        return False
    return False


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    first = ctx.scan_pickle(win, member, depth)
    wanted: int | None = None
    if isinstance(first.value, Lit) and first.value.value == TORCH_LEGACY_MAGIC:
        wanted = 5  # magic, protocol, sys_info, the object, storage keys; raw storages follow
    if top:
        ctx.kind = _kind(first, wanted)
    streams = 1
    while win.remaining and (wanted is None or streams < wanted):
        start = win.tell()
        nxt = win.peek_at(start, 2)
        if wanted is None and not (
            nxt[:1] == b"\x80"
            or (looks_like_pickle_start(nxt[0]) and parses_a_while(win.sub(start, win.remaining)))
        ):
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
        try:
            ctx.scan_pickle(win, member, depth)
        except ScanError as exc:
            if wanted is not None:
                raise
            ctx.add(
                Rule.CONTAINER_ANOMALY,
                Severity.INFO,
                f"data after the first pickle is not a complete pickle ({exc.message}); "
                "pickle.load never reads it",
                member,
                start,
            )
            return
        streams += 1
    if win.remaining and wanted is None:
        ctx.add(
            Rule.CONTAINER_ANOMALY,
            Severity.INFO,
            f"{win.remaining} bytes after the last pickle (ignored by pickle.load)",
            member,
            win.tell(),
        )


def _kind(first: StreamResult, wanted: int | None) -> str:
    if wanted:
        return "torch-legacy"
    if first.joblib_arrays:
        return "joblib"
    if any(k.startswith("torch.distributed.checkpoint.") for k in first.globals):
        return "torch-dcp-metadata"
    return "pickle"
