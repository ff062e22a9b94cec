"""Optimizer hyper-parameters change only through the scheduler (``runtime.optimizer_tamper``).

Every value of every param group (lr, betas, eps, weight decay, momentum, ...) is recorded
at each optimizer step and compared at the next. Legitimate changes are the scheduler's
(its ``last_epoch`` moved since the last optimizer step: nothing of the scheduler is
patched or wrapped, so its ``state_dict`` stays picklable) and those made inside
``guard.authorized()``; anything else, from any code path, is tampering.

The scheduler itself is not trusted either: for the schedulers whose value is a formula
of the step (``StepLR``, ``MultiStepLR``, ``ExponentialLR``, ``LinearLR``, ``ConstantLR``,
``PolynomialLR``, ``CosineAnnealingLR``, ``CosineAnnealingWarmRestarts``, ``LambdaLR``,
``SequentialLR`` of those) the expected learning rate is recomputed here from the base
learning rates and ``last_epoch`` and compared with what ``step()`` set, within a relative
``1e-6`` (torch computes some of these recursively, so the last digits drift; a 1%
change is four orders of magnitude above that), and only ``lr`` may move with it. Other
schedulers (``OneCycleLR`` also cycles momentum) are observed: any change made in a step
in which they stepped is accepted.
A user who sets the learning rate by hand each step passes ``scheduler=`` a callable
``step -> lr`` instead.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.base import Check, GuardContext

__all__ = ["HyperCheck", "expected_lrs"]

_SKIP = {"params"}
_CYCLED = {"lr", "momentum", "betas"}  # what OneCycleLR / CyclicLR move besides lr
_REL = 1e-6


class HyperCheck(Check):
    name = "hyper"

    def __init__(self) -> None:
        self._recorded: list[dict[str, Any]] = []
        self._params: list[tuple[int, ...]] = []
        self._scheduler: Any = None
        self._epoch: Any = None
        self._fn: Callable[[int], Any] | None = None

    def attach(self, ctx: GuardContext) -> None:
        sched = ctx.scheduler
        if sched is not None and hasattr(sched, "last_epoch") and hasattr(sched, "optimizer"):
            self._scheduler = sched
        elif callable(sched):
            self._fn = sched
        self.rebaseline(ctx)
        self._epoch = None  # check what the scheduler set at construction at step 1

    def rebaseline(self, ctx: GuardContext) -> None:
        groups = ctx.optimizer.param_groups
        self._recorded = [_values(g) for g in groups]
        self._params = [tuple(id(p) for p in g["params"]) for g in groups]
        self._epoch = getattr(self._scheduler, "last_epoch", None)

    def before_step(self, ctx: GuardContext) -> None:
        if ctx.is_authorized:
            return
        groups = ctx.optimizer.param_groups
        if [tuple(id(p) for p in g["params"]) for g in groups] != self._params:
            ctx.emit(
                Rule.OPTIMIZER_TAMPER,
                Severity.CRITICAL,
                "the optimizer's parameter groups changed (parameters added, removed or "
                "swapped) outside guard.authorized()",
                where="optimizer.param_groups",
                evidence={"groups_before": len(self._params), "groups_now": len(groups)},
            )
            self.rebaseline(ctx)
            return
        scheduled: set[str] = set()
        if self._scheduler is not None and self._scheduler.last_epoch != self._epoch:
            self._epoch = self._scheduler.last_epoch
            scheduled = self._check_schedule(ctx, groups)
        if self._fn is not None:
            self._expect_fn(ctx, groups)
            scheduled = {"lr"}
        for gi, group in enumerate(groups):
            now = _values(group)
            before = self._recorded[gi]
            for key in sorted(set(now) | set(before)):
                if "*" in scheduled or key in scheduled:
                    continue
                if not _same(before.get(key), now.get(key)):
                    ctx.emit(
                        Rule.OPTIMIZER_TAMPER,
                        Severity.CRITICAL,
                        f"optimizer param_groups[{gi}]['{key}'] changed from "
                        f"{before.get(key)!r} to {now.get(key)!r} outside the scheduler "
                        "and outside guard.authorized()",
                        where=f"optimizer.param_groups[{gi}].{key}",
                        evidence={"group": gi, "key": key, "before": before.get(key),
                                  "now": now.get(key)},
                    )  # fmt: skip
            self._recorded[gi] = now

    # -- the scheduler -------------------------------------------------------------------

    def _check_schedule(self, ctx: GuardContext, groups: list[dict[str, Any]]) -> set[str]:
        """The scheduler stepped since the last optimizer step: check what it set against
        its formula, and say which keys it may have changed (all, for schedulers that are
        not a formula: they are observed, not verified)."""
        expected = expected_lrs(self._scheduler)
        if expected is None:
            return {"*"}
        name = type(self._scheduler).__name__
        for gi, (group, want) in enumerate(zip(groups, expected, strict=False)):
            got = float(group["lr"])
            if not _close(got, want):
                ctx.emit(
                    Rule.OPTIMIZER_TAMPER,
                    Severity.CRITICAL,
                    f"param_groups[{gi}]['lr'] is {got!r}, but {name}'s schedule gives "
                    f"{want!r} at epoch {self._epoch} (changed out of band, or the "
                    "scheduler's code was)",
                    where=f"optimizer.param_groups[{gi}].lr",
                    evidence={"group": gi, "lr": got, "expected": want,
                              "scheduler": name, "last_epoch": self._epoch},
                )  # fmt: skip
        return _CYCLED if name == "OneCycleLR" else {"lr"}

    def _expect_fn(self, ctx: GuardContext, groups: list[dict[str, Any]]) -> None:
        assert self._fn is not None
        want = self._fn(ctx.current_step)
        wants = list(want) if isinstance(want, (list, tuple)) else [want] * len(groups)
        for gi, (group, w) in enumerate(zip(groups, wants, strict=False)):
            got = float(group["lr"])
            if not _close(got, float(w)):
                ctx.emit(
                    Rule.OPTIMIZER_TAMPER,
                    Severity.CRITICAL,
                    f"param_groups[{gi}]['lr'] is {got!r} at step {ctx.current_step}, the "
                    f"user's schedule gives {float(w)!r}",
                    where=f"optimizer.param_groups[{gi}].lr",
                    evidence={"group": gi, "lr": got, "expected": float(w)},
                )


def expected_lrs(sched: Any, epoch: int | None = None) -> list[float] | None:
    """The learning rates ``sched`` should have set at ``epoch`` (its ``last_epoch`` by
    default), computed from its base learning rates; ``None`` for schedulers that are
    not a formula of the step."""
    kind = type(sched).__name__
    e = sched.last_epoch if epoch is None else epoch
    bases = [float(b) for b in getattr(sched, "base_lrs", [])]
    if kind == "SequentialLR":
        milestones = list(sched._milestones)
        idx = bisect_right(milestones, e)
        child = sched._schedulers[idx]
        start = milestones[idx - 1] if idx > 0 else 0
        return expected_lrs(child, e - start if idx > 0 else e)
    formula = _FORMULAS.get(kind)
    if formula is None or type(sched).__module__ != "torch.optim.lr_scheduler":
        return None
    return [formula(sched, base, i, e) for i, base in enumerate(bases)]


def _lambda(s: Any, base: float, i: int, e: int) -> float:
    return base * float(s.lr_lambdas[i](e))


def _multistep(s: Any, base: float, i: int, e: int) -> float:
    hits = sum(count for m, count in s.milestones.items() if m <= e)
    return float(base * float(s.gamma) ** hits)


def _linear(s: Any, base: float, i: int, e: int) -> float:
    frac = min(s.total_iters, e) / s.total_iters
    return float(base * (s.start_factor + (s.end_factor - s.start_factor) * frac))


def _cosine(s: Any, base: float, i: int, e: int) -> float:
    return float(s.eta_min + (base - s.eta_min) * (1 + math.cos(math.pi * e / s.T_max)) / 2)


def _warm_restarts(s: Any, base: float, i: int, e: int) -> float:
    cos = 1 + math.cos(math.pi * s.T_cur / s.T_i)
    return float(s.eta_min + (base - s.eta_min) * cos / 2)


def _polynomial(s: Any, base: float, i: int, e: int) -> float:
    return float(base * (1.0 - min(s.total_iters, e) / s.total_iters) ** s.power)


def _one_cycle(s: Any, base: float, i: int, e: int) -> float:
    group = s.optimizer.param_groups[i]
    start = 0.0
    phases = s._schedule_phases
    for n, phase in enumerate(phases):
        end = phase["end_step"]
        if e <= end or n == len(phases) - 1:
            pct = float((e - start) / (end - start))
            a, b = float(group[phase["start_lr"]]), float(group[phase["end_lr"]])
            if getattr(s, "_anneal_func_type", "cos") == "linear":
                return (b - a) * pct + a
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
        start = end
    raise ValueError("OneCycleLR has no phases")


_FORMULAS: dict[str, Callable[[Any, float, int, int], float]] = {
    "OneCycleLR": _one_cycle,
    "LambdaLR": _lambda,
    "StepLR": lambda s, b, i, e: b * float(s.gamma) ** (e // s.step_size),
    "MultiStepLR": _multistep,
    "ExponentialLR": lambda s, b, i, e: b * float(s.gamma) ** e,
    "ConstantLR": lambda s, b, i, e: b * (s.factor if e < s.total_iters else 1.0),
    "LinearLR": _linear,
    "CosineAnnealingLR": _cosine,
    "CosineAnnealingWarmRestarts": _warm_restarts,
    "PolynomialLR": _polynomial,
}


def _values(group: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in group.items():
        if key in _SKIP:
            continue
        if hasattr(value, "detach"):
            value = value.detach().cpu().tolist()
        elif isinstance(value, (list, tuple)):
            value = tuple(float(v) if hasattr(v, "item") else v for v in value)
        out[key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= _REL * max(abs(got), abs(want)) + 1e-15
