"""The supervisor's live checks over the heartbeat table: a rank without a guard
(``guard.missing``), a rank that stopped making progress (``process.hang``) and a rank
much slower than the others (``process.straggler``).

Each check fires once per rank and episode (a hang re-arms when the rank moves again), and
only on evidence that cannot come from an honest run inside the configured bounds: a
straggler needs several post-warm-up samples on at least two ranks and has to hold on
three successive heartbeats of the slow rank.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.launch.heartbeats import ProcTable, RankView

__all__ = ["Raised", "Watch"]

MIN_SAMPLES = 6
STRAGGLER_RATIO = 2.0
STRAGGLER_MIN_GAP_S = 0.05
STRAGGLER_CONFIRMATIONS = 3


@dataclass(frozen=True, slots=True)
class Raised:
    """An alert the supervisor itself raises (the ledger gets it first)."""

    rule: Rule
    severity: Severity
    message: str
    rank: int | None = None
    step: int | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)


class Watch:
    def __init__(
        self,
        table: ProcTable,
        *,
        started: float,
        guard_timeout: float,
        hang_after: float,
        closed_after: float | None = None,
    ) -> None:
        self.table = table
        self.started = started
        self.guard_timeout = guard_timeout
        self.closed_after = guard_timeout if closed_after is None else closed_after
        self.hang_after = hang_after
        self._missing: set[tuple[int | None, str]] = set()
        self._hung: dict[int, float] = {}
        self._straggling: dict[int, tuple[int, int]] = {}
        self._straggler_done: set[int] = set()

    def check(self, now: float, *, job_alive: bool) -> list[Raised]:
        views = self.table.ranks()
        out: list[Raised] = []
        if not self.table.procs and job_alive:  # an agent waiting for its peers is fine
            out += self._no_bootstrap(now)
        for view in views.values():
            out += self._guard_missing(view, now)
            out += self._hang(view, now)
        out += self._stragglers(views)
        return out

    # -- guard.missing ------------------------------------------------------------------

    def _no_bootstrap(self, now: float) -> list[Raised]:
        waited = now - self.started
        if waited < self.guard_timeout or (None, "boot") in self._missing:
            return []
        self._missing.add((None, "boot"))
        return [
            Raised(
                Rule.GUARD_MISSING,
                Severity.HIGH,
                f"no Python process of the job started with the trainguard bootstrap and no "
                f"guard reported in {waited:.0f} s (PYTHONPATH cleared, python -I/-S, or not "
                "a Python job?)",
                evidence={"waited_s": round(waited, 3), "reason": "no_bootstrap"},
            )
        ]

    def _guard_missing(self, view: RankView, now: float) -> list[Raised]:
        if not view.covered:
            if (view.rank, "never") in self._missing:
                return []
            for proc in view.primaries:
                born = proc.booted_at
                until = now if proc.alive else (proc.ended_at or now)
                if born is None or until - born < self.guard_timeout:
                    continue
                self._missing.add((view.rank, "never"))
                argv = (proc.boot or {}).get("argv")
                return [
                    Raised(
                        Rule.GUARD_MISSING,
                        Severity.HIGH,
                        f"rank {view.rank} (pid {proc.pid}) ran {until - born:.0f} s without "
                        "attaching a trainguard Guard",
                        rank=view.rank,
                        evidence={
                            "pid": proc.pid,
                            "argv": argv,
                            "seconds": round(until - born, 3),
                            "reason": "never_attached",
                            "boot_errors": (proc.boot or {}).get("errors"),
                        },
                    )
                ]
            return []
        latest = view.latest_beat()
        if view.attached or latest is None or (view.rank, "closed") in self._missing:
            return []
        closed_at = latest.beat_time or now
        running = [p for p in view.primaries if p.alive]
        if not running or now - closed_at < self.closed_after:
            return []
        self._missing.add((view.rank, "closed"))
        return [
            Raised(
                Rule.GUARD_MISSING,
                Severity.MEDIUM,  # honest jobs evaluate and save after training, unguarded
                f"rank {view.rank}: the guard closed {now - closed_at:.0f} s ago but pid "
                f"{running[0].pid} keeps running unguarded",
                rank=view.rank,
                step=view.step(),
                evidence={
                    "pid": running[0].pid,
                    "closed_at": closed_at,
                    "reason": "closed_while_running",
                },
            )
        ]

    # -- process.hang -------------------------------------------------------------------

    def _hang(self, view: RankView, now: float) -> list[Raised]:
        if not view.attached:
            return []
        last = max((p.beat_time or 0.0) for p in view.members if p.beat is not None)
        if now - last < self.hang_after or self._hung.get(view.rank) == last:
            return []
        self._hung[view.rank] = last
        latest = view.latest_beat()
        pid = latest.pid if latest else None
        return [
            Raised(
                Rule.PROCESS_HANG,
                Severity.MEDIUM,
                f"rank {view.rank} (pid {pid}) made no progress for {now - last:.0f} s "
                f"(last step {view.step()})",
                rank=view.rank,
                step=view.step(),
                evidence={"pid": pid, "seconds": round(now - last, 3), "last_beat": last},
            )
        ]

    # -- process.straggler --------------------------------------------------------------

    def _stragglers(self, views: Mapping[int, RankView]) -> list[Raised]:
        medians: dict[int, tuple[float, int, int]] = {}
        for rank, view in views.items():
            latest = view.latest_beat()
            if latest is None or not view.attached:
                continue
            samples = latest.samples()
            if len(samples) >= MIN_SAMPLES:
                medians[rank] = (statistics.median(samples), len(samples), latest.beats_seen)
        out: list[Raised] = []
        if len(medians) < 2:
            return out
        for rank, (mine, count, beats) in medians.items():
            others = statistics.median(m for r, (m, _, _) in medians.items() if r != rank)
            slow = mine > STRAGGLER_RATIO * others and mine - others > STRAGGLER_MIN_GAP_S
            if not slow or rank in self._straggler_done:
                self._straggling.pop(rank, None)
                continue
            seen, last_beats = self._straggling.get(rank, (0, -1))
            if beats != last_beats:
                seen += 1
            self._straggling[rank] = (seen, beats)
            if seen < STRAGGLER_CONFIRMATIONS:
                continue
            self._straggler_done.add(rank)
            out.append(
                Raised(
                    Rule.PROCESS_STRAGGLER,
                    Severity.MEDIUM,
                    f"rank {rank} is a straggler: median step {mine * 1000:.0f} ms against "
                    f"{others * 1000:.0f} ms on the other ranks ({mine / others:.1f}x)"
                    if others > 0
                    else f"rank {rank} is a straggler: median step {mine * 1000:.0f} ms",
                    rank=rank,
                    step=views[rank].step(),
                    evidence={
                        "median_s": round(mine, 6),
                        "others_median_s": round(others, 6),
                        "samples": count,
                        "ranks_compared": sorted(medians),
                    },
                )
            )
        return out
