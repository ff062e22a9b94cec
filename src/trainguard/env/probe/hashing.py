"""sha256 of many files on all cores, with nothing trusted but the bytes.

Threads suffice: ``hashlib`` releases the GIL while it hashes a buffer of 2 KiB or more and
the reads release it too, so N threads keep N cores busy on big files. The files are
handed out largest first so that one huge ``.so`` does not finish the run alone, from one
shared list, so there is no per-file task object to allocate.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from stat import S_ISREG

CHUNK = 1 << 20
SMALL = 1 << 16
Progress = Callable[[int], None]


_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
# Why a file was not hashed that is not an error: it is gone, a link or not a regular
# file (the walk's lstat and the checks judge those).
NOT_HASHED = {errno.ENOENT, errno.ELOOP, errno.EINVAL, errno.ENOTDIR}


def _digest(
    path: str, mv: memoryview, algo: str = "sha256", follow: bool = True
) -> tuple[str, int, os.stat_result]:
    h = hashlib.sha256() if algo == "sha256" else hashlib.new(algo)
    # O_NONBLOCK: a FIFO swapped in after the walk must not hang the check; the fstat
    # then refuses anything that is not a regular file (a FIFO, /dev/zero behind a link).
    # Its result doubles as the file's lstat when links are not followed.
    fd = os.open(path, _FLAGS if follow else _FLAGS | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        first = os.read(fd, SMALL)  # most files: two reads, no Python-level file object
        h.update(first)
        size = len(first)
        more = os.read(fd, SMALL) if first else b""
        if more:
            h.update(more)
            size += len(more)
            with open(fd, "rb", buffering=0, closefd=False) as f:
                while n := f.readinto(mv):
                    h.update(mv[:n])
                    size += n
    finally:
        os.close(fd)
    return h.hexdigest(), size, st


def digest_file(path: str, algo: str = "sha256") -> tuple[str, int]:
    """One file, any hashlib algorithm (RECORD may name sha384 or sha512)."""
    digest, size, _ = _digest(path, memoryview(bytearray(CHUNK)), algo)
    return digest, size


class HashRun:
    """Hash ``(path, size)`` pairs on ``workers`` threads, started at once, so the caller
    can parse metadata while the bytes are read. ``join`` returns ``{path: (sha256 hex,
    bytes read)}`` and ``{path: error}``; links, vanished and special files are left in
    ``skipped`` for the caller to judge (``RECORD`` follows links: ``digest_file``).
    """

    def __init__(self, paths: list[tuple[str, int]], workers: int) -> None:
        self.order = [p for p, _ in sorted(paths, key=lambda item: -item[1])]
        self.total = sum(size for _, size in paths)
        self.results: dict[str, tuple[str, int]] = {}
        self.errors: dict[str, str] = {}
        self.stats: dict[str, os.stat_result] = {}
        """The ``fstat`` of each hashed file: with ``O_NOFOLLOW`` it is its ``lstat``."""
        self.skipped: set[str] = set()
        self._lock = threading.Lock()
        self._position = 0
        self._done = [0] * max(1, workers)
        self._threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True)
            for i in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def _take(self) -> str | None:
        with self._lock:
            i = self._position
            if i >= len(self.order):
                return None
            self._position = i + 1
            return self.order[i]

    def _run(self, slot: int) -> None:
        mv = memoryview(bytearray(CHUNK))
        while (path := self._take()) is not None:
            try:
                digest, size, st = _digest(path, mv, follow=False)
            except OSError as exc:
                if exc.errno in NOT_HASHED:
                    self.skipped.add(path)
                else:
                    self.errors[path] = f"{type(exc).__name__}: {exc.strerror or exc}"
            else:
                self.results[path] = (digest, size)
                self.stats[path] = st
                self._done[slot] += size

    def join(
        self, progress: Progress | None = None
    ) -> tuple[dict[str, tuple[str, int]], dict[str, str]]:
        for t in self._threads:
            while t.is_alive():
                t.join(0.1)
                if progress is not None:
                    progress(sum(self._done))
        if progress is not None:
            progress(sum(self._done))
        return self.results, self.errors
