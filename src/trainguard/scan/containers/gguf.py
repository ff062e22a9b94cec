"""GGUF (llama.cpp): no pickle, but a header that can lie and a chat template that renders.

Two attacks live here. C loaders size buffers from declared counts and lengths (the 2024
heap-overflow CVEs in ggml's GGUF reader came from kv counts, string and array lengths and
``n_dims``), so every declared size is checked against the bytes that remain before it is
trusted; a size no file of this length could hold is ``scan.malformed`` (high) and the
header is not read further. And ``tokenizer.chat_template`` is Jinja source that
llama-cpp-python once rendered without a sandbox (CVE-2024-34359): ``check_template``
judges it from its syntax tree, never by rendering it.
"""

from __future__ import annotations

import math
import struct
from typing import TYPE_CHECKING, Any

from trainguard.errors import ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.templates import check_template

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

__all__ = ["FORMATS", "check_template", "scan", "sniff"]

FORMATS = ("gguf",)
MAGIC = b"GGUF"
MAX_DIMS = 8
MAX_NESTING = 8
TEMPLATE_KEY = "tokenizer.chat_template"
_CHUNK = 1 << 16
_STRING, _ARRAY = 8, 9
_SCALARS = dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True))
# ggml type -> (block size, bytes per block), as in gguf-py's GGML_QUANT_SIZES
_GGML = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 31: (32, 18),
    32: (32, 18), 33: (32, 18), 34: (256, 54), 35: (256, 66), 36: (32, 18), 37: (32, 18),
    38: (32, 18), 39: (32, 17),
}  # fmt: skip


class _Hostile(Exception):
    """A declared size that no honest file of this length carries; ends the header read."""

    def __init__(self, message: str, offset: int, evidence: dict[str, Any]) -> None:
        super().__init__(message)
        self.message, self.offset, self.evidence = message, offset, evidence


def sniff(head: bytes, win: Window) -> str | None:
    return "gguf" if head[:4] == MAGIC else None


class _Reader:
    """Buffered, bounds-checked reads; big strings are skipped by moving the position."""

    def __init__(
        self, ctx: FileScan, win: Window, order: str, wide: bool, member: str | None
    ) -> None:
        self.win, self.order, self.member = win, order, member
        self.cap, self.budget = ctx.limits.max_header, ctx.budget
        self.size = len(win)
        self.pos = 8
        self.count_fmt = "Q" if wide else "I"
        self.count_len = 8 if wide else 4
        self._buf = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > self.size:
            raise ScanError("GGUF header truncated", member=self.member, offset=self.pos)
        rel = self.pos - self._at
        if rel < 0 or end > self._at + len(self._buf):
            if n > _CHUNK:
                data = self.win.peek_at(self.pos, n)
                self.pos = end
                return data
            self._buf, self._at, rel = self.win.peek_at(self.pos, _CHUNK), self.pos, 0
        self.pos = end
        return self._buf[rel : rel + n]

    def unpack(self, fmt: str) -> Any:
        st = struct.Struct(self.order + fmt)
        return st.unpack(self.take(st.size))[0]

    def count(self) -> int:
        value: int = self.unpack(self.count_fmt)
        return value

    def need(self, count: int, unit: int, what: str) -> None:
        """Declared ``count`` items of at least ``unit`` bytes must fit in what is left."""
        need = count * unit
        if need > self.size or self.pos + need > self.cap:
            raise _Hostile(
                f"{what} declares {count} items (at least {need} bytes) in a {self.size}-byte "
                f"file: header built to exhaust memory",
                self.pos,
                {"declared": count, "min_bytes": need, "file_size": self.size},
            )
        if self.pos + need > self.size:
            msg = f"GGUF {what} runs past the end of the file (truncated)"
            raise ScanError(msg, member=self.member, offset=self.pos)

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise ScanError("GGUF header truncated", member=self.member, offset=self.pos)
        self.pos += n

    def string(self, keep: bool) -> bytes | None:
        n = self.count()
        self.need(n, 1, "string")
        if keep:
            return self.take(n)
        self.skip(n)
        return None


def _skip_value(r: _Reader, vtype: int, nesting: int) -> None:
    if vtype in _SCALARS:
        r.take(struct.calcsize(_SCALARS[vtype]))
    elif vtype == _STRING:
        r.string(keep=False)
    elif vtype == _ARRAY:
        if nesting >= MAX_NESTING:
            raise _Hostile(f"arrays nested deeper than {MAX_NESTING}", r.pos, {})
        itype = r.unpack("I")
        n = r.count()
        if itype in _SCALARS:
            unit = struct.calcsize(_SCALARS[itype])
            r.need(n, unit, "array")
            r.skip(n * unit)
            return
        r.need(n, r.count_len if itype == _STRING else 4 + r.count_len, "array")
        for i in range(n):
            if not i & 0xFFFF:
                r.budget.check_time()
            _skip_value(r, itype, nesting + 1)
    else:
        raise ScanError(f"unknown GGUF value type {vtype}", member=r.member, offset=r.pos - 4)


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    head = win.peek_at(0, 8)
    if len(head) < 8:
        raise ScanError("GGUF header truncated", member=member, offset=0)
    (version,) = struct.unpack("<I", head[4:8])
    order = "<"
    if version not in (1, 2, 3) and struct.unpack(">I", head[4:8])[0] in (2, 3):
        order, version = ">", struct.unpack(">I", head[4:8])[0]
    if version not in (1, 2, 3):
        raise ScanError(f"unknown GGUF version {version}", member=member, offset=4)
    r = _Reader(ctx, win, order, version >= 2, member)
    try:
        _read(ctx, r, member)
    except _Hostile as exc:
        ctx.add(Rule.MALFORMED, Severity.HIGH, exc.message, member, exc.offset, exc.evidence)


def _read(ctx: FileScan, r: _Reader, member: str | None) -> None:
    n_tensors, n_kv = r.count(), r.count()
    r.need(n_tensors, r.count_len + 4 + 4 + 8, "tensor count")
    r.need(n_kv, r.count_len + 4 + 1, "key/value count")
    alignment, dups = 32, 0
    seen: set[str] = set()
    for _ in range(n_kv):
        ctx.budget.check_time()
        key = (r.string(keep=True) or b"").decode("utf-8", "replace")
        if key in seen and dups < 20:
            dups += 1
            msg = f"duplicate key {key[:120]!r}: loaders disagree on which value counts"
            ctx.add(Rule.CONTAINER_ANOMALY, Severity.MEDIUM, msg, member, r.pos, {"key": key[:200]})
        seen.add(key)
        vtype = r.unpack("I")
        at = r.pos
        if vtype == _STRING and (key == TEMPLATE_KEY or key.startswith(TEMPLATE_KEY + ".")):
            raw = r.string(keep=True) or b""
            check_template(ctx, raw.decode("utf-8", "replace"), member, at)
        elif key == "general.alignment" and vtype == 4:
            alignment = r.unpack("I")
            if alignment == 0 or alignment & (alignment - 1):
                msg = f"alignment {alignment} is not a power of two"
                ctx.add(Rule.MALFORMED, Severity.MEDIUM, msg, member, at, {"alignment": alignment})
                alignment = 32
        else:
            _skip_value(r, vtype, 0)
    # Two passes over the tensor infos: the data section starts after the last of them.
    start = r.pos
    for i in range(n_tensors):
        _tensor_info(r, i)
    data_size = r.size - -(-r.pos // alignment) * alignment
    r.pos = start
    _check_tensors(ctx, r, n_tensors, data_size, member)


def _tensor_info(r: _Reader, i: int) -> tuple[str, list[int], int, int]:
    if not i & 0xFFFF:
        r.budget.check_time()
    name = (r.string(keep=True) or b"").decode("utf-8", "replace")
    n_dims = r.unpack("I")
    if n_dims > MAX_DIMS:
        msg = f"tensor {name[:80]!r} declares {n_dims} dimensions (ggml allows {MAX_DIMS})"
        raise _Hostile(msg, r.pos - 4, {"tensor": name[:200], "n_dims": n_dims})
    dims = [r.count() for _ in range(n_dims)]
    return name, dims, r.unpack("I"), r.unpack("Q")


def _check_tensors(
    ctx: FileScan, r: _Reader, n_tensors: int, data_size: int, member: str | None
) -> None:
    """Sizes from shape and type must lie in the data section; absurd ones are hostile."""
    names: set[str] = set()
    truncated: int | None = None
    reported = 0
    for i in range(n_tensors):
        at = r.pos
        name, dims, gtype, offset = _tensor_info(r, i)
        ev = {"tensor": name[:200], "dims": dims, "type": gtype, "offset": offset}
        if name in names and reported < 20:
            reported += 1
            msg = f"duplicate tensor name {name[:80]!r}"
            ctx.add(Rule.CONTAINER_ANOMALY, Severity.MEDIUM, msg, member, at, ev)
        names.add(name)
        elements = math.prod(dims)
        block, per_block = _GGML.get(gtype, (1, 0))
        nbytes = -(-elements // block) * per_block
        problem = None
        if any(d >= 1 << 63 for d in dims) or elements >= 1 << 63:
            problem = f"tensor {name[:80]!r}: shape {dims} overflows a 64-bit element count"
        elif nbytes > r.size or offset > r.size:
            problem = (
                f"tensor {name[:80]!r}: {nbytes} bytes at offset {offset} cannot lie in a "
                f"{r.size}-byte file: a loader that trusts it reads out of bounds"
            )
        elif gtype not in _GGML:
            msg = f"tensor {name[:80]!r}: unknown ggml type {gtype}, size not checked"
            ctx.add(Rule.MALFORMED, Severity.LOW, msg, member, at, ev)
        elif offset + nbytes > data_size and truncated is None:
            truncated = at
        if problem and reported < 20:
            reported += 1
            ctx.add(Rule.MALFORMED, Severity.HIGH, problem, member, at, ev)
    if truncated is not None:
        msg = "tensor data runs past the end of the file (truncated?)"
        raise ScanError(msg, member=member, offset=truncated)
