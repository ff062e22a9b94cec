"""What the supervisor asks the operating system about processes (Linux ``/proc``, with a
portable fallback where it can have one).

A process is identified by (pid, start time): a pid that comes back with another start
time is another process. A zombie counts as dead: it has ended, only its parent has not
collected it yet.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

__all__ = [
    "ProcInfo",
    "children_of",
    "cmdline",
    "find",
    "is_alive",
    "proc_info",
    "reap",
    "set_subreaper",
    "signal_group",
    "signal_pid",
]

_PROC = "/proc"
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str
    start_ticks: int

    @property
    def dead(self) -> bool:
        return self.state in ("Z", "X", "x")


def proc_info(pid: int) -> ProcInfo | None:
    """``/proc/<pid>/stat``, or ``None`` when the process is gone (or there is no /proc)."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    rest = raw[raw.rfind(")") + 2 :].split()
    try:
        return ProcInfo(pid, int(rest[1]), int(rest[2]), rest[0], int(rest[19]))
    except (IndexError, ValueError):
        return None


def is_alive(pid: int, start_ticks: int | None = None) -> bool:
    """Running (not a zombie) and, given ``start_ticks``, still the same process."""
    if not os.path.isdir(_PROC):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    info = proc_info(pid)
    if info is None or info.dead:
        return False
    return start_ticks is None or info.start_ticks == start_ticks


def children_of(parent: int) -> list[ProcInfo]:
    """Every process whose parent is ``parent``."""
    return find(lambda info: info.ppid == parent)


def reap(pid: int) -> int | None:
    """Collect our exited child ``pid``: its ``Popen``-style return code (negative for a
    signal), or ``None`` if it has not exited or is not ours to collect."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def set_subreaper(on: bool) -> bool | None:
    """Make this process the reaper of its orphaned descendants (Linux ``prctl``), so that
    ranks whose agent died are re-parented here, where their exit status can still be
    read, and nothing the job started escapes to init unseen. Returns the previous
    setting, or ``None`` where it is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        old = ctypes.c_int(0)
        if libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(old), 0, 0, 0) != 0:
            return None
        if libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
            return None
        return bool(old.value)
    except (OSError, AttributeError):
        return None


def signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the process group; False if the group is gone."""
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return False


def signal_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, sig)


def find(predicate: Callable[[ProcInfo], bool]) -> list[ProcInfo]:
    """Every process (one pass over ``/proc``) for which ``predicate`` holds."""
    out: list[ProcInfo] = []
    try:
        names = os.listdir(_PROC)
    except OSError:
        return out
    for name in names:
        if name.isdigit():
            info = proc_info(int(name))
            if info is not None and predicate(info):
                out.append(info)
    return out


def cmdline(pid: int, limit: int = 2000) -> list[str] | None:
    """The process's argv as the kernel holds it (truncated to ``limit`` bytes)."""
    try:
        with open(f"{_PROC}/{pid}/cmdline", "rb") as f:
            raw = f.read(limit)
    except OSError:
        return None
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
