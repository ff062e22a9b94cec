"""How each rank ended, from the best witness available, in this order:

1. the exit status, where the supervisor collected the process itself (the command it
   started, or a rank re-parented to it after its agent died: it is the subreaper);
2. the boot file's ``"exit": "normal"`` (the interpreter shut down normally);
3. torchrun's relayed report on stderr: ``exitcode : -9 (pid: N)``, and which processes
   torchrun itself sent a closing signal while tearing the group down;
4. nothing: the process vanished without an interpreter exit (a signal or ``os._exit``).

A death by a signal that neither trainguard (stopping or forwarding) nor torchrun sent is
``process.killed``. SIGKILL is marked uncatchable (the process could record nothing),
and an OOM kill is told apart by the cgroup's OOM-kill counter. For a catchable signal,
the sender the process recorded in its boot file (``signalled_by``, verified only for
kernel-filled signal codes) is named.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.launch.exits import OomCounter, TorchrunLog, signal_name
from trainguard.launch.heartbeats import Proc, ProcTable
from trainguard.launch.watch import Raised

__all__ = ["Ending", "Endings"]


@dataclass(frozen=True, slots=True)
class Ending:
    rank: int | None
    pid: int
    how: str
    """``exit`` (a status), ``normal`` (interpreter exit, status unknown), ``signal``,
    ``vanished`` (no witness)."""
    source: str
    exit_code: int | None = None
    signal: int | None = None
    stopped_by: str | None = None
    """``trainguard`` (stopping or forwarding) or ``torchrun`` (tearing the group down)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def evidence(self) -> dict[str, Any]:
        return {
            "event": "process.exit",
            "rank": self.rank,
            "pid": self.pid,
            "how": self.how,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "signal_name": signal_name(self.signal) if self.signal else None,
            "source": self.source,
            "stopped_by": self.stopped_by,
            **self.extra,
        }


class Endings:
    def __init__(
        self,
        torchrun: TorchrunLog,
        oom: OomCounter,
        statuses: Mapping[int, int],
        ours: Callable[[int], bool],
    ) -> None:
        self.torchrun = torchrun
        self.oom = oom
        self.statuses = statuses
        """Return codes of processes the supervisor collected itself."""
        self.ours = ours
        """Whether trainguard sent this signal to the job (stopping, forwarding)."""
        self.done: set[int] = set()

    def sweep(
        self, table: ProcTable, child: subprocess.Popen[bytes], *, final: bool
    ) -> list[Ending]:
        """Every rank process that has ended since the last sweep and can be judged now
        (the command itself only once its status has been collected)."""
        out: list[Ending] = []
        for rank, view in table.ranks().items():
            for proc in view.primaries:
                if proc.alive or proc.pid in self.done:
                    continue
                if proc.pid == child.pid and child.returncode is None:
                    continue
                ending = self.judge(proc, rank, final=final, status=_own(proc, child))
                if ending is not None:
                    out.append(ending)
        return out

    def judge(
        self, proc: Proc, rank: int | None, *, final: bool, status: int | None = None
    ) -> Ending | None:
        """How ``proc`` ended, or ``None`` to ask again later (a witness may still come)."""
        ending = self._judge(proc, rank, final=final, status=status)
        senders = proc.boot.get("signalled_by") if proc.boot else None
        if ending is None or not isinstance(senders, list) or not senders:
            return ending
        return replace(ending, extra={**ending.extra, "signalled_by": senders[-8:]})

    def _judge(
        self, proc: Proc, rank: int | None, *, final: bool, status: int | None
    ) -> Ending | None:
        if status is None:
            status = self.statuses.get(proc.pid)
        if status is not None:
            return self._signalled(proc.pid, rank, status, "waitpid")
        if proc.boot and proc.boot.get("exit") == "normal":
            return Ending(rank, proc.pid, "normal", "boot")
        said = self.torchrun.verdict(proc.pid)
        if said is not None and said.exitcode is not None:
            ending = self._signalled(proc.pid, rank, said.exitcode, "torchrun")
            if said.closed_by_agent and ending.signal is not None and ending.stopped_by is None:
                return Ending(
                    rank,
                    proc.pid,
                    "signal",
                    "torchrun",
                    exit_code=ending.exit_code,
                    signal=ending.signal,
                    stopped_by="torchrun",
                )
            return ending
        if not final:
            return None
        return Ending(rank, proc.pid, "vanished", "none")

    def _signalled(self, pid: int, rank: int | None, returncode: int, source: str) -> Ending:
        if returncode >= 0:
            return Ending(rank, pid, "exit", source, exit_code=returncode)
        sig = -returncode
        by = "trainguard" if self.ours(sig) else None
        return Ending(rank, pid, "signal", source, exit_code=returncode, signal=sig, stopped_by=by)

    def alert(self, ending: Ending, *, role: str = "rank", job_failed: bool) -> Raised | None:
        """``process.killed`` for a death by a signal nobody on our side sent (and, when
        the job failed, for a rank that vanished without any witness)."""
        who = f"rank {ending.rank}" if ending.rank is not None else role
        if ending.how == "vanished":
            if not job_failed:
                return None
            return Raised(
                Rule.PROCESS_KILLED,
                Severity.MEDIUM,
                f"{who} (pid {ending.pid}) ended without a normal interpreter exit and no "
                "exit status could be read (killed by a signal, or os._exit)",
                rank=ending.rank,
                evidence={**ending.evidence(), "signal": None, "uncatchable": None},
            )
        if ending.signal is None or ending.stopped_by is not None:
            return None
        uncatchable = ending.signal in (signal.SIGKILL, signal.SIGSTOP)
        oom = self.oom.rose() if ending.signal == signal.SIGKILL else False
        name = signal_name(ending.signal)
        message = f"{who} (pid {ending.pid}) was killed by {name}"
        if oom:
            message += " (the cgroup's OOM-kill count rose: most likely the kernel's OOM killer)"
        elif uncatchable:
            message += ", which cannot be caught: the process could record nothing"
        else:
            message += _sender(ending)
        return Raised(
            Rule.PROCESS_KILLED,
            Severity.MEDIUM if oom else Severity.HIGH,
            message,
            rank=ending.rank,
            evidence={
                **ending.evidence(),
                "role": role,
                "uncatchable": uncatchable,
                "oom": oom,
            },
        )


def _sender(ending: Ending) -> str:
    """Who the process itself recorded sending it this signal (its start-up hook writes
    ``signalled_by`` into its boot file before the signal takes effect)."""
    senders = ending.extra.get("signalled_by") or []
    names = (ending.signal, signal_name(ending.signal) if ending.signal else None)
    said = [s for s in senders if isinstance(s, dict) and s.get("signal") in names]
    if not said:
        return ""
    last = said[-1]
    if last.get("verified") and last.get("pid") is not None:
        return f", sent by pid {last['pid']}"
    return ", by a sender that gave a pid of its own choosing (claimed, not verified)"


def _own(proc: Proc, child: subprocess.Popen[bytes]) -> int | None:
    """The command's collected status, when the rank is the command itself."""
    return child.returncode if proc.pid == child.pid else None
