"""Optimizer hyper-parameters change only through the scheduler (``runtime.optimizer_tamper``).

Every value of every param group (lr, betas, eps, weight decay, momentum, ...) is recorded
at each optimizer step and compared at the next. Legitimate changes are the schedulers'
(a scheduler's ``last_epoch`` moved since the last optimizer step: nothing of a scheduler
is patched or wrapped, so its ``state_dict`` stays picklable) and those made inside
``guard.authorized()``; anything else, from any code path, is tampering. Parameter groups
appended by ``add_param_group`` are accepted (the guard records a ``guard.params_changed``
event and watches the new parameters); groups removed or parameters swapped are not.

The schedulers themselves are not trusted either; their learning rate is recomputed here
(``trainguard.guard.checks.schedules``, plain Python) and compared with what ``step()``
set, within a relative ``1e-6`` (torch computes some schedules recursively, so the last
digits drift; a 1% change is four orders of magnitude above that), and only ``lr`` (and
``OneCycleLR``'s momentum) may move with them:

* one scheduler whose value is a formula of the step (``StepLR``, ``MultiStepLR``,
  ``ExponentialLR``, ``LinearLR``, ``ConstantLR``, ``PolynomialLR``, ``CosineAnnealingLR``,
  ``CosineAnnealingWarmRestarts``, ``LambdaLR``, ``OneCycleLR``, ``SequentialLR`` of those):
  its closed form at ``last_epoch``, from the base learning rates;
* several schedulers stepped on one optimizer (``scheduler=[warmup, cosine]`` stepped by
  hand, or a ``ChainedScheduler``): each step's effect composed on a shadow learning
  rate (``schedules.Chain``), which never takes the optimizer's value except at the start
  and after an ``authorized()`` block;
* a callable ``step -> lr`` passed as ``scheduler=``, for learning rates set by hand.

What the check trusts, named:

* the schedulers that exist when the guard starts and drive its optimizer: those passed as
  ``scheduler=`` and, found through the garbage collector (``schedules.untold``), those
  that were not passed (recorded as a ``hyper.untold_schedulers`` event). One created
  after the guard started is not trusted: its changes are tampering;
* each scheduler's own attributes (``gamma``, ``T_max``, ``lr_lambdas``...) and how often
  it is stepped (an extra ``step()`` is a schedule, not an edit);
* a scheduler it cannot recompute (``CyclicLR``, ``ReduceLROnPlateau``, a third-party or
  subclassed one, one without ``last_epoch``, an epoch that jumps backwards): every change
  made in a step in which it stepped is accepted. That is *observed, not predicted*, and
  said once per reason with a ``hyper.observed`` event, never an alert.

The schedulers' own fields are not taken on trust between their steps: a field the formula
reads (``base_lrs``, ``lr_lambdas``, ``last_epoch``, ``T_max``...) or a group's
``initial_lr`` changed outside ``step()`` is tampering (``schedules``' sibling
``sched_state`` says what it pins and what it still trusts).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.base import Check, GuardContext
from trainguard.guard.checks.sched_state import SchedulerState
from trainguard.guard.checks.schedules import Chain, close, cycled, expected_lrs, flatten, untold
from trainguard.guard.wrapped import unwrap_optimizer

__all__ = ["HyperCheck", "expected_lrs"]

_SKIP = {"params"}


class HyperCheck(Check):
    """Record every param-group value; accept only the schedulers' changes (module doc).
    ``discover=False`` trusts only the schedulers passed to the guard."""

    name = "hyper"

    def __init__(self, *, discover: bool = True) -> None:
        self.discover = discover
        self._recorded: list[dict[str, Any]] = []
        self._params: list[tuple[int, ...]] = []
        self._scheduler: Any = None
        self._epoch: Any = None
        self._chain: Chain | None = None
        self._fn: Callable[[int], Any] | None = None
        self._said: set[str] = set()
        self._state = SchedulerState()

    def attach(self, ctx: GuardContext) -> None:
        sched = ctx.scheduler
        if _is_schedule_fn(sched):
            self._fn = sched
        else:
            self._follow(ctx, sched)
        self._baseline(ctx)
        self._epoch = None  # check what the scheduler set at construction at step 1
        watched = self._chain.schedulers if self._chain is not None else [self._scheduler]
        self._state.attach(ctx, [s for s in watched if s is not None])

    def rebaseline(self, ctx: GuardContext) -> None:
        self._baseline(ctx)
        self._state.rebaseline(ctx)

    def close(self, ctx: GuardContext) -> None:
        self._state.close(ctx)

    def _baseline(self, ctx: GuardContext) -> None:
        groups = ctx.optimizer.param_groups
        self._recorded = [_values(g) for g in groups]
        self._params = [tuple(id(p) for p in g["params"]) for g in groups]
        self._epoch = getattr(self._scheduler, "last_epoch", None)
        if self._chain is not None:
            self._chain.reset(groups)

    def before_step(self, ctx: GuardContext) -> None:
        if ctx.is_authorized:
            return
        self._state.verify(ctx)
        groups = ctx.optimizer.param_groups
        ids = [tuple(id(p) for p in g["params"]) for g in groups]
        if ids != self._params:
            if not _appended(self._params, ids):
                ctx.emit(
                    Rule.OPTIMIZER_TAMPER,
                    Severity.CRITICAL,
                    "the optimizer's parameter groups changed (parameters removed or "
                    "swapped) outside guard.authorized()",
                    where="optimizer.param_groups",
                    evidence={"groups_before": len(self._params), "groups_now": len(groups)},
                )
                self._baseline(ctx)
                return
            # add_param_group: honest and common (the guard records guard.params_changed);
            # a new group's values are its baseline, the old groups are checked as usual
            self._recorded.extend(_values(g) for g in groups[len(self._params) :])
            self._params = ids
        scheduled: set[str] = set()
        stepped = id(self._scheduler) in self._state.take_stepped()
        if self._scheduler is not None and (stepped or self._scheduler.last_epoch != self._epoch):
            self._epoch = self._scheduler.last_epoch
            scheduled = self._check_schedule(ctx, groups)
        if self._chain is not None:
            scheduled = self._check_chain(ctx, groups)
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

    # -- the schedulers ------------------------------------------------------------------

    def _follow(self, ctx: GuardContext, sched: Any) -> None:
        """Which schedulers drive the optimizer: the ones passed (those of another
        optimizer are set aside) and the ones alive now that were not passed."""
        told = flatten(sched)
        mine = [s for s in told if _drives(s, ctx.optimizer)]
        others = [type(s).__name__ for s in told if all(s is not m for m in mine)]
        if others:
            ctx.event(
                "hyper.scheduler_ignored",
                {"check": self.name, "schedulers": others, "reason": "drives another optimizer"},
            )
        given = list(sched) if isinstance(sched, (list, tuple)) else [sched]
        found = untold(ctx.optimizer, [*given, *told]) if self.discover else []
        if found:
            ctx.event(
                "hyper.untold_schedulers",
                {
                    "check": self.name,
                    "schedulers": [type(s).__name__ for s in found],
                    "reason": "they drive the optimizer and existed when the guard started; "
                    "pass them as scheduler= to name them",
                },
            )
        scheds = mine + flatten(found)
        if len(scheds) == 1 and isinstance(getattr(scheds[0], "last_epoch", None), int):
            self._scheduler = scheds[0]
        elif scheds:
            self._chain = Chain(scheds)

    def _check_schedule(self, ctx: GuardContext, groups: list[dict[str, Any]]) -> set[str]:
        """The scheduler stepped since the last optimizer step: check what it set against
        its formula, and say which keys it may have changed (all, for schedulers that are
        not a formula: they are observed, not verified)."""
        expected = expected_lrs(self._scheduler)
        name = type(self._scheduler).__name__
        if expected is None:
            self._observed(ctx, f"{name} is not a schedule trainguard recomputes", [name])
            return {"*"}
        for gi, (group, want) in enumerate(zip(groups, expected, strict=False)):
            got = float(group["lr"])
            if not close(got, want):
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
        return set(cycled(self._scheduler))

    def _check_chain(self, ctx: GuardContext, groups: list[dict[str, Any]]) -> set[str]:
        assert self._chain is not None
        verdict = self._chain.judge(groups)
        for reason in verdict.observed:
            self._observed(ctx, reason, list(verdict.stepped))
        names = ", ".join(verdict.stepped)
        for gi, got, want in verdict.mismatches:
            ctx.emit(
                Rule.OPTIMIZER_TAMPER,
                Severity.CRITICAL,
                f"param_groups[{gi}]['lr'] is {got!r}, but the schedulers that stepped "
                f"({names}) give {want!r} (changed out of band, or a scheduler's code was)",
                where=f"optimizer.param_groups[{gi}].lr",
                evidence={"group": gi, "lr": got, "expected": want,
                          "schedulers": list(verdict.stepped)},
            )  # fmt: skip
        return set(verdict.keys)

    def _observed(self, ctx: GuardContext, reason: str, schedulers: list[str]) -> None:
        """Say once per reason that a learning rate is observed, not predicted."""
        if reason in self._said:
            return
        self._said.add(reason)
        ctx.event(
            "hyper.observed",
            {
                "check": self.name,
                "reason": reason,
                "schedulers": schedulers,
                "effect": "changes made in the steps it stepped are accepted, not predicted",
            },
        )

    def _expect_fn(self, ctx: GuardContext, groups: list[dict[str, Any]]) -> None:
        assert self._fn is not None
        want = self._fn(ctx.current_step)
        wants = list(want) if isinstance(want, (list, tuple)) else [want] * len(groups)
        for gi, (group, w) in enumerate(zip(groups, wants, strict=False)):
            got = float(group["lr"])
            if not close(got, float(w)):
                ctx.emit(
                    Rule.OPTIMIZER_TAMPER,
                    Severity.CRITICAL,
                    f"param_groups[{gi}]['lr'] is {got!r} at step {ctx.current_step}, the "
                    f"user's schedule gives {float(w)!r}",
                    where=f"optimizer.param_groups[{gi}].lr",
                    evidence={"group": gi, "lr": got, "expected": float(w)},
                )


def _is_schedule_fn(sched: Any) -> bool:
    """A plain ``step -> lr`` callable, not a scheduler object."""
    return (
        sched is not None
        and not isinstance(sched, (list, tuple))
        and callable(sched)
        and not hasattr(sched, "last_epoch")
    )


def _drives(sched: Any, optimizer: Any) -> bool:
    inner = getattr(sched, "optimizer", None)
    if inner is None:
        return True  # a third-party scheduler that does not say: assume it is this one's
    try:
        return unwrap_optimizer(inner).value is optimizer
    except Exception:  # noqa: BLE001 - not an optimizer: not this one
        return False


def _appended(before: list[tuple[int, ...]], now: list[tuple[int, ...]]) -> bool:
    """``add_param_group``: every old group as it was, new groups after them."""
    return len(now) > len(before) and now[: len(before)] == before


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
