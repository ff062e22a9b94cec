"""When is a rank a straggler (``process.straggler``)? One rule, shared by the supervisor
(per-rank step times from the heartbeats, ``launch/watch.py``) and the replica check
(per-rank busy times gathered across ranks, ``checks/replicas.py``).

Why a rule of its own: a loaded machine (other jobs, a compile, a checkpoint save) slows
every rank, unevenly from one step to the next; the first steps of any job (allocator,
DDP bucket rebuild, caches) are slow on some ranks and not others. Comparing one short
median against another called both "stragglers". Load only ever adds delay, to some
steps; a straggler (a slow node, a rank that sleeps) is slow on nearly every step. So
each rank's window of recent steps past the warm-up is summarised by its *level*, the
lower quartile (the time its faster steps take, which delays on up to three steps in
four leave alone), and a rank is slow only when its level exceeds the other ranks'
median level by all three of: ``ratio`` times, ``min_excess_s`` seconds, and
``spread_k`` times the job's own spread (the robust sigma, 1.4826 x MAD, of the other
ranks' windows, and of their levels across ranks). It is a straggler only once it
stayed slow on ``confirmations`` consecutive fresh windows. The drill's rank that sleeps
50-300 ms before each 10 ms step is caught on a 2-core machine at load 6 (and 20); a
rank that is unlucky for a few steps on a busy machine is not. The price: a rank slow on
fewer than about three steps in four is not named, nor one whose extra time per step is
under the larger of ``min_excess_s`` and the others' own spread.

What it trusts: the windows it is given. Each must hold the rank's own recent per-step
times, past the warm-up, measured the same way on every rank (busy times from the
guard's forward hook, or step times from the heartbeat), and "fresh" must mean the
rank advanced to new steps since its last window. The callers own that: they cut the
warm-up and the window, and say which ranks moved.
"""

from __future__ import annotations

import statistics
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Policy", "Slow", "Streaks", "Window", "slow_ranks"]

_MAD_TO_SIGMA = 1.4826
"""MAD times this is the standard deviation of normal noise: the usual robust sigma."""


@dataclass(frozen=True, slots=True)
class Window:
    """One rank's recent per-step times, summarised robustly."""

    median: float
    level: float
    """The lower quartile: what the rank's faster steps take."""
    sigma: float
    count: int

    @classmethod
    def of(cls, samples: Sequence[float]) -> Window:
        if not samples:
            raise ValueError("a window needs at least one sample")
        ordered = sorted(samples)
        median = statistics.median(ordered)
        at = (len(ordered) - 1) / 4  # the lower quartile, interpolated between neighbours
        low, frac = int(at), at - int(at)
        high = min(low + 1, len(ordered) - 1)
        level = ordered[low] + (ordered[high] - ordered[low]) * frac
        mad = statistics.median(abs(s - median) for s in ordered)
        return cls(median, level, _MAD_TO_SIGMA * mad, len(ordered))


@dataclass(frozen=True, slots=True)
class Policy:
    ratio: float = 2.0
    min_excess_s: float = 0.05
    spread_k: float = 4.0
    confirmations: int = 3


@dataclass(frozen=True, slots=True)
class Slow:
    """One rank's window that stood out, with the numbers that made it stand out."""

    rank: int
    level_s: float
    median_s: float
    others_s: float
    """The other ranks' median level."""
    spread_s: float
    threshold_s: float
    """The excess over ``others_s`` it had to pass: the largest of the three margins."""


def slow_ranks(windows: Mapping[int, Window], policy: Policy) -> dict[int, Slow]:
    """The ranks whose window stands out from the other ranks' (at least two ranks)."""
    out: dict[int, Slow] = {}
    if len(windows) < 2:
        return out
    for rank, mine in windows.items():
        others = [w for r, w in windows.items() if r != rank]
        ref = statistics.median(w.level for w in others)
        spread = statistics.median(w.sigma for w in others)
        if len(others) >= 2:
            across = statistics.median(abs(w.level - ref) for w in others) * _MAD_TO_SIGMA
            spread = max(spread, across)
        threshold = max(policy.min_excess_s, policy.spread_k * spread, (policy.ratio - 1) * ref)
        if mine.level - ref > threshold:
            out[rank] = Slow(rank, mine.level, mine.median, ref, spread, threshold)
    return out


class Streaks:
    """How many consecutive fresh windows each rank was slow on; a rank is named once,
    when its streak first reaches the policy's ``confirmations``."""

    def __init__(self, confirmations: int) -> None:
        self.confirmations = confirmations
        self._count: dict[int, int] = {}
        self.named: set[int] = set()

    def update(self, slow: Mapping[int, Slow], fresh: Collection[int]) -> list[int]:
        """Count the ranks in ``fresh`` (new windows); the others keep their streak."""
        out = []
        for rank in fresh:
            count = self._count.get(rank, 0) + 1 if rank in slow else 0
            self._count[rank] = count
            if count >= self.confirmations and rank not in self.named:
                self.named.add(rank)
                out.append(rank)
        return sorted(out)

    def streak(self, rank: int) -> int:
        return self._count.get(rank, 0)
