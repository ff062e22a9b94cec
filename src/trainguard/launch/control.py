"""Control over the running job's processes: signals in (forwarded to the job), signals
out (stopping it), collecting orphans re-parented to the launcher, and ending what is
left when the job's command has exited.

Every signal the launcher delivers is remembered in ``signalled``, so that a rank that
dies of it is recorded as stopped by trainguard rather than as an attack.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from types import FrameType
from typing import Any

from trainguard.launch import procs
from trainguard.launch.heartbeats import ProcTable

__all__ = ["FORWARDED", "JobControl"]

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class JobControl:
    def __init__(self, child: subprocess.Popen[bytes], table: ProcTable, before: set[int]):
        self.child = child
        self.table = table
        self.before = before
        """Children the launcher had before the job (not the job's to collect)."""
        self.me = os.getpid()
        self.signalled: set[int] = set()
        self.statuses: dict[int, int] = {}
        """Return codes of the job's processes collected here (orphans)."""
        self._handlers: dict[int, Any] = {}

    # -- signals in ---------------------------------------------------------------------

    def forward_signals(self) -> None:
        """SIGINT/SIGTERM/SIGHUP to the launcher go to the job's group (it has its own
        session, so the terminal's Ctrl-C reaches only the launcher)."""
        if threading.current_thread() is not threading.main_thread():
            return

        def forward(sig: int, frame: FrameType | None) -> None:
            self.signalled.add(sig)
            procs.signal_group(self.child.pid, sig)

        for sig in FORWARDED:
            try:
                self._handlers[sig] = signal.signal(sig, forward)
            except (OSError, ValueError):
                continue

    def restore_signals(self) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        self._handlers.clear()

    # -- signals out --------------------------------------------------------------------

    def signal_job(self, sig: int) -> None:
        """The job's group, and every live process of the job that left it."""
        self.signalled.add(sig)
        procs.signal_group(self.child.pid, sig)
        for proc in self.table.procs.values():
            if proc.alive and procs.is_alive(proc.pid, proc.start_ticks):
                procs.signal_pid(proc.pid, sig)

    # -- collecting ---------------------------------------------------------------------

    def reap(self) -> None:
        """Collect the job's orphans re-parented to the launcher (the subreaper)."""
        for info in procs.children_of(self.me):
            if info.pid in self.before or info.pid == self.child.pid or not info.dead:
                continue
            if info.pgid == self.child.pid or info.pid in self.table.procs:
                status = procs.reap(info.pid)
                if status is not None:
                    self.statuses[info.pid] = status

    def end_leftovers(self) -> dict[str, list[str] | None]:
        """Processes of the job still running after its command exited: ended (SIGTERM,
        then SIGKILL), and returned as ``{pid: argv}`` for the record."""
        left = procs.find(
            lambda p: (
                not p.dead
                and p.pid != self.me
                and (p.pgid == self.child.pid or (p.ppid == self.me and p.pid not in self.before))
            )
        )
        argv = {str(p.pid): procs.cmdline(p.pid) for p in left}
        for sig, wait in ((signal.SIGTERM, 1.0), (signal.SIGKILL, 2.0)):
            if not left:
                break
            self.signalled.add(sig)
            for p in left:
                procs.signal_pid(p.pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                self.reap()
                left = [p for p in left if procs.is_alive(p.pid, p.start_ticks)]
                if not left:
                    break
                time.sleep(0.05)
        self.reap()
        return argv
