"""Learning-rate schedules recomputed in plain Python, for the hyper check.

Two views of a torch scheduler, both written here from the formulas of torch's
documentation, never by calling the scheduler (its code may be what was changed):

* ``expected_lrs``: the closed form, the learning rate at epoch ``e`` from the base
  learning rates. Exact for one scheduler driving an optimizer.
* ``advance``: one ``step()`` in torch's chainable form, i.e. what the step does to the
  learning rate it finds (``LinearLR``/``StepLR``/``ExponentialLR``... multiply in the
  ratio of their factors, ``CosineAnnealingLR`` scales the distance to ``eta_min``,
  ``LambdaLR`` overwrites with ``base * lambda(e)``). Several schedulers stepped on one
  optimizer (by hand, or by a ``ChainedScheduler``) compose through it: ``Chain`` keeps a
  shadow learning rate per group, taken once when the guard starts (or a
  ``guard.authorized()`` block ends) and then moved only by the epochs each scheduler
  advanced, so a drift that stays below the tolerance at every step still adds up.

Only torch's own classes are modelled (module ``torch.optim.lr_scheduler`` and a class
name known here; a subclass may override ``get_lr``). ``Chain`` does not know in which
order the schedulers were stepped between two optimizer steps: it tries round-robin in
the given order, then each order of whole blocks (up to ``_ORDERS`` schedulers), and
accepts the first that reproduces every group (multiplicative schedulers commute, so the
order only matters with ``eta_min``, ``LambdaLR`` or ``OneCycleLR`` in the chain).
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Chain", "Judgement", "close", "cycled", "expected_lrs", "flatten", "untold"]

REL = 1e-6  # torch computes some schedules recursively: the last digits drift
MAX_JUMP = 64  # epochs one scheduler may advance between two optimizer steps and be followed
_ORDERS = 4  # block orders are tried for at most this many schedulers (4! = 24)
_CYCLED = frozenset({"lr", "momentum", "betas"})  # what OneCycleLR / CyclicLR move
_MODULE = "torch.optim.lr_scheduler"


def close(got: float, want: float) -> bool:
    return abs(got - want) <= REL * max(abs(got), abs(want)) + 1e-15


def cycled(sched: Any) -> frozenset[str]:
    """The param-group keys a step of ``sched`` may move."""
    return _CYCLED if type(sched).__name__ == "OneCycleLR" else frozenset({"lr"})


# -- the closed forms ------------------------------------------------------------------


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
    if formula is None or type(sched).__module__ != _MODULE:
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


# -- one step at a time ----------------------------------------------------------------

_Step = Callable[[Any, int, float, int], float | None]


def _step_linear(s: Any, i: int, lr: float, e: int) -> float:
    if e > s.total_iters:
        return lr
    d = s.end_factor - s.start_factor
    return float(lr * (1.0 + d / (s.total_iters * s.start_factor + (e - 1) * d)))


def _step_polynomial(s: Any, i: int, lr: float, e: int) -> float:
    if e > s.total_iters:
        return lr
    ratio = (1.0 - e / s.total_iters) / (1.0 - (e - 1) / s.total_iters)
    return float(lr * ratio**s.power)


def _step_cosine(s: Any, i: int, lr: float, e: int) -> float | None:
    t, eta = s.T_max, s.eta_min
    if (e - 1 - t) % (2 * t) == 0:  # past T_max the ratio would divide by zero
        base = _base(s, i)
        return None if base is None else lr + (base - eta) * (1 - math.cos(math.pi / t)) / 2
    ratio = (1 + math.cos(math.pi * e / t)) / (1 + math.cos(math.pi * (e - 1) / t))
    return float(ratio * (lr - eta) + eta)


def _step_closed(s: Any, i: int, lr: float, e: int) -> float | None:
    """Schedulers that overwrite the learning rate from their base (no chaining)."""
    base = _base(s, i)
    if base is None or (type(s).__name__ == "CosineAnnealingWarmRestarts" and e != s.last_epoch):
        return None  # its state (T_cur) is only known for the epoch it is at
    return _FORMULAS[type(s).__name__](s, base, i, e)


_STEPS: dict[str, _Step] = {
    "StepLR": lambda s, i, lr, e: lr * float(s.gamma) if e % s.step_size == 0 else lr,
    "MultiStepLR": lambda s, i, lr, e: lr * float(s.gamma) ** s.milestones.get(e, 0),
    "ConstantLR": lambda s, i, lr, e: lr * (1.0 / s.factor) if e == s.total_iters else lr,
    "LinearLR": _step_linear,
    "ExponentialLR": lambda s, i, lr, e: lr * float(s.gamma),
    "PolynomialLR": _step_polynomial,
    "CosineAnnealingLR": _step_cosine,
    "MultiplicativeLR": lambda s, i, lr, e: lr * float(s.lr_lambdas[i](e)),
    "LambdaLR": _step_closed,
    "CosineAnnealingWarmRestarts": _step_closed,
    "OneCycleLR": _step_closed,
}


def followable(sched: Any) -> bool:
    return type(sched).__module__ == _MODULE and type(sched).__name__ in _STEPS


def advance(sched: Any, i: int, lr: float, e: int) -> float | None:
    """The learning rate of group ``i`` after ``sched`` stepped to epoch ``e`` from
    ``lr``; ``None`` where this cannot be known."""
    if e < 1 or not followable(sched):
        return None  # epoch 0 is the constructor's own step
    try:
        return _STEPS[type(sched).__name__](sched, i, lr, e)
    except (ArithmeticError, IndexError, LookupError, TypeError):
        return None


def _base(s: Any, i: int) -> float | None:
    bases = getattr(s, "base_lrs", [])
    return float(bases[i]) if i < len(bases) else None


# -- several schedulers on one optimizer -----------------------------------------------


@dataclass(frozen=True, slots=True)
class Judgement:
    """What the schedulers did since the last optimizer step, against the shadow."""

    keys: frozenset[str]  # param-group keys the schedulers may have moved ("*": any)
    mismatches: tuple[tuple[int, float, float], ...]  # (group, lr, expected)
    observed: tuple[str, ...]  # why a learning rate was taken as seen, not predicted
    stepped: tuple[str, ...]  # the schedulers that moved


class Chain:
    """Schedulers stepped together on one optimizer, followed from a shadow LR."""

    def __init__(self, schedulers: Sequence[Any]) -> None:
        self.schedulers = list(schedulers)
        self._epochs: list[int | None] = [_epoch(s) for s in self.schedulers]
        self._shadow: list[float] = []

    def reset(self, groups: Sequence[Any]) -> None:
        """Accept the learning rates and the schedulers' epochs as they are now."""
        self._shadow = [float(g["lr"]) for g in groups]
        self._epochs = [_epoch(s) for s in self.schedulers]

    def judge(self, groups: Sequence[Any]) -> Judgement:
        lrs = [float(g["lr"]) for g in groups]
        moves: list[tuple[Any, int, int]] = []
        blind: list[str] = []
        for k, s in enumerate(self.schedulers):
            now, before = _epoch(s), self._epochs[k]
            self._epochs[k] = now
            name = type(s).__name__
            if now is None:
                blind.append(f"{name} has no step counter (last_epoch)")
            elif now == before:
                continue
            elif not followable(s):
                blind.append(f"{name} is not a schedule trainguard recomputes")
            elif before is None or not 0 < now - before <= MAX_JUMP:
                blind.append(
                    f"{name}'s last_epoch jumped (set, reloaded, or more than {MAX_JUMP} steps)"
                )
            else:
                moves.append((s, before, now))
        stepped = tuple(type(s).__name__ for s, _, _ in moves)
        if blind:
            self._shadow = lrs
            return Judgement(frozenset({"*"}), (), tuple(blind), stepped)
        if not moves:
            return Judgement(frozenset(), (), (), ())
        first: tuple[list[float | None], list[tuple[int, float, float]]] | None = None
        for order in _orders(moves):
            pred = self._predict(order, len(lrs))
            bad = [
                (gi, lrs[gi], want)
                for gi, want in enumerate(pred)
                if want is not None and not close(lrs[gi], want)
            ]
            if first is None or not bad:
                first = (pred, bad)
            if not bad:
                break
        assert first is not None
        pred, bad = first
        wrong = {gi for gi, _, _ in bad}
        self._shadow = [
            lrs[gi] if want is None or gi in wrong else want for gi, want in enumerate(pred)
        ]
        observed = tuple(
            f"param_groups[{gi}]['lr'] cannot be predicted from {', '.join(stepped)}"
            for gi, want in enumerate(pred)
            if want is None
        )
        keys = frozenset().union(*(cycled(s) for s, _, _ in moves))
        return Judgement(keys, tuple(bad), observed, stepped)

    def _predict(self, order: list[tuple[Any, int]], groups: int) -> list[float | None]:
        out: list[float | None] = []
        for gi in range(groups):
            lr: float | None = self._shadow[gi] if gi < len(self._shadow) else None
            for s, e in order:
                if lr is None:
                    break
                lr = advance(s, gi, lr, e)
            out.append(lr)
        return out


def _orders(moves: list[tuple[Any, int, int]]) -> Iterator[list[tuple[Any, int]]]:
    """Step sequences that could have happened: round-robin in the given order (a loop
    that steps each scheduler once per pass), then blocks of each scheduler's steps."""
    rounds: list[tuple[Any, int]] = []
    for k in range(max(now - before for _, before, now in moves)):
        rounds.extend((s, before + k + 1) for s, before, now in moves if before + k + 1 <= now)
    yield rounds
    if len(moves) > _ORDERS:
        return
    for perm in itertools.permutations(moves):
        blocks = [(s, e) for s, before, now in perm for e in range(before + 1, now + 1)]
        if blocks != rounds:
            yield blocks


def _epoch(s: Any) -> int | None:
    e = getattr(s, "last_epoch", None)
    return e if isinstance(e, int) and not isinstance(e, bool) else None


# -- which schedulers --------------------------------------------------------------------


def flatten(sched: Any) -> list[Any]:
    """The schedulers that step an optimizer: a tuple's items, a ``ChainedScheduler``'s
    children (it only steps them), everything else as it is."""
    from torch.optim.lr_scheduler import ChainedScheduler

    items = list(sched) if isinstance(sched, (list, tuple)) else [sched]
    out: list[Any] = []
    for s in items:
        if isinstance(s, ChainedScheduler):
            out.extend(flatten(list(s._schedulers)))
        elif s is not None:
            out.append(s)
    return out


def untold(optimizer: Any, known: Sequence[Any]) -> list[Any]:
    """Torch schedulers alive in the process that drive ``optimizer`` and are neither in
    ``known`` nor inside one of them, found through the garbage collector's referrers
    of the optimizer (only looked for when some scheduler left ``initial_lr`` in a group:
    one pass over the heap, once)."""
    import gc

    from torch.optim.lr_scheduler import LRScheduler

    if not any("initial_lr" in g for g in optimizer.param_groups):
        return []
    found: list[Any] = []
    for ref in gc.get_referrers(optimizer):
        if isinstance(ref, LRScheduler):
            found.append(ref)
        elif isinstance(ref, dict) and ref.get("optimizer") is optimizer:  # a __dict__
            found.extend(
                o for o in gc.get_referrers(ref) if isinstance(o, LRScheduler) and vars(o) is ref
            )
    skip = {id(c) for s in [*known, *found] for c in _children(s)} | {id(s) for s in known}
    out: list[Any] = []
    for s in found:
        if id(s) not in skip and s.optimizer is optimizer:
            skip.add(id(s))
            out.append(s)
    return out


def _children(s: Any) -> Iterator[Any]:
    for child in getattr(s, "_schedulers", None) or ():
        yield child
        yield from _children(child)
