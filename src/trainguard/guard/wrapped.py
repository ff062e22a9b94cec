"""The torch optimizer and schedulers under the wrappers that frameworks hand to users.

accelerate's ``Accelerator.prepare()`` returns an ``AcceleratedOptimizer`` and an
``AcceleratedScheduler``; Lightning gives ``LightningOptimizer``; DeepSpeed's engine keeps
the torch optimizer in its own wrapper. Each forwards ``step()`` to the torch optimizer
inside, or skips it (accelerate on a gradient-accumulation micro-step or a ``GradScaler``
overflow). The guard hooks the torch optimizer's own ``step``, so what it counts as a step
is an update that ran, whoever called it.

What is trusted, and what is not:

* no class name. An object is unwrapped when it is *not an initialized torch optimizer*
  (``Optimizer.__init__`` never ran on it: it has no step-hook tables of its own; accelerate
  and Lightning subclass ``Optimizer`` without running it) and its ``optimizer`` or
  ``_optimizer`` attribute holds the next object down. At most ``MAX_DEPTH`` levels; if
  the chain does not end in an initialized ``torch.optim.Optimizer``, ``ConfigError``.
  An initialized optimizer that keeps another in ``.optimizer`` (a Lookahead) is guarded
  itself: its ``step`` is the one that runs.
* not that the wrapper forwards ``step``: weights that move without the torch optimizer's
  hooks running are the weights check's ``runtime.monkeypatch``.
* schedulers the same way (``scheduler``/``_scheduler``), stopping at a
  ``torch.optim.lr_scheduler.LRScheduler``; anything else (a callable, a third-party
  scheduler) is passed on as it is, for the hyper check to follow or observe.

Importing this module does not import torch.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainguard.errors import ConfigError

__all__ = ["MAX_DEPTH", "Unwrapped", "describe", "unwrap_optimizer", "unwrap_schedulers"]

MAX_DEPTH = 8
_OPTIMIZER_ATTRS = ("optimizer", "_optimizer")
_SCHEDULER_ATTRS = ("scheduler", "_scheduler")


@dataclass(frozen=True, slots=True)
class Unwrapped:
    """What the guard watches, and the wrappers it was found under (outermost first)."""

    value: Any
    wrappers: tuple[str, ...]


def unwrap_optimizer(obj: Any) -> Unwrapped:
    """The initialized torch optimizer under ``obj`` (``obj`` itself when it is one).
    Where torch was never imported nothing can be one: ``obj`` is taken as given (an
    object with torch's hook methods, as in tests of the guard without torch)."""
    optim = sys.modules.get("torch.optim")
    if optim is None:
        return Unwrapped(obj, ())
    wrappers: list[str] = []
    for _ in range(MAX_DEPTH + 1):
        if _initialized(obj, optim.Optimizer):
            return Unwrapped(obj, tuple(wrappers))
        inner = _inner(obj, _OPTIMIZER_ATTRS)
        if inner is None:
            break
        wrappers.append(_qualname(obj))
        obj = inner
    chain = " -> ".join([*wrappers, _qualname(obj)])
    raise ConfigError(
        f"trainguard: no torch.optim.Optimizer to guard under {chain} (looked through "
        f"'optimizer'/'_optimizer' attributes, at most {MAX_DEPTH} levels); pass the torch "
        "optimizer whose step() updates the weights"
    )


def unwrap_schedulers(scheduler: Any) -> Unwrapped:
    """``scheduler`` with every wrapper removed: one scheduler (or callable) stays one, a
    list or tuple becomes a tuple of unwrapped schedulers."""
    if isinstance(scheduler, (list, tuple)):
        parts = [_unwrap_scheduler(s) for s in scheduler]
        return Unwrapped(tuple(p.value for p in parts), tuple(w for p in parts for w in p.wrappers))
    return _unwrap_scheduler(scheduler)


def describe(scheduler: Any) -> str | None:
    """The scheduler's class names, for the ledger (``None`` without a scheduler)."""
    if scheduler is None:
        return None
    if isinstance(scheduler, tuple):
        return ", ".join(type(s).__name__ for s in scheduler)
    return type(scheduler).__name__


def _unwrap_scheduler(obj: Any) -> Unwrapped:
    module = sys.modules.get("torch.optim.lr_scheduler")
    if obj is None or module is None:
        return Unwrapped(obj, ())
    LRScheduler = module.LRScheduler

    wrappers: list[str] = []
    start = obj
    for _ in range(MAX_DEPTH):
        if isinstance(obj, LRScheduler):
            break
        inner = _inner(obj, _SCHEDULER_ATTRS)
        if inner is None:
            break
        wrappers.append(_qualname(obj))
        obj = inner
    if not isinstance(obj, LRScheduler):
        return Unwrapped(start, ())  # not a wrapper of a torch scheduler: as given
    return Unwrapped(obj, tuple(wrappers))


def _initialized(obj: Any, base: type) -> bool:
    """A torch optimizer whose ``__init__`` ran: its own step-hook table is in its dict."""
    own = getattr(obj, "__dict__", None)
    return isinstance(obj, base) and isinstance(own, dict) and "_optimizer_step_pre_hooks" in own


def _inner(obj: Any, attrs: Sequence[str]) -> Any:
    for attr in attrs:
        try:
            inner = getattr(obj, attr, None)
        except Exception:  # noqa: BLE001 - a property that raises holds nothing
            inner = None
        if inner is not None and inner is not obj:
            return inner
    return None


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
