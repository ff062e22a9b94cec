"""safetensors: no code, but a header that can lie.

The format is an 8-byte little-endian header length, a JSON header, then one byte buffer.
A header is checked the way a careful loader should: bounded size, known dtypes, shapes
that match byte ranges, ranges inside the buffer, no overlaps, no gaps. A header sized or
shaped to make a loader allocate far more than the file holds is ``scan.malformed`` (high).
"""

from __future__ import annotations

import json
import math
import struct
from typing import TYPE_CHECKING, Any

from trainguard.errors import ScanError
from trainguard.findings import Rule, Severity

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("safetensors",)

# dtype -> size in bits
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16,
    "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "F64": 64,
    "I64": 64, "U64": 64, "C64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
SAFETENSORS_MAX_HEADER = 100_000_000  # the reference implementation's own limit


def sniff(head: bytes, win: Window) -> str | None:
    if len(head) < 10:
        return None
    (n,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and n >= 2:
        return "safetensors"
    return None


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    (n,) = struct.unpack("<Q", win.peek_at(0, 8))
    size = len(win)
    if n > min(SAFETENSORS_MAX_HEADER, ctx.limits.max_header) or n > size - 8:
        ctx.add(
            Rule.MALFORMED,
            Severity.HIGH,
            f"header length {n} exceeds the file ({size} bytes) or the 100 MB format limit: "
            "a loader that trusts it allocates that much",
            member,
            0,
            {"header_length": n, "file_size": size},
        )
        return
    raw = win.peek_at(8, n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ScanError(f"safetensors header is not JSON: {exc}", member=member, offset=8) from None
    if not isinstance(header, dict):
        raise ScanError("safetensors header is not an object", member=member, offset=8)
    problems = list(_problems(header, size - 8 - n))
    for msg, ev in problems[:20]:
        ctx.add(Rule.MALFORMED, Severity.HIGH, msg, member, 8, ev)


def _problems(header: dict[str, Any], buffer: int) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    ranges: list[tuple[int, int, str]] = []
    meta = header.get("__metadata__")
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        out.append(("__metadata__ must map strings to strings", {}))
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(t, dict):
            out.append((f"tensor {name!r}: entry is not an object", {"tensor": name}))
            continue
        dtype, shape, offs = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if dtype not in DTYPE_BITS:
            out.append((f"tensor {name!r}: unknown dtype {dtype!r}", {"tensor": name}))
            continue
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            out.append((f"tensor {name!r}: shape is not a list of sizes", {"tensor": name}))
            continue
        if not (
            isinstance(offs, list) and len(offs) == 2 and all(isinstance(o, int) for o in offs)
        ):
            out.append((f"tensor {name!r}: data_offsets malformed", {"tensor": name}))
            continue
        begin, end = offs
        nbytes = math.prod(shape) * DTYPE_BITS[dtype]
        nbytes = (nbytes + 7) // 8
        ev = {"tensor": name, "shape": shape[:16], "dtype": dtype, "data_offsets": offs}
        if not 0 <= begin <= end <= buffer:
            out.append(
                (f"tensor {name!r}: bytes {begin}..{end} outside the {buffer}-byte buffer", ev)
            )
            continue
        if end - begin != nbytes:
            out.append(
                (f"tensor {name!r}: shape needs {nbytes} bytes, range holds {end - begin}", ev)
            )
        ranges.append((begin, end, name))
    ranges.sort()
    pos = 0
    for begin, end, name in ranges:
        if begin < pos:
            out.append((f"tensor {name!r} overlaps the previous tensor", {"tensor": name}))
        elif begin > pos:
            out.append((f"gap of {begin - pos} bytes before tensor {name!r}", {"tensor": name}))
        pos = max(pos, end)
    if ranges and pos != buffer:
        out.append((f"{buffer - pos} bytes after the last tensor", {}))
    return out
