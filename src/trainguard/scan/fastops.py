"""Opcode decoding for pickles held in memory, a faster equivalent of ``pickletools.genops``.

The common binary arguments (fixed-width integers, length-prefixed strings and bytes) are
sliced straight out of the buffer; every other argument type is handed to the
``pickletools`` reader itself, so text-protocol parsing stays exactly the standard
library's. The stream's position is synchronised around every opcode, so a caller that
moves it between opcodes (joblib array data) is followed, as with ``genops``.
"""

from __future__ import annotations

import io
import pickletools
import struct
import sys
from collections.abc import Iterator
from typing import Any

__all__ = ["fast_genops"]

_CODE2OP = {op.code.encode("latin-1")[0]: op for op in pickletools.opcodes}
_FLOAT8 = struct.Struct(">d")


def _sized(data: bytes, p: int, width: int, what: str) -> tuple[int, int]:
    end = p + width
    if end > len(data):
        raise ValueError(f"not enough data in stream to read {what}")
    return int.from_bytes(data[p:end], "little"), end


def _body(data: bytes, p: int, n: int, what: str) -> tuple[bytes, int]:
    if n > sys.maxsize:
        raise ValueError(f"{what} byte count > sys.maxsize: {n}")
    end = p + n
    if end > len(data):
        raise ValueError(f"expected {n} bytes in a {what}, but only {len(data) - p} remain")
    return data[p:end], end


def _read(name: str, data: bytes, p: int) -> tuple[Any, int] | None:
    """(argument, new position) for the fast argument types, else None."""
    if name == "uint1":
        if p >= len(data):
            raise ValueError("not enough data in stream to read uint1")
        return data[p], p + 1
    if name == "uint2":
        return _sized(data, p, 2, name)
    if name == "uint4":
        return _sized(data, p, 4, name)
    if name == "uint8":
        return _sized(data, p, 8, name)
    if name == "int4":
        v, end = _sized(data, p, 4, name)
        return (v - (1 << 32) if v >= 1 << 31 else v), end
    if name in ("unicodestring1", "bytes1", "string1"):
        if p >= len(data):
            raise ValueError(f"not enough data in stream to read {name}")
        raw, end = _body(data, p + 1, data[p], name)
    elif name in ("unicodestring4", "bytes4", "string4"):
        n, q = _sized(data, p, 4, name)
        raw, end = _body(data, q, n, name)
    elif name in ("unicodestring8", "bytes8", "bytearray8"):
        n, q = _sized(data, p, 8, name)
        raw, end = _body(data, q, n, name)
    elif name == "float8":
        if p + 8 > len(data):
            raise ValueError("not enough data in stream to read float8")
        return _FLOAT8.unpack_from(data, p)[0], p + 8
    else:
        return None
    if name.startswith("unicode"):
        return str(raw, "utf-8", "surrogatepass"), end
    if name.startswith("string"):
        return raw.decode("latin-1"), end
    if name == "bytearray8":
        return bytearray(raw), end
    return raw, end


_NONE, _U1, _FIXED, _PREFIXED, _OTHER = range(5)
_WIDTH = {"uint2": 2, "uint4": 4, "uint8": 8, "int4": 4}
_PREFIX = {
    "unicodestring1": 1, "bytes1": 1, "string1": 1, "unicodestring4": 4, "bytes4": 4,
    "string4": 4, "unicodestring8": 8, "bytes8": 8, "bytearray8": 8,
}  # fmt: skip


def _kind(op: pickletools.OpcodeInfo) -> int:
    if op.arg is None:
        return _NONE
    if op.arg.name == "uint1":
        return _U1
    if op.arg.name in _WIDTH:
        return _FIXED
    if op.arg.name in _PREFIX and op.arg.name[-1] == "1" and not op.arg.name.startswith("string"):
        return _PREFIXED
    return _OTHER


_TABLE = {code: (op, _kind(op)) for code, op in _CODE2OP.items()}


def fast_genops(stream: io.BytesIO) -> Iterator[tuple[pickletools.OpcodeInfo, Any, int]]:
    """Yield ``(opcode, argument, position)`` like ``pickletools.genops(stream)``."""
    data = stream.getvalue()
    size = len(data)
    table = _TABLE
    tell, seek = stream.tell, stream.seek
    while True:
        p = tell()
        if p >= size:
            raise ValueError("pickle exhausted before seeing STOP")
        entry = table.get(data[p])
        if entry is None:
            raise ValueError(f"at position {p}, opcode {data[p : p + 1]!r} unknown")
        op, kind = entry
        # the commonest shapes inline: no argument, one byte, a one-byte-length string
        if kind == _NONE:
            arg: Any = None
            end = p + 1
        elif kind == _U1 and p + 1 < size:
            arg = data[p + 1]
            end = p + 2
        elif kind == _PREFIXED and p + 1 < size and p + 2 + data[p + 1] <= size:
            end = p + 2 + data[p + 1]
            raw = data[p + 2 : end]
            arg = raw if op.arg.name == "bytes1" else str(raw, "utf-8", "surrogatepass")  # type: ignore[union-attr]
        else:
            fast = _read(op.arg.name, data, p + 1)  # type: ignore[union-attr]
            if fast is None:
                seek(p + 1)
                arg = op.arg.reader(stream)  # type: ignore[union-attr]
                end = tell()
            else:
                arg, end = fast
        seek(end)
        yield op, arg, p
        if kind == _NONE and op.code == ".":
            return
