"""Every hook container the step runs through, and the judgement of what sits in them.

Hooks change what a step computes without replacing any name: module forward/backward
(pre) hooks on the model's modules and the global ones, tensor hooks on parameters
(``p.register_hook``: ``p._backward_hooks``), post-accumulate-grad hooks, optimizer
step pre/post hooks (instance and global) and a DDP communication hook
(``DistributedDataParallel.register_comm_hook``: ``ddp._comm_hooks``).

Hooks present when the guard starts are *judged*, not adopted (``judge_existing``):

* trainguard's own (a bound method of the guard or a check, a registered own wrapper,
  or a function of trainguard's verified code): silent;
* verified code of an installed library (torch's default DDP hooks, transformers'
  ``enable_input_require_grads``, accelerate, PEFT), or a method of a class the model or
  optimizer is made of: a ``code.hook_adopted`` event;
* a function of the job's entry script (``__main__``, verified against the script file):
  an event too. Registering a hook in one's own training script before starting the
  guard is ordinary practice (gradient logging, freezing), and the entry script is the
  job's declared code; a hook from any other project module, from ``exec``
  (``<string>``), from a temporary file or from code whose file does not hold it is
  what someone slips into a job, and is an alert;
* a C function used as a hook (``p.register_hook(torch.Tensor.zero_)``): an alert.

A hook added after the guard started is accepted only when it is trainguard's own or
verified library code (``hook_change``): the job's own code declares changes with
``guard.authorized()``.

Not enumerable: hooks on autograd graph nodes, including a parameter's ``AccumulateGrad``
node (``p.view_as(p).grad_fn.next_functions[0][0].register_prehook(...)``). torch 2.13
keeps them in C++ and offers no way to list them from Python (``Node`` has only
``register_hook``, ``register_prehook`` and ``_register_hook_dict``). The guard records a
``code.unenumerable`` event saying so; what such a hook does to a gradient is left to the
update and gradient checks.

*What it trusts:* torch's hook containers being where torch keeps them (the attributes
read here), and ``origin.Origins`` for where a hook's code comes from.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trainguard.guard.checks._codehash import describe, functions_of, own_original
from trainguard.guard.checks._codehash import reachable_functions as _reachable
from trainguard.guard.checks.base import GuardContext
from trainguard.guard.checks.code.origin import LIBRARY, MAIN, OWN, STDLIB, TORCH, Origins

if TYPE_CHECKING:
    from trainguard.guard.checks.code.snapshot import Snapshot

__all__ = ["HookSlot", "HookVerdict", "entries", "hook_locations", "judge_hook"]

_GLOBAL_HOOKS = (
    (
        "torch.nn.modules.module",
        (
            "_global_forward_hooks",
            "_global_forward_pre_hooks",
            "_global_backward_hooks",
            "_global_backward_pre_hooks",
        ),
    ),
    ("torch.optim.optimizer", ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")),
)
_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_PARAM_HOOKS = ("_backward_hooks", "_post_accumulate_grad_hooks")
_OPTIMIZER_HOOKS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks")
UNENUMERABLE = (
    "hooks on autograd nodes (a parameter's AccumulateGrad node: register_hook, "
    "register_prehook) cannot be listed from Python in this torch; they are not judged"
)


class HookSlot:
    """``getattr(owner, attr)`` is expected to be ``container`` holding ``items``."""

    __slots__ = ("attr", "container", "items", "owner", "where")

    def __init__(self, owner: Any, attr: str, where: str) -> None:
        self.owner, self.attr, self.where = owner, attr, where
        self.container = getattr(owner, attr, None)
        self.items = entries(self.container)

    def read(self) -> Any:
        return getattr(self.owner, self.attr, None)


def entries(container: Any) -> tuple[tuple[Any, Any], ...]:
    """(key, hook) pairs: a hook dict's items, or a DDP ``_comm_hooks`` list of
    (hook, state) pairs keyed by position."""
    if isinstance(container, Mapping):
        return tuple(container.items())
    if isinstance(container, list):
        return tuple(
            (i, e[0] if isinstance(e, tuple) and e else e) for i, e in enumerate(container)
        )
    return ()


def hook_locations(ctx: GuardContext) -> list[HookSlot]:
    out: list[HookSlot] = []
    for modname, names in _GLOBAL_HOOKS:
        module = sys.modules.get(modname)
        for name in names if module is not None else ():
            out.append(HookSlot(module, name, f"{modname}.{name}"))
    model = ctx.model
    if model is not None and hasattr(model, "named_modules"):
        for name, module in model.named_modules():
            where = f"model.{name}" if name else "model"
            for hook in _MODULE_HOOKS:
                out.append(HookSlot(module, hook, f"{where}.{hook}"))
            if isinstance(getattr(module, "_comm_hooks", None), list):
                out.append(HookSlot(module, "_comm_hooks", f"{where}._comm_hooks"))
    for name, param in ctx.named_parameters:
        for hook in _PARAM_HOOKS:
            out.append(HookSlot(param, hook, f"parameter {name}.{hook}"))
    if ctx.optimizer is not None:
        for hook in _OPTIMIZER_HOOKS:
            out.append(HookSlot(ctx.optimizer, hook, f"optimizer.{hook}"))
    return out


@dataclass(frozen=True, slots=True)
class HookVerdict:
    """``own`` (silent), ``adopted`` (an event) or ``alert``, and why."""

    kind: str
    reason: str
    evidence: dict[str, Any]


def own_hook(ctx: GuardContext, hook: Any) -> bool:
    owner = getattr(hook, "__self__", None)
    if owner is None:
        return own_original(hook) is not None
    return owner is ctx or any(owner is c for c in getattr(ctx, "checks", ()))


def judge_hook(
    ctx: GuardContext, hook: Any, snap: Snapshot, origins: Origins, *, existing: bool
) -> HookVerdict:
    """What ``hook`` is. ``existing``: it was there when the guard started (then the job's
    entry script and the model's own methods are honest origins too)."""
    evidence: dict[str, Any] = {"hook": describe(hook)}
    if own_hook(ctx, hook):
        return HookVerdict("own", "the guard's own hook", evidence)
    fns = list(_reachable(hook))
    target = hook.__func__ if isinstance(hook, types.MethodType) else hook
    call = inspect.getattr_static(type(target), "__call__", None)
    if not fns and call is not None:  # a callable object: its class's __call__ runs
        fns = [f for part in functions_of(call) for f in _reachable(part)]
    if not fns:
        return HookVerdict("alert", "not Python code (a C function used as a hook)", evidence)
    kinds: set[str] = set()
    for fn in fns:
        if existing and id(fn) in snap.class_fns:
            kinds.add("the model's or optimizer's own class")
            continue
        origin = origins.of(fn)
        allowed = (TORCH, STDLIB, OWN, LIBRARY, MAIN) if existing else (TORCH, STDLIB, OWN, LIBRARY)
        if origin.problem is not None or origin.kind not in allowed:
            evidence["origin"] = origin.evidence()
            evidence["function"] = fn.__qualname__
            why = origin.problem or f"code of the project's own module {fn.__module__}"
            if origin.problem is None and origin.kind == MAIN:
                why = "code of the job's entry script, added after the guard started"
            return HookVerdict("alert", why, evidence)
        kinds.add(origin.kind)
    if kinds == {OWN}:
        return HookVerdict("own", "trainguard's own code", evidence)
    evidence["origins"] = sorted(kinds)
    return HookVerdict("adopted", "verified code: " + ", ".join(sorted(kinds)), evidence)
