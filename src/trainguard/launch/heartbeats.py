"""The supervisor's view of the job's processes, from the files they write into
``<run dir>/heartbeats/``: ``<pid>.boot.json`` (written at start-up by trainguard's
``sitecustomize``) and ``<pid>.json`` (kept up to date by an attached ``Guard``).

Ranks: a launcher agent (``torchrun``, ``python -m torch.distributed.run``,
``accelerate``, ``deepspeed``) is never a rank. When any process of the job has ``RANK``
in its environment, the ranks are those processes and the ones without are helpers;
otherwise every Python process of the job belongs to rank 0. A rank's *primary* processes
are its members with no ancestor in the same rank (a spawned DataLoader worker, or a
Python tool the training script runs, shares its rank's ``RANK`` but is not a primary).
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.launch import procs

__all__ = ["Proc", "ProcTable", "RankView"]

WARMUP_STEPS = 3
"""Step times of the first steps (compilation, cache warm-up) are not compared."""
AGENTS = frozenset(
    {"torchrun", "torch.distributed.run", "torch.distributed.launch", "accelerate", "deepspeed"}
)
_MAX_DEPTH = 32


@dataclass
class Proc:
    pid: int
    boot: dict[str, Any] | None = None
    beat: dict[str, Any] | None = None
    start_ticks: int | None = None
    alive: bool = True
    ended_at: float | None = None
    """Wall time at which the supervisor saw the process gone."""
    beats_seen: int = 0
    ancestors: tuple[int, ...] = ()
    """Parent, grandparent, ... as seen while it ran (or just the boot file's ppid)."""
    settled: bool = False
    """Gone, and its files read once after that: nothing more will change."""

    @property
    def booted_at(self) -> float | None:
        return _float(self.boot.get("time")) if self.boot else None

    @property
    def ranked(self) -> bool:
        return bool(self.boot and self.boot.get("rank_env") not in (None, ""))

    @property
    def agent(self) -> bool:
        """A launcher that starts ranks, not a rank itself."""
        argv = (self.boot or {}).get("orig_argv") or []
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            return False
        for i, arg in enumerate(argv[:-1]):
            if arg == "-m":
                return argv[i + 1] in AGENTS
        scripts = [os.path.basename(a) for a in argv[:2]]
        return any(s in AGENTS for s in scripts)

    @property
    def attached(self) -> bool:
        return bool(self.beat and self.beat.get("state") == "attached")

    @property
    def beat_time(self) -> float | None:
        return _float(self.beat.get("time")) if self.beat else None

    def rank(self) -> int:
        for source in (self.boot, self.beat):
            if source and isinstance(source.get("rank"), int):
                return int(source["rank"])
        return 0

    def samples(self) -> list[float]:
        """Recent per-step times past the warm-up: busy times when the guard measures
        them (the time a rank computes, not the time it waits for the others), else step
        times."""
        if not self.beat:
            return []
        raw = self.beat.get("busy_times") or self.beat.get("step_times") or []
        times = [float(t) for t in raw if isinstance(t, int | float) and t >= 0]
        step = self.beat.get("step")
        if not isinstance(step, int):
            return times
        first = step - len(times) + 1
        return [t for i, t in enumerate(times) if first + i > WARMUP_STEPS]


@dataclass
class RankView:
    rank: int
    members: list[Proc] = field(default_factory=list)
    primaries: list[Proc] = field(default_factory=list)

    @property
    def covered(self) -> bool:
        """Some process of this rank has attached a guard at some point."""
        return any(p.beat is not None for p in self.members)

    @property
    def attached(self) -> bool:
        return any(p.attached and p.alive for p in self.members)

    def latest_beat(self) -> Proc | None:
        beats = [p for p in self.members if p.beat is not None]
        return max(beats, key=lambda p: p.beat_time or 0.0) if beats else None

    def median_step(self) -> float | None:
        latest = self.latest_beat()
        samples = latest.samples() if latest else []
        return statistics.median(samples) if samples else None

    def step(self) -> int | None:
        latest = self.latest_beat()
        step = latest.beat.get("step") if latest and latest.beat else None
        return step if isinstance(step, int) else None


class ProcTable:
    """Reads the heartbeat folder; re-reads a file only when its stat changed."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[int, Proc] = {}
        self._stats: dict[str, tuple[int, int, int]] = {}

    def scan(self, now: float) -> None:
        try:
            names = os.listdir(self.folder)
        except OSError:
            names = []
        for name in names:
            if not name.endswith(".json"):
                continue
            stem = name[: -len(".json")]
            boot = stem.endswith(".boot")
            pid_text = stem[: -len(".boot")] if boot else stem
            if not pid_text.isdigit():
                continue
            known = self.procs.get(int(pid_text))
            if known is not None and known.settled:
                continue
            body = self._read(name)
            if body is None:
                continue
            proc = self._proc(int(pid_text), now)
            if boot:
                proc.boot = body
                if not proc.ancestors and isinstance(body.get("ppid"), int):
                    proc.ancestors = (body["ppid"],)
            else:
                proc.beat = body
                proc.beats_seen += 1
        for proc in self.procs.values():
            if not proc.alive:
                proc.settled = True  # this scan read its last words
            elif not procs.is_alive(proc.pid, proc.start_ticks):
                proc.alive = False
                proc.ended_at = now

    def _proc(self, pid: int, now: float) -> Proc:
        proc = self.procs.get(pid)
        if proc is None:
            proc = self.procs[pid] = Proc(pid)
            info = procs.proc_info(pid)
            if info is not None and not info.dead:
                proc.start_ticks = info.start_ticks
                proc.ancestors = _ancestors(info)
            elif not procs.is_alive(pid):
                proc.alive, proc.ended_at = False, now
        return proc

    def _read(self, name: str) -> dict[str, Any] | None:
        path = self.folder / name
        try:
            st = path.stat()
        except OSError:
            return None
        key = (st.st_ino, st.st_mtime_ns, st.st_size)  # an atomic replace is a new inode
        if self._stats.get(name) == key:
            return None
        try:
            body = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # half-written by a writer without atomic replace: next time
        self._stats[name] = key
        return body if isinstance(body, dict) else None

    def ranked(self) -> bool:
        return any(p.ranked for p in self.procs.values())

    def ranks(self) -> dict[int, RankView]:
        ranked = self.ranked()
        views: dict[int, RankView] = {}
        for proc in self.procs.values():
            if proc.agent or (ranked and proc.boot is not None and not proc.ranked):
                continue  # torchrun and other helpers without RANK
            view = views.setdefault(proc.rank(), RankView(proc.rank()))
            view.members.append(proc)
        for view in views.values():
            same = {p.pid for p in view.members if p.boot is not None}
            view.primaries = [
                p for p in view.members if p.boot is not None and not same & set(p.ancestors)
            ]
            if not view.primaries:  # a guard in a process the bootstrap missed
                view.primaries = [p for p in view.members if p.beat is not None]
        return dict(sorted(views.items()))


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _ancestors(info: procs.ProcInfo) -> tuple[int, ...]:
    """The parent chain up to the launcher (or init), while the process is alive."""
    chain: list[int] = []
    me = os.getpid()
    ppid = info.ppid
    while ppid > 1 and len(chain) < _MAX_DEPTH:
        chain.append(ppid)
        if ppid == me:
            break
        parent = procs.proc_info(ppid)
        if parent is None:
            break
        ppid = parent.ppid
    return tuple(chain)
