"""Optimizer hyper-parameters change only through a scheduler whose formula holds."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as L

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.hyper import HyperCheck, expected_lrs

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
    opt.add_param_group({"params": [extra]})
    alerts = guardkit.train(net, opt, guard, steps=2)
    assert alerts == [("runtime.optimizer_tamper", 7, "optimizer.param_groups")]


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
