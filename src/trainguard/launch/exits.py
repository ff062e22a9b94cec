"""How a job ended: exit codes of ``trainguard run``, signal names, OOM kills, and the
failure summary torchrun prints.

``trainguard run`` exits with the job's own code, like a shell: ``128 + N`` when the job
died by signal ``N``. Two codes are its own: ``GUARD_STOPPED`` when trainguard stopped the
job (an alert at ``--stop-on`` severity or worse, or a pre-flight check that refused to
start it) and ``TIMED_OUT`` when ``--timeout`` ran out (124, as ``timeout(1)``). A command
that cannot be started gives 127 (not found) or 126 (not executable), as in a shell.
Scripts that must tell a job's own 86 from trainguard's read ``run.exited`` in the ledger
(``stopped_by_guard``).
"""

from __future__ import annotations

import re
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from trainguard.exit_codes import GUARD_STOPPED, TIMED_OUT

__all__ = [
    "CANNOT_EXECUTE",
    "GUARD_STOPPED",
    "NOT_FOUND",
    "TIMED_OUT",
    "OomCounter",
    "TorchrunLog",
    "TorchrunVerdict",
    "shell_code",
    "signal_name",
]

CANNOT_EXECUTE: Final = 126
NOT_FOUND: Final = 127


def shell_code(returncode: int) -> int:
    """``Popen.returncode`` as a shell reports it: a death by signal N is ``128 + N``."""
    return 128 - returncode if returncode < 0 else returncode


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


@dataclass(frozen=True, slots=True)
class TorchrunVerdict:
    """What torchrun said about one worker process."""

    pid: int
    exitcode: int | None = None
    """Negative: killed by that signal (torchrun's convention)."""
    rank: int | None = None
    closed_by_agent: str | None = None
    """The signal torchrun itself sent while tearing the group down (``SIGTERM``)."""


# "Sending process 25576 closing signal SIGTERM"
_CLOSING = re.compile(r"Sending process (\d+) closing signal (SIG[A-Z0-9]+)")
# "failed (exitcode: -9) local_rank: 1 (pid: 25577) of binary: ..."
_FAILED = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+) \(pid: (\d+)\)")
# "  rank      : 1 (local_rank: 1)" then "  exitcode  : -9 (pid: 25577)  (SIGKILL)"
_RANK = re.compile(r"^\s*rank\s*:\s*(-?\d+)\s*\(local_rank:\s*(\d+)\)")
_EXITCODE = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)\s*\(pid:\s*(\d+)\)")
# "Signal 9 (SIGKILL) received by PID 25577"
_SIGNALLED = re.compile(r"Signal (\d+) \((SIG[A-Z0-9]+|[^)]*)\) received by PID (\d+)")


class TorchrunLog:
    """Reads the job's stderr as it streams past (torchrun relays its workers' fate there:
    the elastic agent's log lines and the ``ChildFailedError`` summary of
    ``torch.distributed.elastic.multiprocessing.errors``). Partial lines are kept until
    their end arrives. Thread-safe: the tee thread feeds, the supervisor reads."""

    _MAX_LINE = 8192

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer = b""
        self._rank: int | None = None
        self._facts: dict[int, TorchrunVerdict] = {}

    def feed(self, chunk: bytes) -> None:
        with self._lock:
            data = self._buffer + chunk
            *lines, rest = data.split(b"\n")
            self._buffer = rest[-self._MAX_LINE :]
            for raw in lines:
                self._line(raw[: self._MAX_LINE].decode("utf-8", "replace"))

    def _line(self, line: str) -> None:
        if m := _CLOSING.search(line):
            self._merge(int(m[1]), closed_by_agent=m[2])
        elif m := _FAILED.search(line):
            self._merge(int(m[3]), exitcode=int(m[1]))
        elif m := _RANK.match(line):
            self._rank = int(m[1])
            return
        elif m := _EXITCODE.match(line):
            self._merge(int(m[2]), exitcode=int(m[1]), rank=self._rank)
        elif m := _SIGNALLED.search(line):
            self._merge(int(m[3]), exitcode=-int(m[1]))
        self._rank = None

    def _merge(
        self,
        pid: int,
        *,
        exitcode: int | None = None,
        rank: int | None = None,
        closed_by_agent: str | None = None,
    ) -> None:
        old = self._facts.get(pid, TorchrunVerdict(pid))
        self._facts[pid] = TorchrunVerdict(
            pid,
            exitcode if exitcode is not None else old.exitcode,
            rank if rank is not None else old.rank,
            closed_by_agent or old.closed_by_agent,
        )

    def verdict(self, pid: int) -> TorchrunVerdict | None:
        with self._lock:
            return self._facts.get(pid)


class OomCounter:
    """The kernel's OOM-kill count for the launcher's memory cgroup (v2 ``memory.events``
    or v1 ``memory.oom_control``, whichever is readable), to tell an OOM kill from a
    ``kill -9``: the job's processes live in the launcher's cgroup. ``None`` when no
    counter can be read (a container without the cgroup mounted, another OS)."""

    def __init__(self, file: Path | None = None, root: Path = Path("/sys/fs/cgroup")) -> None:
        self._file = file if file is not None else _find_oom_file(root)
        self.baseline = self.read()

    def read(self) -> int | None:
        if self._file is None:
            return None
        try:
            text = self._file.read_text()
        except OSError:
            return None
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None

    def rose(self) -> bool | None:
        now = self.read()
        if now is None or self.baseline is None:
            return None
        return now > self.baseline


def _find_oom_file(root: Path) -> Path | None:
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    candidates: list[Path] = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":
            for base in (root, root / "unified"):
                candidates += [base / rel / "memory.events", base / "memory.events"]
        elif "memory" in controllers.split(","):
            candidates += [root / "memory" / rel / "memory.oom_control"]
            candidates += [root / "memory" / "memory.oom_control"]
    for candidate in candidates:
        try:
            if "oom_kill " in candidate.read_text():
                return candidate
        except OSError:
            continue
    return None
