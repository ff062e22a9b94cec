"""A bounded, read-only, seekable view of a byte range of an open file.

Every container hands its parts to the next reader as a ``Window``: a zip member that is
stored uncompressed is a window on the original file (nothing is copied), a decompressed
member is a window on a spooled temporary file. Reads never go past the window, text lines
are capped.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from trainguard.errors import LimitExceeded

__all__ = ["Window"]


class Window(io.RawIOBase):
    """``[start, start + length)`` of ``base``, with capped reads."""

    def __init__(
        self,
        base: BinaryIO,
        start: int = 0,
        length: int | None = None,
        *,
        max_line: int = 1 << 20,
        _counter: list[int] | None = None,
    ) -> None:
        super().__init__()
        self._counter = _counter if _counter is not None else [0]
        self._base = base
        self._start = start
        if length is None:
            base.seek(0, io.SEEK_END)
            length = base.tell() - start
        self._length = max(length, 0)
        self._pos = 0
        self.max_line = max_line

    @property
    def bytes_read(self) -> int:
        """Bytes read from the base file through this window and its sub-windows."""
        return self._counter[0]

    # -- io.RawIOBase -------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._length + offset
        else:
            raise ValueError(f"bad whence {whence}")
        self._pos = min(max(pos, 0), self._length)
        return self._pos

    def __len__(self) -> int:
        return self._length

    @property
    def remaining(self) -> int:
        return self._length - self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.remaining
        size = min(size, self.remaining)
        if size <= 0:
            return b""
        self._base.seek(self._start + self._pos)
        data = self._base.read(size)
        self._pos += len(data)
        self._counter[0] += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readline(self, size: int | None = -1) -> bytes:
        cap = self.max_line if size is None or size < 0 else min(size, self.max_line)
        chunks: list[bytes] = []
        total = 0
        while True:
            want = min(4096, cap + 1 - total, self.remaining)
            if want <= 0:
                break
            self._base.seek(self._start + self._pos)
            chunk = self._base.read(want)
            if not chunk:
                break
            nl = chunk.find(b"\n")
            if nl >= 0:
                chunk = chunk[: nl + 1]
            chunks.append(chunk)
            total += len(chunk)
            self._pos += len(chunk)
            self._counter[0] += len(chunk)
            if nl >= 0:
                return b"".join(chunks)
            if total > cap:
                raise LimitExceeded(
                    f"text line longer than {self.max_line} bytes", offset=self._pos
                )
        return b"".join(chunks)

    def peek_at(self, offset: int, size: int) -> bytes:
        """Bytes at ``offset`` without moving the position."""
        if offset < 0 or offset >= self._length:
            return b""
        size = min(size, self._length - offset)
        self._base.seek(self._start + offset)
        data = self._base.read(size)
        self._counter[0] += len(data)
        return data

    def sub(self, offset: int, length: int) -> Window:
        """A window on a range of this one (clamped to it)."""
        offset = min(max(offset, 0), self._length)
        length = min(max(length, 0), self._length - offset)
        return Window(
            self._base,
            self._start + offset,
            length,
            max_line=self.max_line,
            _counter=self._counter,
        )
