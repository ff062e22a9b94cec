"""Optimizer hyper-parameters change only through a scheduler whose formula holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as L

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.hyper import HyperCheck, expected_lrs
from trainguard.ledger import read_records

SCHEDULERS: dict[str, Callable[[Any], Any]] = {
    "StepLR": lambda o: L.StepLR(o, 30, 0.5),
    "MultiStepLR": lambda o: L.MultiStepLR(o, [50, 100, 100], 0.3),
    "ExponentialLR": lambda o: L.ExponentialLR(o, 0.99),
    "LinearLR": lambda o: L.LinearLR(o, 0.1, 1.0, 40),
    "ConstantLR": lambda o: L.ConstantLR(o, 0.5, 20),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, 300, 1e-5),
    "CosineAnnealingLR past T_max": lambda o: L.CosineAnnealingLR(o, 100),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, 37, 2),
    "PolynomialLR": lambda o: L.PolynomialLR(o, 250, 2.0),
    "LambdaLR warm-up cosine": lambda o: L.LambdaLR(
        o, lambda e: min(1, (e + 1) / 20) * 0.5 * (1 + math.cos(math.pi * e / 300))
    ),
    "SequentialLR": lambda o: L.SequentialLR(
        o, [L.LinearLR(o, 0.01, 1.0, 30), L.CosineAnnealingLR(o, 270)], [30]
    ),
    "OneCycleLR": lambda o: L.OneCycleLR(o, 0.5, total_steps=310),
    "CyclicLR (observed)": lambda o: L.CyclicLR(o, 0.01, 0.1, 25),
    "MultiplicativeLR (observed)": lambda o: L.MultiplicativeLR(o, lambda e: 0.99),
}


def _run(make: Callable[[Any], Any], steps: int = 300, attacks: Any = None) -> list[Any]:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = make(opt)
    guard = Guard(net, opt, scheduler=sched, checks=[HyperCheck()], ledger=False)
    alerts = guardkit.train(
        net, opt, guard, steps=steps, scheduler=sched,
        attacks={k: (lambda f=f: f(opt)) for k, f in (attacks or {}).items()},
    )  # fmt: skip
    guard.close()
    return alerts


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_honest_schedules_never_alarm(name: str) -> None:
    assert _run(SCHEDULERS[name]) == []


def _bump_lr(opt: Any) -> None:
    opt.param_groups[0]["lr"] *= 1.01


@pytest.mark.parametrize("name", ["StepLR", "LambdaLR warm-up cosine", "OneCycleLR"])
def test_lr_times_1_01_is_caught_at_its_step(name: str) -> None:
    alerts = _run(SCHEDULERS[name], steps=12, attacks={7: _bump_lr})
    assert ("runtime.optimizer_tamper", 7, "optimizer.param_groups[0].lr") in alerts
    assert {step for _, step, _ in alerts} == {7}


@pytest.mark.parametrize(
    ("key", "value"),
    [("weight_decay", 0.5), ("momentum", 0.95), ("dampening", 0.1), ("nesterov", True)],
)
def test_other_hyper_parameters(key: str, value: Any) -> None:
    def change(opt: Any) -> None:
        opt.param_groups[0][key] = value

    alerts = _run(SCHEDULERS["StepLR"], steps=12, attacks={9: change})
    assert alerts == [("runtime.optimizer_tamper", 9, f"optimizer.param_groups[0].{key}")]


def test_a_patched_scheduler_is_caught() -> None:
    original = L.LambdaLR.get_lr

    def skewed(self: Any) -> list[float]:
        return [x * 1.01 for x in original(self)]

    L.LambdaLR.get_lr = skewed  # type: ignore[method-assign]
    try:
        alerts = _run(SCHEDULERS["LambdaLR warm-up cosine"], steps=6)
    finally:
        L.LambdaLR.get_lr = original  # type: ignore[method-assign]
    assert alerts[0] == ("runtime.optimizer_tamper", 1, "optimizer.param_groups[0].lr")


def test_added_param_group_and_authorized_edit() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = Guard(net, opt, checks=[HyperCheck()], ledger=False)
    extra = torch.nn.Parameter(torch.zeros(3))

    def by_hand() -> None:
        with guard.authorized("lower the LR by hand"):
            opt.param_groups[0]["lr"] = 5e-4

    assert guardkit.train(net, opt, guard, steps=6, attacks={3: by_hand}) == []
    opt.add_param_group({"params": [extra]})  # appended groups are honest (an event)
    assert guardkit.train(net, opt, guard, steps=2) == []

    def swap() -> None:  # the optimizer now updates a tensor the model does not use
        opt.param_groups[0]["params"][0] = torch.nn.Parameter(torch.zeros(32, 16))

    alerts = guardkit.train(net, opt, guard, steps=2, attacks={2: swap})
    assert alerts == [("runtime.optimizer_tamper", 10, "optimizer.param_groups")]


def test_a_removed_group_is_caught_and_an_added_one_still_checked() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net[0].parameters(), lr=0.1)  # type: ignore[index]
    sched = L.StepLR(opt, 3, 0.5)
    guard = Guard(net, opt, scheduler=sched, checks=[HyperCheck()], ledger=False)
    opt.add_param_group({"params": list(net[2].parameters()), "lr": 0.01})  # type: ignore[index]

    def decay() -> None:  # the new group is held to its values like the others
        opt.param_groups[1]["weight_decay"] = 0.1

    def drop() -> None:
        del opt.param_groups[0]

    alerts = guardkit.train(net, opt, guard, steps=7, scheduler=sched, attacks={3: decay, 7: drop})
    assert alerts == [
        ("runtime.optimizer_tamper", 3, "optimizer.param_groups[1].weight_decay"),
        ("runtime.optimizer_tamper", 7, "optimizer.param_groups"),
    ]


def test_a_callable_schedule_for_hand_set_lrs() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)

    def lr_at(step: int) -> float:
        return 1e-3 * min(1.0, step / 5)

    guard = Guard(net, opt, scheduler=lr_at, checks=[HyperCheck()], ledger=False)

    def set_lr(step: int, factor: float = 1.0) -> Callable[[], None]:
        def apply() -> None:
            for g in opt.param_groups:
                g["lr"] = lr_at(step) * factor

        return apply

    attacks = {s: set_lr(s) for s in range(1, 9)}
    attacks[9] = set_lr(9, 1.01)
    alerts = guardkit.train(net, opt, guard, steps=10, attacks=attacks)
    assert alerts == [("runtime.optimizer_tamper", 9, "optimizer.param_groups[0].lr")]


def test_scheduler_state_stays_picklable(tmp_path: Any) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    sched = SCHEDULERS["SequentialLR"](opt)
    guard = Guard(net, opt, scheduler=sched, checks=[HyperCheck()], ledger=False)
    guardkit.train(net, opt, guard, steps=3, scheduler=sched)
    torch.save(sched.state_dict(), tmp_path / "scheduler.pt")
    guard.close()
    assert torch.load(tmp_path / "scheduler.pt")["last_epoch"] == sched.last_epoch


def test_expected_lrs_is_none_for_unknown_schedulers() -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    assert expected_lrs(L.ReduceLROnPlateau(opt)) is None
    assert expected_lrs(L.StepLR(opt, 2, 0.5), epoch=5) == [0.025]


# -- several schedulers on one optimizer -------------------------------------------------


class _Stepped:
    """Steps several schedulers by hand each step, in this order (the chained form)."""

    def __init__(self, *schedulers: Any, times: int = 1) -> None:
        self.schedulers, self.times = schedulers, times

    def step(self) -> None:
        for _ in range(self.times):
            for s in self.schedulers:
                s.step()


CHAINS: dict[str, Callable[[Any], tuple[Any, ...]]] = {
    "warm-up LinearLR + CosineAnnealingLR": lambda o: (
        L.LinearLR(o, 0.1, 1.0, 20), L.CosineAnnealingLR(o, 300)
    ),
    "warm-up + cosine to eta_min": lambda o: (
        L.LinearLR(o, 0.1, 1.0, 20), L.CosineAnnealingLR(o, 250, eta_min=1e-3)
    ),
    "cosine past T_max + ExponentialLR": lambda o: (
        L.CosineAnnealingLR(o, 40), L.ExponentialLR(o, 0.999)
    ),
    "LambdaLR then StepLR": lambda o: (
        L.LambdaLR(o, lambda e: 0.5 ** (e / 100)), L.StepLR(o, 30, 0.5)
    ),
    "ConstantLR + MultiStepLR + PolynomialLR": lambda o: (
        L.ConstantLR(o, 0.5, 20), L.MultiStepLR(o, [50, 120], 0.3), L.PolynomialLR(o, 280, 2.0)
    ),
    "OneCycleLR then MultiplicativeLR": lambda o: (
        L.OneCycleLR(o, 0.5, total_steps=310), L.MultiplicativeLR(o, lambda e: 0.999)
    ),
}  # fmt: skip
MODES = ["list", "reversed list", "ChainedScheduler", "not told"]


def _chain(
    make: Callable[[Any], tuple[Any, ...]],
    mode: str = "list",
    steps: int = 300,
    attacks: dict[int, Callable[[Any], None]] | None = None,
    ledger: Any = False,
    **check: Any,
) -> list[Any]:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    scheds = make(opt)
    stepper: Any = _Stepped(*scheds)
    told: Any = {"list": list(scheds), "reversed list": list(reversed(scheds))}.get(mode)
    if mode == "ChainedScheduler":
        told = stepper = L.ChainedScheduler(list(scheds))
    guard = Guard(net, opt, scheduler=told, checks=[HyperCheck(**check)], ledger=ledger)
    alerts = guardkit.train(
        net, opt, guard, steps=steps, scheduler=stepper,
        attacks={k: (lambda f=f: f(opt)) for k, f in (attacks or {}).items()},
    )  # fmt: skip
    guard.close()
    return alerts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(CHAINS))
def test_honest_chained_schedules_never_alarm(name: str, mode: str) -> None:
    assert _chain(CHAINS[name], mode) == []


def test_a_chain_stepped_twice_per_optimizer_step_is_followed() -> None:
    """accelerate steps the scheduler once per process for every optimizer step."""

    def make(o: Any) -> tuple[Any, ...]:
        return (L.LinearLR(o, 0.1, 1.0, 30), L.CosineAnnealingLR(o, 200, eta_min=1e-3))

    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scheds = make(opt)
    guard = Guard(net, opt, scheduler=scheds, checks=[HyperCheck()], ledger=False)
    stepper = _Stepped(*scheds, times=2)
    assert guardkit.train(net, opt, guard, steps=90, scheduler=stepper) == []


@pytest.mark.parametrize("mode", MODES)
def test_lr_times_1_01_under_chained_schedules_is_caught(mode: str) -> None:
    make = CHAINS["warm-up + cosine to eta_min"]
    alerts = _chain(make, mode, steps=30, attacks={7: _bump_lr})
    assert alerts == [("runtime.optimizer_tamper", 7, "optimizer.param_groups[0].lr")]


def test_a_drift_below_the_tolerance_adds_up_and_is_caught() -> None:
    """The shadow learning rate is never reset to the optimizer's: +3e-7 a step passes
    the 1e-6 tolerance at every single step, not over a few."""

    def creep(opt: Any) -> None:
        opt.param_groups[0]["lr"] *= 1 + 3e-7

    make = CHAINS["warm-up LinearLR + CosineAnnealingLR"]
    alerts = _chain(make, steps=20, attacks=dict.fromkeys(range(5, 21), creep))
    assert alerts and {where for _, _, where in alerts} == {"optimizer.param_groups[0].lr"}
    assert 6 <= min(step for _, step, _ in alerts) <= 10


def test_a_patched_scheduler_in_a_chain_is_caught() -> None:
    original = L.CosineAnnealingLR.get_lr

    def skewed(self: Any) -> list[float]:
        return [x * 1.01 for x in original(self)]

    L.CosineAnnealingLR.get_lr = skewed  # type: ignore[method-assign]
    try:
        alerts = _chain(CHAINS["warm-up LinearLR + CosineAnnealingLR"], steps=6)
    finally:
        L.CosineAnnealingLR.get_lr = original  # type: ignore[method-assign]
    assert alerts[0] == ("runtime.optimizer_tamper", 2, "optimizer.param_groups[0].lr")


@pytest.mark.parametrize("mode", ["list", "not told"])
def test_a_scheduler_made_after_the_guard_started_is_not_trusted(mode: str) -> None:
    def insider(opt: Any) -> None:
        L.LambdaLR(opt, lambda e: 1.5)  # sets lr = initial_lr * 1.5 as it is built

    alerts = _chain(CHAINS["LambdaLR then StepLR"], mode, steps=12, attacks={5: insider})
    assert ("runtime.optimizer_tamper", 5, "optimizer.param_groups[0].lr") in alerts


def test_other_hyper_parameters_under_chained_schedules() -> None:
    def change(opt: Any) -> None:
        opt.param_groups[0]["weight_decay"] = 0.5

    alerts = _chain(CHAINS["warm-up LinearLR + CosineAnnealingLR"], steps=12, attacks={9: change})
    assert alerts == [("runtime.optimizer_tamper", 9, "optimizer.param_groups[0].weight_decay")]


def _events(ledger: Path, name: str) -> list[dict[str, Any]]:
    return [r.evidence for r in read_records(ledger) if r.kind == "event" and r.message == name]


def test_schedulers_not_told_are_followed_and_recorded(tmp_path: Path) -> None:
    make = CHAINS["warm-up LinearLR + CosineAnnealingLR"]
    assert _chain(make, "not told", steps=20, ledger=tmp_path / "l") == []
    found = _events(tmp_path / "l", "hyper.untold_schedulers")
    assert sorted(found[0]["schedulers"]) == ["CosineAnnealingLR", "LinearLR"]
    # without looking for them, the same honest job is an alarm: nothing vouches for it
    alerts = _chain(make, "not told", steps=20, discover=False)
    assert alerts[0] == ("runtime.optimizer_tamper", 2, "optimizer.param_groups[0].lr")


def test_a_scheduler_it_cannot_follow_is_observed_and_said(tmp_path: Path) -> None:
    def make(o: Any) -> tuple[Any, ...]:
        return (L.LinearLR(o, 0.1, 1.0, 20), L.CyclicLR(o, 0.01, 0.1, 25))

    assert _chain(make, steps=60, ledger=tmp_path / "l") == []
    observed = _events(tmp_path / "l", "hyper.observed")
    assert [e["reason"] for e in observed] == ["CyclicLR is not a schedule trainguard recomputes"]


def test_a_third_party_scheduler_without_a_counter_is_observed(tmp_path: Path) -> None:
    class TimmLike:  # sets the learning rate itself; no last_epoch, not callable
        def __init__(self, opt: Any) -> None:
            self.opt, self.updates = opt, 0

        def step(self) -> None:
            self.updates += 1
            for g in self.opt.param_groups:
                g["lr"] = 0.1 * 0.97**self.updates

    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = TimmLike(opt)
    guard = Guard(net, opt, scheduler=sched, checks=[HyperCheck()], ledger=tmp_path / "l")
    assert guardkit.train(net, opt, guard, steps=10, scheduler=sched) == []
    guard.close()
    assert _events(tmp_path / "l", "hyper.observed")[0]["schedulers"] == []


def test_without_any_scheduler_an_lr_change_is_caught() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    elsewhere = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    other = L.StepLR(elsewhere, 1, 0.5)  # a scheduler of another optimizer vouches nothing
    guard = Guard(net, opt, scheduler=other, checks=[HyperCheck()], ledger=False)
    alerts = guardkit.train(net, opt, guard, steps=6, attacks={4: lambda: _bump_lr(opt)})
    assert alerts == [("runtime.optimizer_tamper", 4, "optimizer.param_groups[0].lr")]


def test_an_authorized_lr_edit_under_chained_schedules_is_the_new_start() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    scheds = CHAINS["warm-up LinearLR + CosineAnnealingLR"](opt)
    guard = Guard(net, opt, scheduler=scheds, checks=[HyperCheck()], ledger=False)

    def halve() -> None:
        with guard.authorized("halve the LR by hand"):
            opt.param_groups[0]["lr"] /= 2

    attacks = {4: halve, 9: lambda: _bump_lr(opt)}
    alerts = guardkit.train(net, opt, guard, steps=12, scheduler=_Stepped(*scheds), attacks=attacks)
    assert alerts == [("runtime.optimizer_tamper", 9, "optimizer.param_groups[0].lr")]
