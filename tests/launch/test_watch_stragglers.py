"""``process.straggler`` from the supervisor's heartbeat table, on recorded and synthetic
step times: a loaded machine is not a straggler; a rank slow on (nearly) every step is.

The Watch trusts the heartbeats' step and times, and the rule (``_straggle.py``) trusts
that a window is the rank's own recent steps past the warm-up. These tests attack exactly
that: uneven warm-ups, load spikes on one rank, a rank that stops moving, a short burst,
and the busy times the drill recorded on a loaded 2-core machine.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from trainguard.findings import Rule
from trainguard.guard.checks._straggle import Policy, Slow, Streaks, Window, slow_ranks
from trainguard.launch.heartbeats import Proc, ProcTable
from trainguard.launch.watch import Raised, Watch

# Busy times (ms) per step, steps 1-16, as the drill's heartbeats recorded them.
RECORDED_CLEAN = {
    "idle": (
        [87, 45, 29, 16, 40, 15, 24, 22, 47, 6, 5, 5, 18, 5, 5, 5],
        [115, 61, 20, 10, 75, 20, 18, 18, 18, 6, 6, 5, 16, 5, 6, 5],
    ),
    "load 6": (
        [147, 60, 100, 74, 125, 46, 14, 12, 85, 10, 9, 13, 23, 11, 14, 6],
        [326, 321, 27, 36, 44, 11, 6, 5, 27, 6, 13, 6, 36, 9, 5, 9],
    ),
    "load 17": (
        [1127, 490, 230, 309, 99, 71, 59, 80, 246, 72, 82, 68, 58, 57, 58, 77],
        [1519, 567, 196, 212, 180, 74, 64, 76, 26, 101, 67, 61, 66, 68, 68, 58],
    ),
}
RECORDED_SLEEPER = {  # rank 1 sleeps a random 50-300 ms before every step
    "idle": (
        [71, 167, 11, 6, 15, 6, 6, 5, 14, 6, 5, 8, 22, 11, 7, 5],
        [266, 214, 295, 237, 185, 211, 106, 145, 240, 112, 266, 225, 264, 234, 293, 173],
    ),
    "load 6": (
        [261, 63, 55, 21, 30, 14, 7, 6, 26, 13, 20, 11, 46, 6, 11, 12],
        [519, 242, 153, 173, 171, 155, 257, 203, 314, 134, 77, 100, 106, 204, 98, 146],
    ),
    "load 17": (
        [663, 698, 135, 59, 107, 71, 82, 53, 66, 56, 66, 57, 110, 53, 96, 42],
        [1265, 634, 325, 385, 378, 237, 135, 188, 281, 320, 222, 241, 280, 126, 248, 150],
    ),
}


def _replay(tmp_path: Path, series: Sequence[Sequence[float]], every: int = 1) -> list[Raised]:
    """Feed the Watch one heartbeat per rank every ``every`` steps (times in seconds), as
    the guard writes them (its last 16 busy times), and collect the stragglers named."""
    table = ProcTable(tmp_path)
    for rank in range(len(series)):
        boot = {"pid": 1000 + rank, "rank": rank, "rank_env": str(rank), "time": 0.0}
        table.procs[1000 + rank] = Proc(1000 + rank, boot=boot)
    watch = Watch(table, started=0.0, guard_timeout=1e9, hang_after=1e9)
    raised: list[Raised] = []
    steps = len(series[0])
    for step in range(every, steps + 1, every):
        for rank, times in enumerate(series):
            beat = {"rank": rank, "step": step, "time": float(step), "state": "attached"}
            beat.update({"busy_times": list(times[:step][-16:]), "step_times": []})
            table.procs[1000 + rank].beat = beat
            table.procs[1000 + rank].beats_seen += 1  # what a scan of a new file counts
        raised += watch.check(float(step), job_alive=True)
    assert all(r.rule is Rule.PROCESS_STRAGGLER for r in raised)
    return raised


def _seconds(ms: Sequence[int]) -> list[float]:
    return [m / 1000 for m in ms]


def _loaded(rng: random.Random, steps: int, base: float) -> list[float]:
    """An honest rank on a busy machine: slow, uneven first steps; then every step
    stretched by up to 2.5x, and one step in four preempted for up to 120 ms."""
    out = []
    for step in range(1, steps + 1):
        if step <= 5:
            out.append(rng.uniform(0.05, 0.35))
            continue
        t = base * rng.uniform(1.0, 2.5)
        if rng.random() < 0.25:
            t += rng.uniform(0.0, 0.12)
        out.append(t)
    return out


@pytest.mark.parametrize("load", sorted(RECORDED_CLEAN))
def test_recorded_clean_drill_is_silent(tmp_path: Path, load: str) -> None:
    series = [_seconds(ms) for ms in RECORDED_CLEAN[load]]
    assert _replay(tmp_path, series) == []


@pytest.mark.parametrize("load", sorted(RECORDED_SLEEPER))
def test_recorded_sleeping_rank_is_named_once(tmp_path: Path, load: str) -> None:
    series = [_seconds(ms) for ms in RECORDED_SLEEPER[load]]
    (alert,) = _replay(tmp_path, series)
    assert alert.rank == 1 and alert.step is not None and alert.step <= 16
    assert alert.evidence["level_s"] > 2 * alert.evidence["others_level_s"]
    assert alert.evidence["ranks_compared"] == [0, 1]


def test_the_warm_up_that_failed_ci_is_not_compared(tmp_path: Path) -> None:
    # 101 ms against 39 ms on the first steps, then the same pace on both ranks
    fast = [0.039] * 4 + [0.02] * 12
    slow = [0.101] * 4 + [0.021] * 12
    assert _replay(tmp_path, [fast, slow]) == []


@pytest.mark.parametrize("ranks", [2, 4])
def test_noisy_load_with_spikes_is_silent(tmp_path: Path, ranks: int) -> None:
    for seed in range(40):
        rng = random.Random(seed)
        series = [_loaded(rng, 48, base=0.01) for _ in range(ranks)]
        assert _replay(tmp_path / f"{seed}", series) == [], seed


@pytest.mark.parametrize("ranks", [2, 4])
def test_a_sustained_3x_rank_is_named_under_the_same_noise(tmp_path: Path, ranks: int) -> None:
    for seed in range(10):
        rng = random.Random(seed)
        series = [_loaded(rng, 48, base=0.05) for _ in range(ranks)]
        series[1] = [t * 3 if i >= 5 else t for i, t in enumerate(series[1])]
        (alert,) = _replay(tmp_path / f"{seed}", series)
        assert alert.rank == 1, seed


def test_a_short_burst_on_one_rank_is_not_a_straggler(tmp_path: Path) -> None:
    steady = [0.01] * 40
    burst = [0.01] * 20 + [0.3] * 4 + [0.01] * 16  # four slow steps: a compile, a save
    assert _replay(tmp_path, [steady, burst]) == []
    assert _replay(tmp_path / "long", [steady, [0.01] * 10 + [0.3] * 30]) != []


def test_a_rank_that_stops_moving_is_not_confirmed_by_rereading_it(tmp_path: Path) -> None:
    table = ProcTable(tmp_path)
    for rank in (0, 1):
        boot = {"pid": 1000 + rank, "rank": rank, "rank_env": str(rank), "time": 0.0}
        table.procs[1000 + rank] = Proc(1000 + rank, boot=boot)
    watch = Watch(table, started=0.0, guard_timeout=1e9, hang_after=1e9)
    for rank, times in ((0, [0.01] * 16), (1, [0.01] * 4 + [0.3] * 12)):
        body = {"rank": rank, "step": 16, "time": 16.0, "state": "attached"}
        table.procs[1000 + rank].beat = {**body, "busy_times": times}
    # the same heartbeat seen ten times is one window, not ten
    assert [watch.check(16.0 + i, job_alive=True) for i in range(10)] == [[]] * 10


def test_a_heartbeat_every_few_steps_still_names_the_straggler(tmp_path: Path) -> None:
    series = [[0.02] * 30, [0.02] * 4 + [0.2] * 26]
    (alert,) = _replay(tmp_path, series, every=3)
    assert alert.rank == 1


# -- the rule itself -------------------------------------------------------------------


def _windows(rows: Mapping[int, Sequence[float]]) -> dict[int, Window]:
    return {rank: Window.of(times) for rank, times in rows.items()}


def test_window_level_is_the_lower_quartile_and_ignores_spikes() -> None:
    w = Window.of([0.01, 0.5, 0.01, 0.4, 0.01, 0.01, 0.3, 0.01])
    assert w.level == pytest.approx(0.01) and w.count == 8
    assert Window.of([0.1, 0.2, 0.3, 0.4, 0.5]).level == pytest.approx(0.2)
    with pytest.raises(ValueError):
        Window.of([])


def test_the_jobs_own_spread_raises_the_bar() -> None:
    policy = Policy()
    quiet = _windows({0: [0.10] * 8, 1: [0.25] * 8})
    assert set(slow_ranks(quiet, policy)) == {1}
    noisy = _windows({0: [0.02, 0.10, 0.20, 0.05, 0.30, 0.08, 0.12, 0.15], 1: [0.25] * 8})
    hit = slow_ranks(noisy, policy)
    assert hit == {}  # rank 0 swings by ~100 ms a step: 250 ms is inside its noise
    # ranks spread evenly from 100 to 280 ms: one at 450 ms is inside that spread
    levels = {0: 0.10, 1: 0.16, 2: 0.22, 3: 0.28, 4: 0.45}
    assert slow_ranks(_windows({r: [v] * 8 for r, v in levels.items()}), policy) == {}
    levels[4] = 0.7
    assert set(slow_ranks(_windows({r: [v] * 8 for r, v in levels.items()}), policy)) == {4}


def test_ratio_and_minimum_excess_both_hold() -> None:
    policy = Policy()
    small = _windows({0: [0.001] * 8, 1: [0.04] * 8})  # 40x, but 39 ms
    assert slow_ranks(small, policy) == {}
    long_steps = _windows({0: [2.0] * 8, 1: [3.5] * 8})  # 1.5 s more, but 1.75x
    assert slow_ranks(long_steps, policy) == {}
    hit = slow_ranks(_windows({0: [2.0] * 8, 1: [4.5] * 8}), policy)
    assert hit[1] == Slow(1, 4.5, 4.5, 2.0, 0.0, 2.0)


def test_streaks_need_consecutive_fresh_windows_and_name_once() -> None:
    streaks = Streaks(3)
    hit = {1: Slow(1, 1.0, 1.0, 0.1, 0.0, 0.1)}
    assert streaks.update(hit, [0, 1]) == []
    assert streaks.update(hit, [0, 1]) == []
    assert streaks.update({}, [0, 1]) == []  # one ordinary window resets the streak
    assert streaks.update(hit, [0, 1]) == [] and streaks.update(hit, [0, 1]) == []
    assert streaks.update(hit, [0]) == []  # not fresh: rank 1 keeps its count of 2
    assert streaks.update(hit, [0, 1]) == [1]
    assert streaks.update(hit, [0, 1]) == []  # named once
