"""What the judge's C unpickler reads from, and the bounds around it.

``_pickle.c`` reads a file object through ``read``/``readinto``/``readline`` and, when the
object has one, ``peek``: it then prefetches 128 KiB at a time and parses from its own
buffer. ``Feed`` gives it exactly that over a ``Window``, and uses each ``peek`` (the only
call C makes while it works through a large stream) to check the time budget. Small
streams are read into an ``io.BytesIO`` without ``peek`` instead: C then reads opcode by
opcode, so ``tell()`` after a global is the offset right after it (exact locations).

Frames are where the loaders themselves disagree. ``_pickle.c`` reading a file object
*without* ``peek`` (``torch.load`` reads ``data.pkl`` from an ``io.BytesIO``) loads each
``FRAME`` into its buffer and, when an opcode runs past the frame's end, drops the rest of
the buffer and reads on from the file; ``pickle.loads`` and files with ``peek`` just read
on. An honest pickler never lets an opcode straddle a frame, so a stream that may hold a
``FRAME`` opcode is read through ``FrameFeed``: C reads it without ``peek`` (torch's
reading), and the feed notes any read after a frame that is not the next opcode byte,
which the judge reports as ``scan.differential``.

``memory_cap`` bounds memory: C allocates what the stream asks for (a single
``LONG_BINPUT 0x3fffffff`` makes it zero 16 GiB of memo slots), so for the run the soft
``RLIMIT_DATA`` is set to the data segment in use plus ``Limits.max_memory``; an allocation
past it is a ``MemoryError`` inside C, which the judge reports as a limit. The limit is
process-wide while it is set: another thread that allocates more than the headroom in that
window gets a ``MemoryError`` too. Outside Linux there is no cap (documented limitation).
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
import threading
from collections.abc import Callable, Iterator

from trainguard.errors import LimitExceeded
from trainguard.scan.limits import Budget, Limits
from trainguard.scan.window import Window

__all__ = [
    "IN_MEMORY",
    "Feed",
    "FrameFeed",
    "MemoryFeed",
    "WindowFeed",
    "memory_cap",
    "open_feed",
    "readinto_by_read",
]

IN_MEMORY = 1 << 20
"""Streams up to this size are read into memory and parsed opcode by opcode."""


class MemoryFeed(io.BytesIO):
    """A small stream in memory; C calls its C-level ``read``/``readline`` directly."""

    def __init__(self, data: bytes, start: int, budget: Budget) -> None:
        super().__init__(data)
        self.seek(start)
        self.budget = budget
        self.limits = budget.limits


def readinto_by_read(read: Callable[[int], bytes], buffer: bytearray | memoryview) -> int:
    """``readinto`` for a reader that only has ``read``, as the C unpickler calls it."""
    try:
        data = read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
    finally:
        if isinstance(buffer, memoryview):
            buffer.release()  # C frees the bytes behind it even when we raise


class WindowFeed:
    """A large stream read through a ``Window``, with ``peek`` for C's prefetching."""

    def __init__(self, win: Window, budget: Budget) -> None:
        self.win = win
        self.budget = budget
        self.limits = budget.limits

    def read(self, size: int = -1) -> bytes:
        win = self.win
        if size is None or size < 0:
            size = win.remaining
        return win.read(size)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        return readinto_by_read(self.read, buffer)

    def readline(self, size: int = -1) -> bytes:
        return self.win.readline(size)

    def peek(self, size: int = 0) -> bytes:
        self.budget.check_time()
        return self.win.peek_at(self.win.tell(), max(size, 1))

    def tell(self) -> int:
        return self.win.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.win.seek(offset, whence)


class FrameFeed:
    """No ``peek``: C reads what it needs, call by call, and the feed watches the frames."""

    def __init__(self, src: Window | io.BytesIO, budget: Budget) -> None:
        self.src = src
        self.budget = budget
        self.limits = budget.limits
        self.straddles: list[int] = []
        """Offsets where an opcode ran past the end of a frame."""
        self._state = 0  # 1: read FRAME's opcode, 2: read its length, 3: just read a frame
        self._calls = 0

    def _note(self, size: int, data: bytes) -> None:
        state = self._state
        if state == 3 and size != 1:
            self.straddles.append(self.src.tell() - len(data))
        if state == 1 and size == 8:
            self._state = 2
        elif state == 2:
            self._state = 3
        else:
            self._state = 1 if size == 1 and data == b"\x95" else 0
        self._calls += 1
        if not self._calls & 1023:
            self.budget.check_time()

    def read(self, size: int = -1) -> bytes:
        data = self.src.read(size)
        self._note(size, data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        return readinto_by_read(self.read, buffer)

    def readline(self, size: int = -1) -> bytes:
        if self._state == 3:
            self.straddles.append(self.src.tell())
        self._state = 0
        return self.src.readline(size)

    def tell(self) -> int:
        return self.src.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        self._state = 0
        return self.src.seek(offset, whence)


Feed = MemoryFeed | WindowFeed | FrameFeed


def open_feed(win: Window, budget: Budget, view: str = "pickle") -> Feed:
    """The feed for the stream at ``win``'s position, read as the loader of ``view`` reads.

    Torch reads a zip's ``data.pkl`` from an ``io.BytesIO`` of the whole record, and a
    legacy file from the open file (with ``peek``): so do we. Small streams for
    ``pickle.load`` are read without ``peek``, through ``FrameFeed`` when a ``FRAME`` opcode
    can occur (a straddle is then reported). A large stream is read with ``peek`` (C's fast
    path) unless it starts with a frame, as every framed pickle CPython writes does
    (``FrameFeed`` then reads it a frame per call). Left over: a frame first met past the
    first MiB of an unframed large stream is read as ``pickle.loads`` reads it (``load/``
    refuses any global the scan missed).
    """
    if view == "torch":
        # torch reads a zip's data.pkl from an io.BytesIO: exactly this, frames and all
        return MemoryFeed(win.peek_at(0, len(win)), win.tell(), budget)
    if view in ("torch-legacy", "torch-tar") and len(win) > IN_MEMORY:
        return WindowFeed(win, budget)  # torch reads these from the open file, with peek
    if len(win) <= IN_MEMORY:
        data = win.peek_at(0, len(win))
        if b"\x95" in data:
            mem = io.BytesIO(data)
            mem.seek(win.tell())
            return FrameFeed(mem, budget)
        return MemoryFeed(data, win.tell(), budget)
    head = win.peek_at(win.tell(), 3)
    framed = head[:1] == b"\x95" or (head[:1] == b"\x80" and head[2:3] == b"\x95")
    if framed:
        return FrameFeed(win, budget)
    return WindowFeed(win, budget)


_cap_lock = threading.RLock()
_cap_depth = [0]


def _data_in_use() -> int | None:
    try:
        with open("/proc/self/status", "rb") as fh:
            found = re.search(rb"VmData:\s+(\d+) kB", fh.read())
    except OSError:
        return None
    return int(found.group(1)) * 1024 if found else None


@contextlib.contextmanager
def memory_cap(limits: Limits) -> Iterator[None]:
    """Cap the data segment at its current size plus ``limits.max_memory`` for the block.

    Nested blocks (every stream of one file runs inside the file's block) keep the outer
    cap and cost a counter."""
    if not sys.platform.startswith("linux"):
        yield
        return
    import resource

    with _cap_lock:
        _cap_depth[0] += 1
        outer = _cap_depth[0] == 1
        saved = resource.getrlimit(resource.RLIMIT_DATA) if outer else (0, 0)
        if outer:
            used = _data_in_use()
            soft, hard = saved
            if used is not None:
                want = used + limits.max_memory
                if hard != resource.RLIM_INFINITY:
                    want = min(want, hard)
                if soft == resource.RLIM_INFINITY or want < soft:
                    resource.setrlimit(resource.RLIMIT_DATA, (want, hard))
    try:
        yield
    except MemoryError:
        raise LimitExceeded(
            f"unpickling needs more than {limits.max_memory >> 20} MiB of memory"
        ) from None
    finally:
        with _cap_lock:
            _cap_depth[0] -= 1
            if outer:
                resource.setrlimit(resource.RLIMIT_DATA, saved)
