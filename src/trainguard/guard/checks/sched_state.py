"""A scheduler's own state changes only inside its ``step()`` (``runtime.optimizer_tamper``).

The hyper check recomputes the learning rate from the scheduler's formula, and the formula
reads the scheduler's fields: ``base_lrs``, ``lr_lambdas``, ``last_epoch``, ``T_max``,
``gamma``, ``milestones``, OneCycleLR's ``total_steps`` and phases... An insider who edits
them before ``scheduler.step()`` (``sched.base_lrs[0] *= 10``, ``sched.lr_lambdas[0] =
lambda s: 10.0``, ``sched.last_epoch += 100``) gets a learning rate that matches the
formula exactly. So those fields are pinned here:

* every entry of each watched scheduler's ``__dict__`` is recorded by value (numbers,
  strings, lists, dicts, small tensors; functions by their code object, defaults, keyword
  defaults, closure cell contents and the globals their code names, recursively; a
  ``functools.partial`` by its function, arguments and keywords; other objects, such as
  the optimizer or a child scheduler, by identity) and compared at the entry of every
  ``step()`` call and at every optimizer step;
* what changes *inside* ``step()`` is the scheduler's own doing and becomes the new record
  (``ReduceLROnPlateau``'s ``best``/``num_bad_epochs``/``cooldown_counter``, a
  ``SequentialLR`` child moved to epoch 0 at its milestone, ``_step_count``, ``_last_lr``);
  a torch scheduler's plain ``step()`` (no ``epoch``) must advance ``last_epoch`` by exactly
  one;
* each param group's ``initial_lr`` (what ``base_lrs`` was built from) is pinned too;
* inside ``guard.authorized()`` nothing is judged, and when the block ends everything is
  recorded afresh (``scheduler.load_state_dict`` on a resume).

``step()`` calls are seen through a wrapper installed on the class that defines the
``step`` each watched scheduler resolves to (not on the instance: its ``state_dict`` stays
picklable), registered with the code check and removed on ``close``. Per-epoch stepping
(Lightning's ``interval="epoch"``), several ``step()`` calls per optimizer step
(accelerate) and none at all are all fine: only a change made outside ``step()`` counts.

What this trusts, named: the scheduler's class and its ``step`` code (the code check
watches them); ``step(epoch=...)`` calls (the documented API of
``CosineAnnealingWarmRestarts``; the hyper check recomputes the rate at the epoch it set);
a ``step`` bound before the guard started (``f = sched.step``) bypasses the wrapper, so
the epochs it advances are reported as edits. Values of a closure or a global that a
lambda reads are pinned only up to ``_DEPTH`` levels and ``_WIDE`` items per container.
"""

from __future__ import annotations

import functools
import hashlib
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._codehash import register_own_wrapper, unregister_own_wrapper
from trainguard.guard.checks.base import GuardContext

__all__ = ["SchedulerState", "freeze"]

_DEPTH = 5  # levels of closures / globals / containers followed in a frozen value
_WIDE = 256  # items of one container recorded by value; a wider one by identity and length
_VOLATILE = frozenset({"_get_lr_called_within_step", "_is_initial"})  # torch's step flags
_MODULE = "torch.optim.lr_scheduler"
_SCALARS = frozenset({type(None), bool, int, float, str, bytes, types.CodeType})


def freeze(value: Any, depth: int = 0) -> Any:
    """A comparable record of ``value``: equal records mean the same behaviour for every
    field a schedule formula reads (see the module docstring for what is followed)."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if (kind is list or kind is tuple) and len(value) <= _WIDE and depth <= _DEPTH:
        return (kind.__name__, *[v if type(v) in _SCALARS else freeze(v, depth + 1) for v in value])
    if value is None or isinstance(value, (bool, int, float, str, bytes, types.CodeType)):
        return value
    if depth > _DEPTH:
        return ("deep", type(value).__qualname__, id(value))
    if isinstance(value, (list, tuple, dict, set, frozenset)) and len(value) > _WIDE:
        return ("wide", type(value).__qualname__, id(value), len(value))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(freeze(v, depth + 1) for v in value))
    if isinstance(value, dict):
        items = sorted(((repr(k), freeze(v, depth + 1)) for k, v in value.items()), key=_first)
        return (type(value).__name__, *items)
    if isinstance(value, (set, frozenset)):
        return (type(value).__name__, *sorted(repr(v) for v in value))
    if isinstance(value, types.FunctionType):
        return _function(value, depth)
    if isinstance(value, functools.partial):
        return (
            "partial",
            freeze(value.func, depth + 1),
            freeze(value.args, depth + 1),
            freeze(value.keywords, depth + 1),
        )
    if isinstance(value, types.MethodType):
        return ("method", freeze(value.__func__, depth + 1), id(value.__self__))
    if isinstance(value, types.ModuleType):
        return ("module", value.__name__, id(value))
    if hasattr(value, "detach") and hasattr(value, "numel"):
        if value.numel() > _WIDE:
            return ("tensor", id(value))
        return ("tensor", str(value.dtype), tuple(value.detach().cpu().flatten().tolist()))
    if isinstance(value, type) or not callable(value) or _is_plumbing(value):
        return ("id", type(value).__qualname__, id(value))
    # a callable object used as a lambda: its class's __call__ and its own fields
    state = getattr(value, "__dict__", None)
    call = next(
        (c.__dict__["__call__"] for c in type(value).__mro__ if "__call__" in c.__dict__), None
    )
    return ("callable", id(type(value)), freeze(call, depth + 1), freeze(state, depth + 1))


def _first(item: tuple[str, Any]) -> str:
    return item[0]


def _function(fn: types.FunctionType, depth: int) -> Any:
    cells = []
    for cell in fn.__closure__ or ():
        try:
            cells.append(freeze(cell.cell_contents, depth + 1))
        except ValueError:  # an empty cell
            cells.append(("empty",))
    names = sorted({n for code in _codes(fn.__code__) for n in code.co_names})
    scope = fn.__globals__
    read = [(n, freeze(scope[n], depth + 1)) for n in names if n in scope]
    return (
        "fn",
        fn.__code__,
        freeze(fn.__defaults__, depth + 1),
        freeze(fn.__kwdefaults__, depth + 1),
        tuple(cells),
        tuple(read),
    )


def _codes(code: types.CodeType) -> Iterator[types.CodeType]:
    stack = [code]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))


def _is_plumbing(value: Any) -> bool:
    """Objects pinned by identity although callable: optimizers, schedulers, builtins."""
    return isinstance(value, (types.BuiltinFunctionType, types.BuiltinMethodType)) or any(
        hasattr(value, a) for a in ("param_groups", "last_epoch", "_schedulers")
    )


def _short(frozen: Any) -> str:
    text = repr(frozen)
    if len(text) <= 120:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(slots=True)
class _Watched:
    """One scheduler, its record, and the schedulers a ``step()`` of it may move."""

    sched: Any
    where: str
    record: dict[str, Any]
    family: list[_Watched] = field(default_factory=list)  # itself and its descendants


class _Inside(threading.local):
    ids: set[int]

    def __init__(self) -> None:
        self.ids = set()


class SchedulerState:
    """Pin each watched scheduler's fields between its ``step()`` calls (module doc)."""

    def __init__(self) -> None:
        self._ctx: GuardContext | None = None
        self._watched: dict[int, _Watched] = {}
        self._initial: dict[tuple[int, ...], Any] = {}  # a group's parameters -> initial_lr
        self._installed: list[tuple[type, Any, Any]] = []  # class, original, wrapper
        self._inside = _Inside()
        self._steps: set[int] = set()  # ids of schedulers whose step() ran since taken

    # -- hooks called by the hyper check ---------------------------------------------------

    def attach(self, ctx: GuardContext, schedulers: Sequence[Any]) -> None:
        from torch.optim.lr_scheduler import LRScheduler

        self._ctx = ctx
        names: dict[str, int] = {}
        for sched in _with_descendants(schedulers):
            if not isinstance(sched, LRScheduler) or id(sched) in self._watched:
                continue
            name = type(sched).__name__
            names[name] = names.get(name, 0) + 1
            where = f"scheduler.{name}" + (f"[{names[name] - 1}]" if names[name] > 1 else "")
            self._watched[id(sched)] = _Watched(sched, where, _record(sched))
        for watch in self._watched.values():
            watch.family = [self._watched[id(s)] for s in _with_descendants([watch.sched])
                            if id(s) in self._watched]  # fmt: skip
        self._pin(ctx)
        self._differ(ctx)
        self._install()

    def verify(self, ctx: GuardContext) -> None:
        """At an optimizer step: every field as recorded, every ``initial_lr`` as pinned."""
        for watch in self._watched.values():
            self._judge(ctx, watch)
        for gi, group in enumerate(ctx.optimizer.param_groups):
            key, now = _group_key(group), freeze(group.get("initial_lr"))
            pinned = self._initial.setdefault(key, now)  # a new group: its own baseline
            if now != pinned:
                ctx.emit(
                    Rule.OPTIMIZER_TAMPER,
                    Severity.CRITICAL,
                    f"optimizer param_groups[{gi}]['initial_lr'] changed from {_short(pinned)} "
                    f"to {_short(now)} outside guard.authorized() (the schedulers' base_lrs are "
                    "built from it)",
                    where=f"optimizer.param_groups[{gi}].initial_lr",
                    evidence={"group": gi, "before": _short(pinned), "now": _short(now)},
                )
                self._initial[key] = now

    def take_stepped(self) -> set[int]:
        """The schedulers (by id) whose ``step()`` ran since the last call: a step that
        left ``last_epoch`` where it was (``step(epoch)`` with a fraction) still counts."""
        stepped, self._steps = self._steps, set()
        return stepped

    def rebaseline(self, ctx: GuardContext) -> None:
        for watch in self._watched.values():
            watch.record = _record(watch.sched)
        self._pin(ctx)

    def _pin(self, ctx: GuardContext) -> None:
        groups = ctx.optimizer.param_groups
        self._initial = {_group_key(g): freeze(g.get("initial_lr")) for g in groups}

    def close(self, ctx: GuardContext) -> None:
        for cls, original, wrapper in reversed(self._installed):
            if cls.__dict__.get("step") is wrapper:
                type.__setattr__(cls, "step", original)
            else:  # replaced over ours: restoring would undo that patch too
                ctx.event("hyper.restore_skipped", {"name": f"{cls.__qualname__}.step"})
            unregister_own_wrapper(wrapper)
        self._installed.clear()
        self._ctx = None

    # -- judging ----------------------------------------------------------------------------

    def _judge(self, ctx: GuardContext, watch: _Watched) -> None:
        now = _record(watch.sched)
        if now == watch.record:
            return
        before = watch.record
        for key in sorted(set(now) | set(before)):
            old, new = before.get(key, ("absent",)), now.get(key, ("absent",))
            if old == new:
                continue
            ctx.emit(
                Rule.OPTIMIZER_TAMPER,
                Severity.CRITICAL,
                f"{watch.where}.{key} changed from {_short(old)} to {_short(new)} outside "
                f"{type(watch.sched).__name__}.step() and outside guard.authorized() (the "
                "schedule formula reads it, so the learning rate it sets would pass)",
                where=f"{watch.where}.{key}",
                evidence={
                    "scheduler": type(watch.sched).__name__,
                    "field": key,
                    "before": _short(old),
                    "now": _short(new),
                },
            )
        watch.record = now

    def _differ(self, ctx: GuardContext) -> None:
        """Say once, at attach, where ``base_lrs`` is not the groups' ``initial_lr``."""
        for watch in self._watched.values():
            bases = [freeze(b) for b in getattr(watch.sched, "base_lrs", None) or ()]
            groups = ctx.optimizer.param_groups[: len(bases)]
            pinned = [self._initial.get(_group_key(g)) for g in groups]
            if bases and bases != pinned:
                ctx.event(
                    "hyper.base_lrs_differ",
                    {"scheduler": watch.where, "base_lrs": _short(bases),
                     "initial_lr": _short(pinned)},
                )  # fmt: skip

    # -- the step() wrapper -----------------------------------------------------------------

    def _install(self) -> None:
        done: set[int] = set()
        for watch in self._watched.values():
            owner = next((c for c in type(watch.sched).__mro__ if "step" in c.__dict__), None)
            original = None if owner is None else owner.__dict__["step"]
            if owner is None or id(owner) in done or not isinstance(original, types.FunctionType):
                continue
            done.add(id(owner))
            wrapper = self._wrap(original)
            register_own_wrapper(original, wrapper)
            type.__setattr__(owner, "step", wrapper)
            self._installed.append((owner, original, wrapper))

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        state = self

        @functools.wraps(original)
        def scheduler_step_recorder(sched: Any, *args: Any, **kwargs: Any) -> Any:
            watch = state._watched.get(id(sched))
            ctx = state._ctx
            if watch is None or watch.sched is not sched or ctx is None:
                return original(sched, *args, **kwargs)
            if id(sched) in state._inside.ids:  # super().step() of a watched subclass
                return original(sched, *args, **kwargs)
            return state._stepped(ctx, watch, original, args, kwargs)

        return scheduler_step_recorder

    def _stepped(
        self,
        ctx: GuardContext,
        watch: _Watched,
        original: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        sched = watch.sched
        if not ctx.is_authorized:
            for member in watch.family:
                self._judge(ctx, member)
        before = getattr(sched, "last_epoch", None)
        self._inside.ids.add(id(sched))
        self._steps.add(id(sched))
        try:
            return original(sched, *args, **kwargs)
        finally:
            self._inside.ids.discard(id(sched))
            after = getattr(sched, "last_epoch", None)
            plain = "epoch" not in kwargs and len(args) <= _metrics_args(sched)
            if (
                plain
                and not ctx.is_authorized
                and type(sched).__module__ == _MODULE
                and isinstance(before, int)
                and after != before + 1
            ):
                ctx.emit(
                    Rule.OPTIMIZER_TAMPER,
                    Severity.CRITICAL,
                    f"{watch.where}.step() moved last_epoch from {before} to {after!r}, a "
                    "plain step() advances it by exactly one (the scheduler's code changed)",
                    where=f"{watch.where}.last_epoch",
                    evidence={"scheduler": type(sched).__name__, "before": before,
                              "now": after},
                )  # fmt: skip
            for member in watch.family:
                member.record = _record(member.sched)


def _metrics_args(sched: Any) -> int:
    """Positional arguments of a plain step: ``ReduceLROnPlateau.step(metrics)`` has one."""
    return 1 if type(sched).__name__ == "ReduceLROnPlateau" else 0


def _group_key(group: dict[str, Any]) -> tuple[int, ...]:
    return tuple(id(p) for p in group.get("params", ()))


def _record(sched: Any) -> dict[str, Any]:
    return {k: freeze(v) for k, v in vars(sched).items() if k not in _VOLATILE}


def _with_descendants(schedulers: Sequence[Any]) -> Iterator[Any]:
    for sched in schedulers:
        yield sched
        yield from _with_descendants(list(getattr(sched, "_schedulers", None) or ()))
