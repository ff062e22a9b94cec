"""Whole-file compression wrappers: gzip, bz2, xz, lzma-alone, zlib, lz4, and joblib's
old ``ZF`` zlib format. ``joblib.load`` opens each of these transparently, so whatever is
inside (usually a pickle) is scanned after bounded decompression.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

from trainguard.errors import ScanError
from trainguard.scan.spool import decompress_to_spool

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("gzip", "bz2", "xz", "lzma", "zlib", "lz4", "joblib-zf")

_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"ZF0x", "joblib-zf"),
)


def sniff(head: bytes, win: Window) -> str | None:
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if len(head) >= 13 and head[0] == 0x5D and head[1:3] == b"\x00\x00":
        return "lzma"  # lzma "alone" format: props byte 0x5d, 32-bit dictionary size
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib"
    return None


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    head = win.peek_at(0, 64)
    kind = sniff(head, win) or "?"
    if kind == "joblib-zf":
        # "ZF" + hex length + padding spaces, then a zlib stream (joblib < 0.10).
        stream_start = _zf_start(head)
        if stream_start is None:
            raise ScanError("joblib ZF header unreadable", member=member, offset=0)
        src = win.sub(stream_start, len(win) - stream_start)
        kind = "zlib"
    else:
        src = win.sub(0, len(win))
    spool = decompress_to_spool(src.read, kind, ctx.budget)
    label = f"{member}!<{kind}>" if member else f"<{kind}>"
    ctx.scan_window(ctx.window(spool), label, depth + 1)


def _zf_start(head: bytes) -> int | None:
    for i in range(4, min(len(head), 40)):
        if head[i] == 0x78 and i + 1 < len(head) and (head[i] * 256 + head[i + 1]) % 31 == 0:
            try:
                zlib.decompressobj().decompress(head[i:], 1)
            except zlib.error:
                continue
            return i
    return None
