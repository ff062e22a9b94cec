"""Resource bounds that keep a scan cheap on hostile input.

Every bound is a plain number a user can raise; hitting one is a ``LimitExceeded`` and an
``error`` verdict for that file, never a crash, a hang or an out-of-memory kill.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from trainguard.errors import LimitExceeded

__all__ = ["Budget", "Limits"]

MiB = 1 << 20
GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class Limits:
    max_line: int = 1 * MiB
    """Longest protocol-0 text argument (a line) the pickle reader accepts."""
    max_member_bytes: int = 2 * GiB
    """Largest single decompressed member read for analysis."""
    max_decompressed: int = 8 * GiB
    """Total decompressed bytes for one top-level file."""
    max_ratio: int = 200
    """Compression ratio above which a large (> ``ratio_floor``) stream is treated as a bomb."""
    ratio_floor: int = 64 * MiB
    max_members: int = 100_000
    max_depth: int = 8
    """Nesting of containers and embedded pickles."""
    max_header: int = 100 * MiB
    """JSON/metadata headers (safetensors, GGUF, Keras config)."""
    max_seconds: float = 300.0
    """Wall-clock budget for one top-level file."""
    max_memory: int = 8 * GiB
    """Memory the unpickler may add while judging one stream (``RLIMIT_DATA`` on Linux):
    the judge builds the object graph, as ``pickle.load`` does, with inert stand-ins."""


class Budget:
    """Mutable counters for one top-level file, checked against ``Limits``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.decompressed = 0
        self.bytes_read = 0

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise LimitExceeded(f"time budget of {self.limits.max_seconds:g} s exceeded")

    def add_decompressed(self, produced: int) -> None:
        self.decompressed += produced
        if self.decompressed > self.limits.max_decompressed:
            raise LimitExceeded(
                f"decompressed size exceeds {self.limits.max_decompressed} bytes (bomb?)"
            )
