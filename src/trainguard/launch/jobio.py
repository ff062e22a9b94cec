"""The launcher's stderr: the job's own stderr passed through as it comes (no line
buffering: progress bars keep working; torchrun's report parser reads along), and the
launcher's one-line messages, never torn into the middle of a chunk of the job's."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import IO, TextIO

from trainguard.ledger.record import Record

__all__ = ["Console", "StderrTee"]

_CHUNK = 65536


class Console:
    def __init__(self, sink: TextIO) -> None:
        self.sink = sink
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        with self.lock:
            try:
                self.sink.write(f"[trainguard] {text}\n")
                self.sink.flush()
            except (OSError, ValueError):
                pass

    def alert(self, record: Record) -> None:
        """One line: id, severity, rank, step, message."""
        where = []
        if record.rank is not None:
            where.append(f"rank {record.rank}")
        if record.step is not None:
            where.append(f"step {record.step}")
        place = f" [{', '.join(where)}]" if where else ""
        message = " ".join(record.message.split())
        loc = record.evidence.get("location")
        if isinstance(loc, dict) and loc.get("path"):
            member = f"!{loc['member']}" if loc.get("member") else ""
            message += f" ({loc['path']}{member})"
        self.say(f"ALERT {record.alert} ({record.severity}){place}: {message}")


class StderrTee(threading.Thread):
    def __init__(self, source: IO[bytes], console: Console, feed: Callable[[bytes], None]):
        super().__init__(name="trainguard-stderr", daemon=True)
        self.source = source
        self.sink = console.sink
        self.lock = console.lock
        self.feed = feed
        try:
            self._fd: int | None = self.sink.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None  # a captured stream (tests): write text

    def run(self) -> None:
        fd = self.source.fileno()
        while True:
            try:
                chunk = os.read(fd, _CHUNK)
            except OSError:
                break
            if not chunk:
                break
            self._write(chunk)
            with contextlib.suppress(Exception):  # the parser must never stall the job
                self.feed(chunk)
        with contextlib.suppress(OSError):
            self.source.close()

    def _write(self, chunk: bytes) -> None:
        with self.lock:
            try:
                if self._fd is not None:
                    self.sink.flush()
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(self._fd, view) :]
                else:
                    self.sink.write(chunk.decode("utf-8", "replace"))
                    self.sink.flush()
            except (OSError, ValueError):
                pass  # our stderr is gone: keep draining so the job never blocks
