"""runtime.rng_reseed: reseeds mid-run (through the seeding functions or behind them) are
caught at the next optimizer step; seeding before the guard, authorized reseeds, fork_rng
and DataLoader workers are not alarms; the wrappers come off exactly."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.rng import RngCheck
from trainguard.ledger import read_records

RESEED = "runtime.rng_reseed"


def _run(
    attacks: dict[int, Callable[[], None]] | None = None,
    *,
    steps: int = 6,
    seed: int | None = None,
    ledger: Any = False,
) -> tuple[list[tuple[str, int | None, str]], Guard]:
    net = guardkit.model()  # seeds torch with 0 before the guard starts: fine
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[RngCheck()], ledger=ledger, seed=seed)
    try:
        return guardkit.train(net, opt, guard, steps=steps, attacks=attacks), guard
    finally:
        guard.close()


# -- reseeds mid-run ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "where"),
    [
        (lambda: torch.manual_seed(1234), "torch.manual_seed"),
        (lambda: torch.random.manual_seed(1234), "torch.random.manual_seed"),
        (lambda: torch.seed(), "torch.seed"),
        (lambda: torch.cuda.manual_seed_all(1234), "torch.cuda.manual_seed_all"),
        (lambda: random.seed(1234), "random.seed"),
        (lambda: np.random.seed(1234), "numpy.random.seed"),
    ],
    ids=["torch.manual_seed", "torch.random", "torch.seed", "cuda", "random", "numpy"],
)
def test_reseed_through_a_seeding_function(attack: Callable[[], None], where: str) -> None:
    state = random.getstate(), np.random.get_state()
    try:
        alerts, guard = _run({4: attack})
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
    assert alerts == [(RESEED, 4, where)]
    evidence = guard.alerts[0].finding.evidence
    assert "test_rng.py" in evidence["stack"]  # who did it
    assert guard.alerts[0].severity.name == "HIGH"


def test_reseed_behind_the_wrappers_is_caught_by_initial_seed() -> None:
    alerts, guard = _run({3: lambda: torch.default_generator.manual_seed(99)})
    assert alerts == [(RESEED, 3, "torch.initial_seed")]
    assert guard.alerts[0].finding.evidence["new"] == 99


def test_state_replaced_behind_the_wrappers_is_caught() -> None:
    other = torch.Generator().manual_seed(7)
    alerts, _ = _run({5: lambda: torch.random.default_generator.set_state(other.get_state())})
    assert alerts == [(RESEED, 5, "torch.initial_seed")]


def test_seed_declared_to_the_guard_must_match(tmp_path: Path) -> None:
    alerts, _ = _run(seed=1, steps=2, ledger=tmp_path / "ledger")  # the model seeded 0
    assert alerts == [(RESEED, 0, "torch.initial_seed")]
    assert [r.alert for r in read_records(tmp_path / "ledger") if r.kind == "alert"] == [RESEED]


def test_a_reseed_flood_is_one_alert_and_bounded_evidence(tmp_path: Path) -> None:
    state = random.getstate()

    def per_sample_seeding() -> None:
        for i in range(500):
            random.seed(i)

    try:
        alerts, _ = _run({2: per_sample_seeding}, steps=3, ledger=tmp_path / "ledger")
    finally:
        random.setstate(state)
    assert alerts == [(RESEED, 2, "random.seed")]
    records = read_records(tmp_path / "ledger")
    assert len([r for r in records if r.message == "rng.reseed"]) == 100
    dropped = [r.evidence for r in records if r.message == "rng.reseed_unrecorded"]
    assert [d["calls"] for d in dropped] == [400]


# -- honest runs -------------------------------------------------------------------------


def test_seed_before_the_guard_and_declared_is_silent() -> None:
    alerts, _ = _run(seed=0)
    assert alerts == []


def test_authorized_reseed_is_recorded_not_alarmed(tmp_path: Path) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[RngCheck()], ledger=tmp_path / "ledger")

    def reseed() -> None:
        with guard.authorized("new phase, new seed"):
            torch.manual_seed(5)

    alerts = guardkit.train(net, opt, guard, steps=5, attacks={3: reseed})
    guard.close()
    assert alerts == []
    events = [r.evidence for r in read_records(tmp_path / "ledger") if r.message == "rng.reseed"]
    assert [(e["function"], e["value"], e["authorized"]) for e in events] == [
        ("torch.manual_seed", 5, True)
    ]


def test_fork_rng_blocks_and_restored_states_are_silent() -> None:
    @torch.random.fork_rng()  # bound before the guard starts: not the guard's wrapper
    def decorated() -> None:
        torch.manual_seed(11)
        torch.rand(3)

    def forked() -> None:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the run's own seed, for a deterministic evaluation
            torch.rand(3)
        decorated()
        decorated()
        state = torch.get_rng_state()  # Lightning's isolate_rng, by hand
        torch.manual_seed(12)
        torch.rand(3)
        torch.set_rng_state(state)

    alerts, _ = _run({2: forked, 4: forked})
    assert alerts == []


def test_restore_does_not_excuse_a_reseed_still_in_effect() -> None:
    def reseed_then_restore_something_else() -> None:
        torch.manual_seed(21)
        torch.set_rng_state(torch.Generator().manual_seed(22).get_state())

    alerts, _ = _run({3: reseed_then_restore_something_else})
    assert alerts == [(RESEED, 3, "torch.manual_seed")]


def test_disabled_fork_rng_does_not_hide_a_reseed() -> None:
    def fake_fork() -> None:
        with torch.random.fork_rng(enabled=False):
            torch.manual_seed(10)

    alerts, _ = _run({3: fake_fork})
    assert alerts == [(RESEED, 3, "torch.manual_seed")]


def _seed_worker(worker_id: int) -> None:
    random.seed(worker_id)
    np.random.seed(worker_id)
    torch.manual_seed(worker_id)


def test_dataloader_workers_seeding_themselves_are_silent() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    data = torch.utils.data.TensorDataset(torch.randn(32, 16))
    loader = torch.utils.data.DataLoader(
        data,
        batch_size=8,
        shuffle=True,
        num_workers=2,
        worker_init_fn=_seed_worker,
        multiprocessing_context="fork",
    )
    guard = Guard(net, opt, checks=[RngCheck()], ledger=False, dataloader=loader)
    try:
        for _ in range(2):
            for (x,) in loader:
                net(x).pow(2).mean().backward()
                opt.step()
                opt.zero_grad()
                guard.step()
    finally:
        guard.close()
    assert guard.alerts == []


# -- the wrappers ------------------------------------------------------------------------


def test_close_restores_the_exact_originals() -> None:
    names = [
        (torch, "manual_seed"),
        (torch, "seed"),
        (torch.random, "manual_seed"),
        (torch.random, "seed"),
        (torch.random, "fork_rng"),
        (torch, "set_rng_state"),
        (torch.cuda, "set_rng_state"),
        (torch.cuda, "manual_seed"),
        (torch.cuda, "manual_seed_all"),
        (random, "seed"),
        (np.random, "seed"),
    ]
    before = [getattr(owner, name) for owner, name in names]
    net = guardkit.model()
    guard = Guard(net, torch.optim.SGD(net.parameters(), lr=0.1), checks=[RngCheck()], ledger=False)
    during = [getattr(owner, name) for owner, name in names]
    assert all(d is not b for d, b in zip(during, before, strict=True))
    assert torch.cuda.manual_seed is torch.cuda.random.manual_seed  # one wrapper per function
    guard.close()
    after = [getattr(owner, name) for owner, name in names]
    assert all(a is b for a, b in zip(after, before, strict=True))
    assert during[0](3) is torch.default_generator  # a stale reference still works
    assert torch.initial_seed() == 3
