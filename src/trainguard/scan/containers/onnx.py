"""ONNX models: protobuf with no code, but tensors that name files to read.

A tensor may keep its bytes in another file (``external_data`` key ``location``). Loaders
before onnx 1.16 joined that path to the model's folder unchecked, so ``../../etc/passwd``
or ``/etc/passwd`` made loading read (or, on save, write) any file (CVE-2024-27318/27319).
The file is read with a small bounded wire-format reader, never ``onnx.load``: a hostile
protobuf is not handed to a C++ parser, and multi-gigabyte ``raw_data`` is skipped unread.
Every tensor is visited: initializers, node attributes, If/Loop/Scan subgraphs, sparse
tensors, training graphs and functions.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity

if TYPE_CHECKING:
    from collections.abc import Iterator

    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

__all__ = ["FORMATS", "location_problem", "scan", "sniff"]

FORMATS = ("onnx",)
MAX_DEPTH = 100  # protobuf's own default recursion limit
MAX_FIELDS = 50_000_000
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
_CHUNK = 1 << 16
# ModelProto field -> wire type (0 varint, 2 length-delimited)
_MODEL_WIRE = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
# message kind -> {field number: kind of the sub-message it holds}
_SCHEMA: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "function": {7: "node", 11: "attribute"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
}


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data) and shift < 70:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
    return None


def sniff(head: bytes, win: Window) -> str | None:
    """``ir_version`` first (every serializer writes it first), then only ModelProto fields
    up to the ``graph`` tag.

    Tags are followed past the head (payloads are skipped, not read) because a long
    ``doc_string`` may push the graph out of it. Requiring the graph keeps other protobufs
    that start the same way (a TensorFlow SavedModel: field 1 varint, then field 2) out.
    """
    pos, first = 0, True
    for _ in range(64):
        data = head[pos : pos + 20] if pos + 20 <= len(head) else win.peek_at(pos, 20)
        tag = _varint(data, 0)
        if tag is None or _MODEL_WIRE.get(tag[0] >> 3) != tag[0] & 7:
            return None
        field, value = tag[0] >> 3, _varint(data, tag[1])
        if value is None or first != (field == 1):
            return None
        if field == 7:
            return "onnx"
        pos += value[1] + (value[0] if tag[0] & 7 == 2 else 0)
        if field in (2, 3, 4) and pos <= len(head):
            try:
                head[pos - value[0] : pos].decode("utf-8")
            except UnicodeDecodeError:
                return None
        first = False
    return None


class _Reader:
    """Cached, bounds-checked wire-format reads over the window."""

    def __init__(self, ctx: FileScan, win: Window, member: str | None) -> None:
        self.ctx, self.win, self.member = ctx, win, member
        self.fields = 0
        self._buf, self._at = b"", 0

    def get(self, pos: int, n: int) -> bytes:
        if pos < self._at or pos + n > self._at + len(self._buf):
            if n > _CHUNK:
                return self.win.peek_at(pos, n)
            self._buf, self._at = self.win.peek_at(pos, _CHUNK), pos
        return self._buf[pos - self._at : pos - self._at + n]

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        got = _varint(self.get(pos, min(10, end - pos)), 0)
        if got is None:
            raise ScanError("protobuf varint runs past its message", member=self.member, offset=pos)
        return got[0], pos + got[1]

    def fields_of(self, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
        """(field, wire type, value or payload start, payload end) for each field."""
        pos = start
        while pos < end:
            self.fields += 1
            if self.fields > MAX_FIELDS:
                raise LimitExceeded(f"more than {MAX_FIELDS} protobuf fields", member=self.member)
            if not self.fields & 0xFFFF:
                self.ctx.budget.check_time()
            tag, pos = self.varint(pos, end)
            wire, at = tag & 7, pos
            if wire == 0:
                value, pos = self.varint(pos, end)
                yield tag >> 3, wire, value, pos
                continue
            if wire == 2:
                length, at = self.varint(pos, end)
                pos = at + length
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
            else:
                raise ScanError(f"protobuf wire type {wire}", member=self.member, offset=at)
            if pos > end:
                msg = "protobuf field runs past its message (truncated?)"
                raise ScanError(msg, member=self.member, offset=at)
            yield tag >> 3, wire, at, pos


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    _walk(ctx, _Reader(ctx, win, member), "model", 0, len(win), 0)


def _walk(ctx: FileScan, r: _Reader, kind: str, start: int, end: int, level: int) -> None:
    if level > MAX_DEPTH:
        raise ScanError(f"messages nested deeper than {MAX_DEPTH}", member=r.member, offset=start)
    if kind == "tensor":
        _tensor(ctx, r, start, end)
        return
    sub = _SCHEMA[kind]
    for field, wire, a, b in r.fields_of(start, end):
        if wire == 2 and field in sub:
            _walk(ctx, r, sub[field], a, b, level + 1)


def _tensor(ctx: FileScan, r: _Reader, start: int, end: int) -> None:
    name, location, where, data_location = "", None, start, 0
    for field, wire, a, b in r.fields_of(start, end):
        if field == 8 and wire == 2:
            name = r.get(a, min(b - a, 1024)).decode("utf-8", "replace")
        elif field == 14 and wire == 0:
            data_location = a
        elif field == 13 and wire == 2:
            entry = {f: (x, y) for f, w, x, y in r.fields_of(a, b) if w == 2}
            key = r.get(*_span(entry.get(1, (a, a))))
            if key == b"location" and 2 in entry:
                where = entry[2][0]
                location = r.get(*_span(entry[2])).decode("utf-8", "replace")
    if location is None:
        return
    why = location_problem(location) or _outside(ctx, r.member, location)
    if why:
        dormant = "" if data_location == EXTERNAL else " (dormant: data_location not EXTERNAL)"
        ev = {"tensor": name[:200], "location": location[:1024], "data_location": data_location}
        msg = f"tensor {name[:80]!r} reads external data from {location[:120]!r}: it {why}"
        ctx.add(Rule.PATH_TRAVERSAL, Severity.HIGH, msg + dormant, r.member, where, ev)


def _span(pair: tuple[int, int]) -> tuple[int, int]:
    return pair[0], min(pair[1] - pair[0], 1 << 16)


def location_problem(location: str) -> str | None:
    """Why an external-data path would leave the model's folder, judged from the text."""
    if "\x00" in location:
        return "contains a NUL byte"
    if location.startswith(("/", "\\")):
        return "is an absolute path"
    if re.match(r"[A-Za-z]:", location):
        return "names a drive"
    if ".." in re.split(r"[\\/]", location):
        return "climbs out of the model's folder with '..'"
    return None


def _outside(ctx: FileScan, member: str | None, location: str) -> str | None:
    """For a model on disk: a name that exists and resolves (by symlinks) outside its folder."""
    if member is not None:
        return None
    try:
        folder = ctx.path.parent.resolve()
        target = folder / location
        if not os.path.lexists(target) or target.resolve().is_relative_to(folder):
            return None
    except (OSError, RuntimeError, ValueError):
        return None
    return "resolves outside the model's folder (symlink)"
