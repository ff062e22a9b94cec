"""NumPy ``.npy`` files (``.npz`` archives are zips of them).

An array whose dtype holds Python objects is stored as a pickle right after the header,
and ``numpy.load(allow_pickle=True)`` unpickles it; any other array is raw bytes.
"""

from __future__ import annotations

import ast
import struct
from typing import TYPE_CHECKING, Any

from trainguard.errors import ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.dtypes import parse_dtype

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("npy",)
MAGIC = b"\x93NUMPY"
MAX_HEADER = 1 << 20


def sniff(head: bytes, win: Window) -> str | None:
    return "npy" if head.startswith(MAGIC) else None


def _has_object(descr: Any) -> bool:
    """Whether numpy would build a dtype holding objects from this header ``descr``.

    Strings are dtype strings (``'|O'``, ``'i4,O'``, ``'(2,)O'``, ``'object'``); lists are
    structured fields ``(name, type[, shape])``. Anything else cannot be ruled out.
    """
    if isinstance(descr, str):
        return parse_dtype(descr)[1]
    if isinstance(descr, list):
        for field in descr:
            if not (isinstance(field, tuple) and len(field) in (2, 3)):
                return True
            if _has_object(field[1]):
                return True
        return False
    return True


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    head = win.peek_at(0, 12)
    if len(head) < 10:
        raise ScanError("npy header truncated", member=member, offset=0)
    major = head[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", head[8:10])
        start = 10
    elif major in (2, 3):
        if len(head) < 12:
            raise ScanError("npy header truncated", member=member, offset=0)
        (hlen,) = struct.unpack("<I", head[8:12])
        start = 12
    else:
        raise ScanError(f"unknown npy version {major}", member=member, offset=6)
    if hlen > MAX_HEADER or start + hlen > len(win):
        raise ScanError(f"npy header length {hlen} is out of bounds", member=member, offset=8)
    text = win.peek_at(start, hlen).decode("latin-1" if major < 3 else "utf-8", "replace")
    try:
        header = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ScanError(
            f"npy header is not a literal: {exc}", member=member, offset=start
        ) from None
    if not isinstance(header, dict) or not {"descr", "shape"} <= header.keys():
        raise ScanError("npy header lacks descr/shape", member=member, offset=start)
    data = win.sub(start + hlen, len(win) - start - hlen)
    if _has_object(header["descr"]):
        ctx.add(
            Rule.CONTAINER_ANOMALY,
            Severity.INFO,
            "object array: numpy.load(allow_pickle=True) unpickles the data",
            member,
            start + hlen,
            {"descr": repr(header["descr"])[:200]},
        )
        ctx.scan_pickle(data, member, depth + 1)
