"""What the code check compares against: every watched name, the state of the Python
functions behind them, class and instance dicts, hook containers, objects' classes.

The snapshot is a list of live views (module dicts, class mappingproxies, instance
dicts, hook dicts) and the objects expected in them; ``compare`` reads the views again.
Entries marked ``step`` are also in the per-step identity watch (``watch.StepWatch``):
the names an optimizer step can reach (``torch``, ``torch.nn.functional``,
``torch.nn.utils``, ``torch._C._nn``, ``torch.Tensor``, the model's, optimizer's and
schedulers' classes and instances, every hook container). The rest (every other class in
``torch.optim``, ``torch.nn.modules``, ``torch.utils.data``) is compared on the keyed
schedule. ``torch._C._VariableFunctions`` is read-only and ``torch._C.TensorBase`` an
immutable type: nothing can be assigned there, so neither is watched.

*What it trusts:* the objects the guard was given (model, optimizer, scheduler, loader)
and ``sys.modules`` for finding the torch modules; what they hold at attach is the
baseline, except what ``hooks.judge_existing`` and ``disk`` judge at attach.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.guard.checks._codehash import (
    SourceIndex,
    iter_code,
    reachable_functions,
    torch_dir,
)
from trainguard.guard.checks.base import GuardContext
from trainguard.guard.checks.code.hooks import HookSlot, hook_locations

__all__ = ["Fn", "Keys", "Slot", "Snapshot"]

_PACKAGES = ("torch.optim", "torch.nn.modules", "torch.utils.data")
_SKIP = ("torch.utils.data.datapipes",)
_MODULES = (
    "torch.nn",
    "torch.nn.parameter",
    "torch.random",
    "torch.amp.grad_scaler",
    "torch.autograd",
)
# the modules whose names an optimizer step looks up at call time: watched every step
_STEP_MODULES = (
    "torch",
    "torch.nn.functional",
    "torch.nn.utils",
    "torch.nn.utils.clip_grad",
    "torch._C._nn",
)
_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: C types whose dict cannot be assigned


@dataclass(frozen=True, slots=True)
class Fn:
    """A Python function's mutable state: anything that changes what calling it does."""

    fn: types.FunctionType
    code: types.CodeType
    defaults: tuple[Any, ...] | None
    kwdefaults: tuple[tuple[str, Any], ...] | None
    cells: tuple[tuple[types.CellType, Any], ...]
    where: str
    # (source file or None, name) when reached from a name torch defines: then it must be
    # torch's (or the standard library's) verified code
    torch_name: tuple[str | None, str] | None
    owner: type | None  # the class whose dict holds it (generated methods are judged so)
    step: bool = False  # reached from a name an optimizer step looks up (verified at attach)


class Slot:
    """``mapping[name]`` is expected to be ``value``."""

    __slots__ = ("mapping", "name", "owner", "step", "torch_name", "value", "where")

    def __init__(
        self,
        mapping: Mapping[str, Any],
        name: str,
        value: Any,
        where: str,
        step: bool,
        torch_name: tuple[str | None, str] | None,
        owner: type | None,
    ) -> None:
        self.mapping, self.name, self.value, self.where = mapping, name, value, where
        self.step, self.torch_name, self.owner = step, torch_name, owner


class Keys:
    """The names of a class dict, an instance dict or a module dict (``kind``)."""

    __slots__ = ("keys", "kind", "mapping", "obj", "step", "where")

    def __init__(self, mapping: Any, obj: Any, where: str, kind: str, step: bool) -> None:
        self.mapping, self.obj, self.where, self.kind, self.step = mapping, obj, where, kind, step
        self.keys = frozenset(mapping)


def fn_state(
    fn: types.FunctionType,
    where: str,
    torch_name: tuple[str | None, str] | None = None,
    owner: type | None = None,
    step: bool = False,
) -> Fn:
    kw = fn.__kwdefaults__
    cells = []
    for cell in fn.__closure__ or ():
        try:
            content = cell.cell_contents
        except ValueError:
            continue
        if callable(content):
            cells.append((cell, content))
    return Fn(
        fn,
        fn.__code__,
        fn.__defaults__,
        tuple(kw.items()) if kw is not None else None,
        tuple(cells),
        where,
        torch_name,
        owner,
        step,
    )


def is_code_attr(value: Any) -> bool:
    return callable(value) or isinstance(value, staticmethod | classmethod | property)


def _source_of(module: Any, name: str) -> tuple[str | None, str]:
    file = getattr(module, "__file__", None)
    return (file if isinstance(file, str) else None, name)


class Snapshot:
    """Everything ``compare`` looks at, and the functions known at the time."""

    def __init__(self, ctx: GuardContext, index: SourceIndex) -> None:
        self.index = index
        self.slots: list[Slot] = []
        self.fns: list[Fn] = []
        self.keysets: list[Keys] = []
        self.hooks: list[HookSlot] = []
        self.owners: dict[int, Any] = {}
        """id(an instance's __dict__) -> the instance (kept alive by ``keysets``)"""
        self.types: list[tuple[Any, type, str]] = []
        self.known_fns: set[int] = set()
        self.class_fns: set[int] = set()
        """functions held by classes (the model's own methods, torch's)"""
        self.known_values: set[int] = set()
        self.known_codes: set[int] = set()
        self.class_values: dict[tuple[int, str], Any] = {}
        self._classes_seen: set[int] = set()
        self._modules_seen: set[int] = set()
        self.torch = torch_dir()
        self._take(ctx)

    def _take(self, ctx: GuardContext) -> None:
        torch = sys.modules.get("torch")
        if torch is not None:
            self._class("torch.Tensor", torch.Tensor, True, True)
            for name in _STEP_MODULES:
                module = sys.modules.get(name) or _attr_path(torch, name)
                if isinstance(module, types.ModuleType):
                    self._module(name, module, True)
        for slot in hook_locations(ctx):
            self.hooks.append(slot)
        self._objects(ctx)
        for name in _scope_modules() if torch is not None else ():
            self._module(name, sys.modules[name], False)

    def _objects(self, ctx: GuardContext) -> None:
        model = ctx.model
        if model is not None and hasattr(model, "named_modules"):
            for name, module in model.named_modules():
                self._instance(module, f"model.{name}" if name else "model", True)
        steppers = [(ctx.optimizer, "optimizer"), (ctx.scheduler, "scheduler")]
        for obj, where in steppers:
            if obj is None:
                continue
            self._instance(obj, where, True)
            for base in type(obj).__mro__[:-1]:  # the optimizer's functional code
                module = sys.modules.get(base.__module__)
                if base.__module__.partition(".")[0] == "torch" and module is not None:
                    self._module(base.__module__, module, True)
        loader = ctx.dataloader
        extras = [(loader, "dataloader")]
        for attr in ("sampler", "batch_sampler", "dataset"):
            extras.append((getattr(loader, attr, None), f"dataloader.{attr}"))
        for obj, where in extras:
            if obj is not None:
                self._instance(obj, where, False)

    def _module(self, modname: str, module: Any, step: bool) -> None:
        if id(module) in self._modules_seen:
            return
        self._modules_seen.add(id(module))
        mapping = module.__dict__
        for name, value in list(mapping.items()):
            if name.startswith("__") or not (
                callable(value) or isinstance(value, types.ModuleType)
            ):
                continue
            where = f"{modname}.{name}"
            self.add_slot(mapping, name, value, where, step, _source_of(module, name))
            if isinstance(value, type) and value.__module__.partition(".")[0] == "torch":
                self._class(where, value, True, step)
        self.keysets.append(Keys(mapping, module, modname, "module", step))

    def _class(self, where: str, cls: type, in_torch: bool, step: bool) -> None:
        if id(cls) in self._classes_seen or cls.__flags__ & _IMMUTABLE_TYPE:
            return
        self._classes_seen.add(id(cls))
        mapping = cls.__dict__
        owner = sys.modules.get(cls.__module__) if in_torch else None
        for name, value in list(mapping.items()):
            if is_code_attr(value) and name not in ("__class__", "__base__"):
                tname = _source_of(owner, name) if owner is not None else None
                self.add_slot(mapping, name, value, f"{where}.{name}", step, tname, cls)
                self.class_values[id(cls), name] = value
        self.keysets.append(Keys(mapping, cls, where, "class", step))

    def _instance(self, obj: Any, where: str, step: bool) -> None:
        """The object's class (and its bases), and methods shadowed on the instance."""
        cls = type(obj)
        self.types.append((obj, cls, where))
        for base in cls.__mro__[:-1]:
            in_torch = base.__module__.partition(".")[0] == "torch"
            name = _public_name(base) if in_torch else f"{base.__module__}.{base.__qualname__}"
            self._class(name, base, in_torch, step)
        mapping = getattr(obj, "__dict__", None)
        if not isinstance(mapping, dict):
            return
        for name, value in list(mapping.items()):
            if callable(value) and hasattr(cls, name):
                self.add_slot(mapping, name, value, f"{where}.{name}", step, None, None)
        self.keysets.append(Keys(mapping, obj, where, "instance", step))
        self.owners[id(mapping)] = obj

    def add_slot(
        self,
        mapping: Mapping[str, Any],
        name: str,
        value: Any,
        where: str,
        step: bool,
        torch_name: tuple[str | None, str] | None = None,
        owner: type | None = None,
    ) -> None:
        self.slots.append(Slot(mapping, name, value, where, step, torch_name, owner))
        self.learn(value, where, torch_name, owner, step)

    def learn(
        self,
        value: Any,
        where: str,
        torch_name: tuple[str | None, str] | None = None,
        owner: type | None = None,
        step: bool = False,
    ) -> None:
        """Record the functions ``value`` runs (a new baseline value)."""
        self.known_values.add(id(value))
        for fn in reachable_functions(value):
            if owner is not None:
                self.class_fns.add(id(fn))
            if id(fn) in self.known_fns:
                continue
            self.known_fns.add(id(fn))
            self.fns.append(fn_state(fn, where, torch_name, owner, step))
            if fn.__code__.co_filename.startswith(self.torch):
                self.known_codes.update(id(c) for c in iter_code(fn.__code__))


def _public_name(cls: type) -> str:
    """The shortest name torch exports ``cls`` under (``torch.optim.AdamW``, not
    ``torch.optim.adamw.AdamW``), as alerts name it."""
    parts = cls.__module__.split(".")
    for end in range(1, len(parts) + 1):
        prefix = ".".join(parts[:end])
        if getattr(sys.modules.get(prefix), cls.__name__, None) is cls:
            return f"{prefix}.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _attr_path(root: Any, dotted: str) -> Any:
    obj = root
    for part in dotted.split(".")[1:]:
        obj = getattr(obj, part, None)
    return obj


def _scope_modules() -> list[str]:
    names = [
        m
        for m in list(sys.modules)
        if any(m == p or m.startswith(p + ".") for p in _PACKAGES)
        and not any(m == s or m.startswith(s + ".") for s in _SKIP)
    ]
    names.extend(m for m in _MODULES if m in sys.modules)
    return sorted(set(names), key=lambda m: (m.count("."), m))
