"""The supervisor's live checks over the heartbeat table: a rank without a guard
(``guard.missing``), a rank that stopped making progress (``process.hang``) and a rank
much slower than the others (``process.straggler``).

Each check fires once per rank and episode (a hang re-arms when the rank moves again), and
only on evidence that cannot come from an honest run inside the configured bounds. A
straggler is judged on windows of each rank's step times past a warm-up (their lower
quartile), against the other ranks' and the job's own spread, and has to hold on three
successive heartbeats that moved on (the rule: ``guard/checks/_straggle.py``), so a
loaded machine, which slows every rank unevenly, is not a straggler.

What it trusts: the heartbeat files. A rank's step and times are what its guard wrote;
a process that forges its heartbeat can hide its own slowness or make another rank look
slow (the replica check's busy times, gathered in-band, are the second opinion). The
straggler alert is about liveness, never integrity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._straggle import Policy, Streaks, Window, slow_ranks
from trainguard.launch.heartbeats import ProcTable, RankView

__all__ = ["Raised", "Watch"]

WARMUP_STEPS = 4
"""Steps whose times are never compared: the first steps of an honest job are uneven."""
WINDOW = 8
MIN_SAMPLES = 6
POLICY = Policy(ratio=2.0, min_excess_s=0.05, spread_k=4.0, confirmations=3)
"""A window is the rank's last ``WINDOW`` step times past the warm-up; a straggler holds
on three successive heartbeats that moved on (see ``guard/checks/_straggle.py``)."""


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
        self._steps: dict[int, int] = {}
        self._streaks = Streaks(POLICY.confirmations)

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
        windows: dict[int, Window] = {}
        fresh: list[int] = []
        for rank, view in views.items():
            latest = view.latest_beat()
            step = view.step()
            if latest is None or not view.attached or step is None:
                continue
            samples = _past_warm_up(latest.samples(), step)[-WINDOW:]
            if len(samples) < MIN_SAMPLES:
                continue
            windows[rank] = Window.of(samples)
            if self._steps.get(rank) != step:
                self._steps[rank] = step
                fresh.append(rank)
        slow = slow_ranks(windows, POLICY)
        out: list[Raised] = []
        for rank in self._streaks.update(slow, fresh):
            hit, mine = slow[rank], windows[rank]
            out.append(
                Raised(
                    Rule.PROCESS_STRAGGLER,
                    Severity.MEDIUM,
                    f"rank {rank} is a straggler: its faster steps take "
                    f"{hit.level_s * 1000:.0f} ms (median {hit.median_s * 1000:.0f} ms) "
                    f"against {hit.others_s * 1000:.0f} ms on the other ranks (spread "
                    f"{hit.spread_s * 1000:.0f} ms), over {POLICY.confirmations} successive "
                    "windows",
                    rank=rank,
                    step=views[rank].step(),
                    evidence={
                        "median_s": round(hit.median_s, 6),
                        "level_s": round(hit.level_s, 6),
                        "others_level_s": round(hit.others_s, 6),
                        "spread_s": round(hit.spread_s, 6),
                        "threshold_s": round(hit.threshold_s, 6),
                        "samples": mine.count,
                        "windows": POLICY.confirmations,
                        "ranks_compared": sorted(windows),
                    },
                )
            )
        return out


def _past_warm_up(samples: list[float], step: int) -> list[float]:
    """The samples of steps after ``WARMUP_STEPS`` (the last sample is ``step``'s)."""
    first = step - len(samples) + 1
    return samples[max(0, WARMUP_STEPS + 1 - first) :]
