"""A scheduler's fields change only inside its step(): the edits the schedule formula
cannot see (base_lrs, lambdas, last_epoch, T_max...) are caught; honest schedulers,
per-epoch stepping and an authorized load_state_dict are silent."""

from __future__ import annotations

import functools
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim import lr_scheduler as L

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.hyper import HyperCheck

TAMPER = "runtime.optimizer_tamper"
WARMUP = 5  # read by _warm_cosine as a global


def _warm_cosine(e: int, total: int = 300) -> float:
    return min(1.0, (e + 1) / WARMUP) * 0.5 * (1 + math.cos(math.pi * e / total))


def _run(
    make: Callable[[Any], Any],
    attacks: dict[int, Callable[[Any], None]] | None = None,
    steps: int = 12,
    stepper: Callable[[Any], Any] | None = None,
) -> list[tuple[str, int | None, str]]:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    sched = make(opt)
    guard = Guard(net, opt, scheduler=sched, checks=[HyperCheck()], ledger=False)
    try:
        return guardkit.train(
            net, opt, guard, steps=steps,
            scheduler=stepper(sched) if stepper else sched,
            attacks={k: (lambda f=f: f(sched)) for k, f in (attacks or {}).items()},
        )  # fmt: skip
    finally:
        guard.close()


def _lambda(o: Any) -> Any:
    return L.LambdaLR(o, _warm_cosine)


def _closure(o: Any) -> Any:
    scale = 1.0

    def lr(e: int) -> float:
        return scale * 0.99**e

    return L.LambdaLR(o, lr)


def _hf_partial(o: Any) -> Any:
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(o, num_warmup_steps=3, num_training_steps=300)


def _set_code(s: Any) -> None:
    s.lr_lambdas[0].__code__ = (lambda e, total=300: 10.0).__code__


def _set_global(s: Any) -> None:
    global WARMUP
    WARMUP = 1


def _set_cell(s: Any) -> None:
    s.lr_lambdas[0].__closure__[0].cell_contents = 10.0


def _edit_phase(s: Any) -> None:
    s._schedule_phases[0]["end_step"] = 1.0


ATTACKS: dict[str, tuple[Callable[[Any], Any], Callable[[Any], None], str]] = {
    "base_lrs *= 10": (
        lambda o: L.StepLR(o, 3, 0.5), lambda s: s.base_lrs.__setitem__(0, 1.0), "base_lrs"
    ),
    "lambda replaced": (_lambda, lambda s: s.lr_lambdas.__setitem__(0, lambda e: 10.0),
                        "lr_lambdas"),
    "lambda code rebound": (_lambda, _set_code, "lr_lambdas"),
    "lambda defaults rebound": (
        _lambda, lambda s: setattr(s.lr_lambdas[0], "__defaults__", (3,)), "lr_lambdas"
    ),
    "global the lambda reads": (_lambda, _set_global, "lr_lambdas"),
    "closure cell": (_closure, _set_cell, "lr_lambdas"),
    "HF partial keywords": (
        _hf_partial, lambda s: s.lr_lambdas[0].keywords.update(num_training_steps=30),
        "lr_lambdas",
    ),
    "last_epoch += 100": (lambda o: L.CosineAnnealingLR(o, 300),
                          lambda s: setattr(s, "last_epoch", s.last_epoch + 100), "last_epoch"),
    "T_max": (lambda o: L.CosineAnnealingLR(o, 300), lambda s: setattr(s, "T_max", 30), "T_max"),
    "gamma": (lambda o: L.ExponentialLR(o, 0.99), lambda s: setattr(s, "gamma", 1.5), "gamma"),
    "milestones": (
        lambda o: L.MultiStepLR(o, [50, 100]), lambda s: s.milestones.update([4]), "milestones"
    ),
    "OneCycle total_steps": (
        lambda o: L.OneCycleLR(o, 0.5, total_steps=100),
        lambda s: setattr(s, "total_steps", 20), "total_steps",
    ),
    "OneCycle phases": (lambda o: L.OneCycleLR(o, 0.5, total_steps=100), _edit_phase,
                        "_schedule_phases"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_a_field_edited_before_step_is_caught(name: str) -> None:
    global WARMUP
    make, attack, key = ATTACKS[name]
    try:
        alerts = _run(make, {6: attack})
    finally:
        WARMUP = 5
    kind = type(make(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1))).__name__
    assert (TAMPER, 6, f"scheduler.{kind}.{key}") in alerts
    assert {step for _, step, _ in alerts} == {6}


def test_base_lrs_edited_with_initial_lr_is_caught_on_both() -> None:
    def both(s: Any) -> None:
        s.base_lrs[0] *= 10
        s.optimizer.param_groups[0]["initial_lr"] *= 10

    alerts = _run(lambda o: L.StepLR(o, 3, 0.5), {4: both})
    assert (TAMPER, 4, "scheduler.StepLR.base_lrs") in alerts
    assert (TAMPER, 4, "optimizer.param_groups[0].initial_lr") in alerts


def test_a_sequential_child_edited_is_named() -> None:
    def make(o: Any) -> Any:
        return L.SequentialLR(o, [L.LinearLR(o, 0.1, 1.0, 5), L.CosineAnnealingLR(o, 200)], [5])

    alerts = _run(make, {8: lambda s: setattr(s._schedulers[1], "T_max", 10)})
    assert (TAMPER, 8, "scheduler.CosineAnnealingLR.T_max") in alerts
    assert {step for _, step, _ in alerts} == {8}


def test_a_step_that_bypasses_the_wrapper_and_restores_is_caught() -> None:
    """The insider edits, steps with the original function, then puts the field back."""

    def sneak(s: Any) -> None:
        s.base_lrs[0] *= 10
        type(s).step.__wrapped__(s)
        s.base_lrs[0] /= 10

    alerts = _run(lambda o: L.ExponentialLR(o, 0.99), {5: sneak})
    assert (TAMPER, 5, "scheduler.ExponentialLR.last_epoch") in alerts


def test_load_state_dict_outside_authorized_is_caught_inside_is_silent() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = L.CosineAnnealingLR(opt, 100)
    guard = Guard(net, opt, scheduler=sched, checks=[HyperCheck()], ledger=False)
    saved = sched.state_dict(), opt.state_dict()

    def rewind() -> None:
        with guard.authorized("resume the schedule from a checkpoint"):
            sched.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])

    def sneak() -> None:
        sched.load_state_dict({**sched.state_dict(), "T_max": 10})

    try:
        assert guardkit.train(net, opt, guard, steps=6, scheduler=sched, attacks={4: rewind}) == []
        alerts = guardkit.train(net, opt, guard, steps=3, scheduler=sched, attacks={2: sneak})
    finally:
        guard.close()
    assert (TAMPER, 8, "scheduler.CosineAnnealingLR.T_max") in alerts
    assert {step for _, step, _ in alerts} == {8}


# -- honest ------------------------------------------------------------------------------


class _Plateau:
    """ReduceLROnPlateau stepped with a loss that stalls: best/num_bad_epochs move."""

    def __init__(self, sched: Any) -> None:
        self.sched, self.n = sched, 0

    def step(self) -> None:
        self.n += 1
        self.sched.step(1.0 if self.n > 3 else 1.0 / self.n)


class _PerEpoch:
    """Lightning's interval="epoch": one step() every 4 optimizer steps."""

    def __init__(self, sched: Any) -> None:
        self.sched, self.n = sched, 0

    def step(self) -> None:
        self.n += 1
        if self.n % 4 == 0:
            self.sched.step()


class _Fractional:
    """CosineAnnealingWarmRestarts stepped with fractional epochs (its documented use)."""

    def __init__(self, sched: Any) -> None:
        self.sched, self.n = sched, 0

    def step(self) -> None:
        self.n += 1
        self.sched.step(self.n / 3)


class _Warm(L.LambdaLR):
    """A user's subclass whose step() calls super().step()."""

    def step(self, epoch: Any = None) -> None:
        super().step(epoch)


HONEST: dict[str, tuple[Callable[[Any], Any], Any]] = {
    "ReduceLROnPlateau": (lambda o: L.ReduceLROnPlateau(o, patience=2), _Plateau),
    "per-epoch CosineAnnealingLR": (lambda o: L.CosineAnnealingLR(o, 10), _PerEpoch),
    "CosineAnnealingWarmRestarts fractional": (
        lambda o: L.CosineAnnealingWarmRestarts(o, 2),
        _Fractional,
    ),
    "HF cosine with warm-up": (_hf_partial, None),
    "LambdaLR closure": (_closure, None),
    "subclass calling super().step()": (lambda o: _Warm(o, _warm_cosine), None),
    "ChainedScheduler": (
        lambda o: L.ChainedScheduler([L.ConstantLR(o, 0.5, 4), L.ExponentialLR(o, 0.9)]),
        None,
    ),
    "OneCycleLR": (lambda o: L.OneCycleLR(o, 0.5, total_steps=100), None),
}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_schedulers_are_silent(name: str) -> None:
    make, stepper = HONEST[name]
    assert _run(make, steps=20, stepper=stepper) == []


def test_the_wrapper_is_on_the_class_and_comes_off_exactly(tmp_path: Any) -> None:
    originals = {c: c.__dict__["step"] for c in (L.LRScheduler, L.SequentialLR)}
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = L.SequentialLR(opt, [L.LinearLR(opt, 0.1, 1.0, 3), L.StepLR(opt, 2)], [3])
    guard = Guard(net, opt, scheduler=sched, checks=[HyperCheck()], ledger=False)
    try:
        assert all(c.__dict__["step"] is not f for c, f in originals.items())
        guardkit.train(net, opt, guard, steps=4, scheduler=sched)
        pickle.dumps(sched.state_dict())  # nothing of ours on the instance
        assert "step" not in vars(sched)
    finally:
        guard.close()
    assert all(c.__dict__["step"] is f for c, f in originals.items())


def test_freeze_follows_partials_and_nested_closures() -> None:
    from trainguard.guard.checks.sched_state import freeze

    def outer(k: float) -> Callable[[int], float]:
        return lambda e: k * e

    assert freeze(outer(1.0)) == freeze(outer(1.0))
    assert freeze(outer(1.0)) != freeze(outer(2.0))
    part = functools.partial(_warm_cosine, total=10)
    assert freeze(part) != freeze(functools.partial(_warm_cosine, total=11))
    assert freeze(torch.tensor([1.0, 2.0])) == ("tensor", "torch.float32", (1.0, 2.0))
