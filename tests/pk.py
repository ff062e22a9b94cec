"""Hand assembly of pickle opcode streams for tests (nothing here is ever unpickled)."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any


def s1(text: str) -> bytes:
    """SHORT_BINUNICODE."""
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def proto(n: int) -> bytes:
    return b"\x80" + bytes([n])


def glob(module: str, name: str) -> bytes:
    """Protocol-0 GLOBAL opcode."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def stack_glob(module: str, name: str) -> bytes:
    return s1(module) + s1(name) + b"\x93"


def call(callee: bytes, *args: bytes) -> bytes:
    """callee (already on the stack as bytes) applied to a tuple of args via REDUCE."""
    return callee + b"(" + b"".join(args) + b"tR"


def binbytes(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def marker_cmd(path: str) -> bytes:
    return s1(f"touch {path}")


def system_call(marker: str, module: str = "os", protocol: int = 2) -> bytes:
    return proto(protocol) + call(glob(module, "system"), marker_cmd(marker)) + b"."


class Reduce:
    """Pickles as ``fn(*args)``; only ever dumped by tests, loaded only under trainguard."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.fn, self.args)


def payload(marker: Path | str) -> Reduce:
    """The harmless marker payload: ``os.system("touch <marker>")`` when (wrongly) loaded."""
    return Reduce(os.system, f"touch {marker}")
