"""RNG state continuity: a generator put back to a state it had before (set_rng_state,
set_state on the default or a loader's generator) is runtime.rng_reseed; fork_rng, a
model without randomness, an authorized resume and DataLoader workers are silent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from trainguard.guard import Guard
from trainguard.guard.checks.rng import RngCheck

RESEED = "runtime.rng_reseed"


def _job(
    *,
    dropout: float = 0.5,
    epochs: int = 3,
    at_epoch: Callable[[int, Any], None] | None = None,
    in_step: Callable[[Any], None] | None = None,
    workers: int = 0,
    guard_hook: Callable[[Guard], None] | None = None,
) -> Guard:
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.Dropout(dropout), torch.nn.Linear(8, 1)
    )
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(3)
    data = torch.utils.data.TensorDataset(torch.randn(16, 4, generator=gen))
    loader = torch.utils.data.DataLoader(
        data, batch_size=4, shuffle=True, generator=gen, num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )  # fmt: skip
    guard = Guard(net, opt, checks=[RngCheck()], ledger=False, dataloader=loader)
    saved = {"cpu": torch.get_rng_state(), "loader": gen.get_state()}
    try:
        for epoch in range(epochs):
            if at_epoch is not None:
                at_epoch(epoch, {**saved, "gen": gen, "guard": guard})
            for (x,) in loader:
                net(x).pow(2).mean().backward()
                if in_step is not None:
                    in_step(net)
                opt.step()
                opt.zero_grad()
                guard.step()
    finally:
        guard.close()
    return guard


def _alerts(guard: Guard) -> list[tuple[str, int | None, str, str]]:
    return [(a.rule.value, a.step, a.finding.location.path, a.severity.name) for a in guard.alerts]


# -- states put back ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "restore",
    [
        lambda s: torch.set_rng_state(s["cpu"]),
        lambda s: torch.default_generator.set_state(s["cpu"]),
        lambda s: torch.random.set_rng_state(s["cpu"]),
    ],
    ids=["torch.set_rng_state", "default_generator.set_state", "torch.random"],
)
def test_the_cpu_state_rolled_back_each_epoch_is_caught(restore: Callable[[Any], None]) -> None:
    def rollback(epoch: int, s: Any) -> None:
        if epoch:
            restore(s)

    guard = _job(at_epoch=rollback)
    assert _alerts(guard) == [(RESEED, 5, "rng_state.cpu", "HIGH")]  # epoch 2's first step
    evidence = guard.alerts[0].finding.evidence
    assert (evidence["first_seen_step"], evidence["step"]) == (0, 5)  # as at attach


def test_the_loader_generator_rolled_back_is_caught_at_the_pass_start() -> None:
    def rollback(epoch: int, s: Any) -> None:
        s["gen"].set_state(s["loader"])  # the same order every epoch

    guard = _job(dropout=0.0, at_epoch=rollback)
    assert _alerts(guard) == [(RESEED, 5, "rng_state.dataloader.generator", "HIGH")]
    assert guard.alerts[0].finding.evidence["observed_at"] == "the start of a pass over the data"


def test_a_state_put_back_mid_epoch_is_caught() -> None:
    kept: list[torch.Tensor] = []

    def rewind(net: Any) -> None:
        if len(kept) < 2:
            kept.append(torch.get_rng_state())
        else:
            torch.set_rng_state(kept[0])

    guard = _job(epochs=1, in_step=rewind)
    assert [(r, w, sev) for r, _, w, sev in _alerts(guard)] == [(RESEED, "rng_state.cpu", "HIGH")]


# -- honest ------------------------------------------------------------------------------


def test_fork_rng_around_an_eval_pass_every_step_is_silent() -> None:
    def evaluate(net: Any) -> None:
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(0)  # a deterministic evaluation, reseeded inside the fork
            net(torch.randn(4, 4))

    assert _alerts(_job(in_step=evaluate)) == []
    assert _alerts(_job(dropout=0.0, in_step=evaluate)) == []


def test_isolate_rng_by_hand_and_no_randomness_are_silent() -> None:
    def isolated(net: Any) -> None:
        state = torch.get_rng_state()
        torch.rand(8)
        torch.set_rng_state(state)

    assert _alerts(_job(in_step=isolated)) == []
    assert _alerts(_job(dropout=0.0, epochs=2)) == []


def test_an_authorized_resume_restoring_the_state_is_silent() -> None:
    def resume(epoch: int, s: Any) -> None:
        if epoch == 1:
            with s["guard"].authorized("resume from the checkpoint of epoch 0"):
                torch.set_rng_state(s["cpu"])
                s["gen"].set_state(s["loader"])

    assert _alerts(_job(at_epoch=resume)) == []


def test_dataloader_workers_are_silent() -> None:
    assert _alerts(_job(workers=2)) == []


def test_the_loader_wrapper_comes_off_exactly() -> None:
    original = torch.utils.data.DataLoader.__dict__["__iter__"]
    _job(epochs=1)
    assert torch.utils.data.DataLoader.__dict__["__iter__"] is original
