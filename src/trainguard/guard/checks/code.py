"""``runtime.monkeypatch``: the training code that runs is still the code that was verified.

An optimizer whose ``step`` was swapped, a ``gelu`` that quietly scales, a ``DataLoader``
that reorders: every one of them is "replace a name with other code". At ``attach`` the
check records what each watched name points to (torch.optim, torch.nn.functional,
torch.nn.modules, torch.utils.data, the seeding functions, ``torch.Tensor``, the model's
and the optimizer's own classes), the state of every Python function behind those names
(code, defaults, the callables its closure holds), the global and per-module hooks, and
the optimizer's step hooks. Every ``ctx.every`` steps it compares identities, which is
cheap (a few ms) because code objects are immutable: any change of behaviour is a changed
identity somewhere.

A snapshot cannot see a patch made before the guard started, so a background thread also
compiles the source files on disk and compares (see ``_codehash.SourceIndex``), and
reports a torch name bound to code from outside torch and the standard library.

Not alarms, because torch and the libraries around it do them honestly: torch rewraps
lazily (``Optimizer.step`` gets its hook wrapper when the first optimizer of a class is
built, an LR scheduler wraps ``optimizer.step`` on the instance, dynamo wraps
``torch.manual_seed`` and every optimizer's ``_init_group``, ``model.compile()`` sets
``_compiled_call_impl``). Such a replacement is accepted when the new function is made by
torch's own code (verified against its source) and wraps what stood there before and
nothing but known code. A brand-new name shadows nothing and changes no existing call
(transformers adds ``nn.Module.smart_apply``). Hooks whose code lives in an installed
library (transformers' ``enable_input_require_grads``) are recorded, not alarmed; a hook
from the project's own files is. trainguard's own wrappers are known through the registry
in ``_codehash``. Every acceptance is a ``code.accepted`` event in the ledger, and so is
every change taken as the new baseline when a ``guard.authorized()`` block ends.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._codehash import (
    SourceIndex,
    code_digest,
    code_file,
    describe,
    is_library,
    iter_code,
    own_original,
    reachable_functions,
    torch_dir,
    trusted_origin,
)
from trainguard.guard.checks._known_patches import accepted
from trainguard.guard.checks.base import Check, GuardContext, StepInfo

__all__ = ["CodeCheck"]

log = logging.getLogger("trainguard.guard")

_PACKAGES = ("torch.optim", "torch.nn.modules", "torch.utils.data")
_SKIP = ("torch.utils.data.datapipes",)
_MODULES = (
    "torch.nn",
    "torch.nn.functional",
    "torch.nn.parameter",
    "torch.nn.utils.clip_grad",
    "torch.random",
    "torch.amp.grad_scaler",
    "torch.autograd",
)
_TORCH_NAMES = (
    "manual_seed",
    "seed",
    "initial_seed",
    "get_rng_state",
    "set_rng_state",
    "randperm",
    "rand",
    "randn",
    "randint",
    "bernoulli",
)
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
_IMMUTABLE_TYPE = 1 << 8  # Py_TPFLAGS_IMMUTABLETYPE: C types whose dict cannot be assigned
_MISSING = object()
_OWN_HOOK = "the guard's own hook"


@dataclass(frozen=True, slots=True)
class _Fn:
    """A Python function's mutable state: anything that changes what calling it does."""

    fn: types.FunctionType
    code: types.CodeType
    defaults: tuple[Any, ...] | None
    kwdefaults: tuple[tuple[str, Any], ...] | None
    cells: tuple[tuple[types.CellType, Any], ...]
    where: str
    # (source file, name) when reached from a name torch defines: then it must be torch's
    # (or the standard library's) code
    torch_name: tuple[str, str] | None


@dataclass(frozen=True, slots=True)
class _Change:
    where: str
    message: str
    severity: Severity
    evidence: dict[str, Any]
    accepted: str | None = None  # why it is benign; None: an alert


def _fn_state(fn: types.FunctionType, where: str, torch_name: tuple[str, str] | None = None) -> _Fn:
    kw = fn.__kwdefaults__
    cells = []
    for cell in fn.__closure__ or ():
        try:
            content = cell.cell_contents
        except ValueError:
            continue
        if callable(content):
            cells.append((cell, content))
    return _Fn(
        fn,
        fn.__code__,
        fn.__defaults__,
        tuple(kw.items()) if kw is not None else None,
        tuple(cells),
        where,
        torch_name,
    )


def _source_of(module: Any, name: str) -> tuple[str, str] | None:
    file = getattr(module, "__file__", None)
    return (file, name) if isinstance(file, str) else None


def _is_code_attr(value: Any) -> bool:
    return callable(value) or isinstance(value, staticmethod | classmethod | property)


class _Snapshot:
    """Everything the periodic comparison looks at, flattened into lists of live views
    (module dicts, class mappingproxies, hook dicts) and the objects expected in them."""

    def __init__(self, ctx: GuardContext, index: SourceIndex) -> None:
        self._index = index
        self.slots: list[tuple[Mapping[str, Any], str, Any, str]] = []
        self.fns: list[_Fn] = []
        self.classes: list[tuple[Mapping[str, Any], frozenset[str], str, type]] = []
        self.hooks: list[tuple[Any, str, Any, tuple[tuple[Any, Any], ...], str]] = []
        self.instances: list[tuple[Any, dict[str, Any], frozenset[str], str]] = []
        self.owners: dict[int, Any] = {}
        """id(an instance's __dict__) -> the instance (kept alive by ``instances``)"""
        self.types: list[tuple[Any, type, str]] = []
        self.known_fns: set[int] = set()
        self.known_values: set[int] = set()
        self.known_codes: set[int] = set()
        self.class_values: dict[tuple[int, str], Any] = {}
        self._classes_seen: set[int] = set()
        self._torch = torch_dir()
        self._take(ctx)

    # -- building ----------------------------------------------------------------------

    def _take(self, ctx: GuardContext) -> None:
        torch = sys.modules.get("torch")
        if torch is not None:
            self._class("torch.Tensor", torch.Tensor, True)
            self._module("torch", torch, _TORCH_NAMES)
            for name in _scope_modules():
                self._module(name, sys.modules[name], None)
            for modname, names in _GLOBAL_HOOKS:
                module = sys.modules.get(modname)
                for name in names if module is not None else ():
                    self._slot(
                        module.__dict__, name, module.__dict__.get(name), f"{modname}.{name}"
                    )
                    self._hooks(module, name, f"{modname}.{name}")
        self._objects(ctx)

    def _objects(self, ctx: GuardContext) -> None:
        model = ctx.model
        if model is not None and hasattr(model, "named_modules"):
            for name, module in model.named_modules():
                where = f"model.{name}" if name else "model"
                self._instance(module, where)
                for hook in _MODULE_HOOKS:
                    self._hooks(module, hook, f"{where}.{hook}")
        for name, param in ctx.named_parameters:
            for hook in _PARAM_HOOKS:
                self._hooks(param, hook, f"parameter {name}.{hook}")
        if ctx.optimizer is not None:
            self._instance(ctx.optimizer, "optimizer")
            for hook in _OPTIMIZER_HOOKS:
                self._hooks(ctx.optimizer, hook, f"optimizer.{hook}")
        loader = ctx.dataloader
        extras = [(ctx.scheduler, "scheduler"), (loader, "dataloader")]
        for attr in ("sampler", "batch_sampler", "dataset"):
            extras.append((getattr(loader, attr, None), f"dataloader.{attr}"))
        for obj, where in extras:
            if obj is not None:
                self._instance(obj, where)

    def _module(self, modname: str, module: Any, names: tuple[str, ...] | None) -> None:
        mapping = module.__dict__
        for name in names if names is not None else list(mapping):
            value = mapping.get(name, _MISSING)
            if value is _MISSING or name.startswith("__") or isinstance(value, types.ModuleType):
                continue
            if not callable(value):
                continue
            where = f"{modname}.{name}"
            self._slot(mapping, name, value, where, _source_of(module, name))
            if isinstance(value, type) and value.__module__.partition(".")[0] == "torch":
                self._class(where, value, True)

    def _class(self, where: str, cls: type, in_torch: bool) -> None:
        if id(cls) in self._classes_seen or cls.__flags__ & _IMMUTABLE_TYPE:
            return
        self._classes_seen.add(id(cls))
        mapping = cls.__dict__
        for name, value in list(mapping.items()):
            if _is_code_attr(value) and name not in ("__class__", "__base__"):
                owner = sys.modules.get(cls.__module__) if in_torch else None
                self._slot(mapping, name, value, f"{where}.{name}", _source_of(owner, name))
                self.class_values[id(cls), name] = value
        self.classes.append((mapping, frozenset(mapping), where, cls))

    def _instance(self, obj: Any, where: str) -> None:
        """The object's class (and its bases), and methods shadowed on the instance."""
        cls = type(obj)
        self.types.append((obj, cls, where))
        for base in cls.__mro__[:-1]:
            in_torch = base.__module__.partition(".")[0] == "torch"
            self._class(f"{base.__module__}.{base.__qualname__}", base, in_torch)
        mapping = getattr(obj, "__dict__", None)
        if not isinstance(mapping, dict):
            return
        for name, value in list(mapping.items()):
            if callable(value) and hasattr(cls, name):
                self._slot(mapping, name, value, f"{where}.{name}")
        self.instances.append((obj, mapping, frozenset(mapping), where))
        self.owners[id(mapping)] = obj

    def _slot(
        self,
        mapping: Mapping[str, Any],
        name: str,
        value: Any,
        where: str,
        torch_name: tuple[str, str] | None = None,
    ) -> None:
        self.slots.append((mapping, name, value, where))
        self.known_values.add(id(value))
        for fn in reachable_functions(value):
            if id(fn) in self.known_fns:
                continue
            self.known_fns.add(id(fn))
            self.fns.append(_fn_state(fn, where, torch_name))
            if fn.__code__.co_filename.startswith(self._torch):
                self.known_codes.update(id(c) for c in iter_code(fn.__code__))

    def _hooks(self, owner: Any, attr: str, where: str) -> None:
        hooks = getattr(owner, attr, None)
        items = tuple(hooks.items()) if isinstance(hooks, Mapping) else ()
        self.hooks.append((owner, attr, hooks, items, where))

    # -- comparing ---------------------------------------------------------------------

    def compare(self, ctx: GuardContext) -> list[_Change]:
        """Every difference from the snapshot, classified (accepted or an alert)."""
        changes: list[_Change] = []
        for mapping, name, value, where in self.slots:
            now = mapping.get(name, _MISSING)
            if now is not value:
                owner = self.owners.get(id(mapping))
                inherited = () if owner is None else self._inherited(type(owner).__mro__, name)
                honest = None
                if now is not _MISSING and owner is not None:
                    honest = accepted(name, now, owner, inherited, value)
                if honest:
                    evidence = {"old": describe(value), "new": describe(now)}
                    changes.append(_Change(where, "", Severity.INFO, evidence, honest))
                    continue
                changes.append(self._replaced(where, value, None if now is _MISSING else now))
        for st in self.fns:
            change = self._fn_changed(st)
            if change is not None:
                changes.append(change)
        for mapping, keys, where, _cls in self.classes:
            if len(mapping) != len(keys) or not keys.issuperset(mapping):
                changes.extend(self._added(mapping, keys, where, _cls.__mro__[1:]))
        for obj, mapping, keys, where in self.instances:
            if len(mapping) != len(keys) or not keys.issuperset(mapping):
                changes.extend(self._added(mapping, keys, where, type(obj).__mro__, obj))
        for obj, cls, where in self.types:
            if type(obj) is not cls:
                changes.append(
                    _Change(
                        f"{where}.__class__",
                        f"the class of {where} was swapped: {cls.__qualname__} -> "
                        f"{type(obj).__qualname__}",
                        Severity.CRITICAL,
                        {"old": describe(cls), "new": describe(type(obj))},
                    )
                )
        for owner, attr, hooks, items, where in self.hooks:
            now = getattr(owner, attr, None)
            if now is not hooks or (
                now is not None and (len(now) != len(items) or _items_differ(now, items))
            ):
                changes.extend(_hook_changes(ctx, now, items, where))
        return changes

    def _replaced(
        self, where: str, old: Any, new: Any, inherited: tuple[Any, ...] = (None,)
    ) -> _Change:
        """Classify ``old`` -> ``new`` at ``where`` (``old`` None: an addition shadowing
        what is ``inherited`` now or was at the snapshot; ``new`` None: a deletion)."""
        evidence = {"old": describe(old), "new": describe(new)}
        wraps, wrapped = own_original(new), own_original(old)
        if wraps is not None and wraps is old:
            return _Change(where, "", Severity.INFO, evidence, "trainguard wrapper installed")
        if wrapped is not None and wrapped is new:
            return _Change(where, "", Severity.INFO, evidence, "trainguard wrapper removed")
        if new is not None and self.vouched(new, inherited if old is None else (old,)):
            return _Change(where, "", Severity.INFO, evidence, "torch's own wrapper")
        if new is None:
            message = f"{where} was deleted"
        else:
            info = evidence["new"]
            origin = f" ({info.get('qualname')} at {info['file']})" if "file" in info else ""
            message = f"{where} was replaced{origin}"
        return _Change(where, message, Severity.CRITICAL, evidence)

    def _fn_changed(self, st: _Fn) -> _Change | None:
        fn = st.fn
        what = None
        if fn.__code__ is not st.code:
            what = "code"
        elif fn.__defaults__ is not st.defaults or not _same_kwdefaults(fn, st.kwdefaults):
            what = "default arguments"
        else:
            for cell, content in st.cells:
                try:
                    now = cell.cell_contents
                except ValueError:
                    now = None
                if now is not content:
                    what = "closure"
                    break
        if what is None:
            return None
        where = st.where if st.where.endswith(fn.__name__) else f"{st.where} ({fn.__qualname__})"
        evidence = {
            "qualname": fn.__qualname__,
            "module": fn.__module__,
            "old": {
                "file": f"{st.code.co_filename}:{st.code.co_firstlineno}",
                "sha256": code_digest(st.code),
            },
            "new": describe(fn),
        }
        return _Change(
            where, f"the {what} of {where} was replaced in place", Severity.CRITICAL, evidence
        )

    def _added(
        self,
        mapping: Mapping[str, Any],
        keys: frozenset[str],
        where: str,
        mro: tuple[type, ...],
        instance: Any = None,
    ) -> list[_Change]:
        """New code in a class dict or on an instance. Only a name that shadows something
        (an inherited method, or the class's method for an instance) changes what existing
        code calls; a brand-new name (transformers adds ``nn.Module.smart_apply``) cannot.
        """
        out = []
        for name in set(mapping) - keys:
            value = mapping.get(name)
            if not _is_code_attr(value):
                continue
            where_name = f"{where}.{name}"
            if not _shadows(mro, name):
                info = {"new": describe(value)}
                out.append(_Change(where_name, "", Severity.INFO, info, "a new name"))
                continue
            inherited = self._inherited(mro, name)
            honest = None if instance is None else accepted(name, value, instance, inherited)
            if honest:
                out.append(_Change(where_name, "", Severity.INFO, {"new": describe(value)}, honest))
                continue
            change = self._replaced(where_name, None, value, inherited)
            if change.accepted is None:
                tail = change.message.partition("replaced")[2]
                change = _Change(
                    where_name,
                    f"{where_name} was added, shadowing the inherited one{tail}",
                    change.severity,
                    change.evidence,
                )
            out.append(change)
        return out

    def _inherited(self, mro: tuple[type, ...], name: str) -> tuple[Any, Any]:
        now = next(vars(base)[name] for base in mro if name in vars(base))
        then = next(
            (self.class_values[id(b), name] for b in mro if (id(b), name) in self.class_values),
            now,
        )
        return now, then

    def vouched(self, new: Any, old: tuple[Any, ...]) -> bool:
        """``new`` (now where ``old`` was) is torch's own rewrapping: a fresh function made
        by torch's code (verified against its source) that wraps ``old`` and nothing but
        known functions, trainguard wrappers and torch objects. A known function moved to
        another name is not (``F.gelu = F.relu``), nor is any other code."""
        if isinstance(new, staticmethod | classmethod):
            new = new.__func__
        if id(new) in self.known_fns or not self._torch_made(new):
            return False
        inner = self._wrapped(new, 0)
        if inner is None:
            return False
        return all(o is None for o in old) or any(item is o for item in inner for o in old)

    def _torch_made(self, fn: Any) -> bool:
        if not isinstance(fn, types.FunctionType):
            return False
        code = fn.__code__
        if id(code) in self.known_codes:
            return True
        return code.co_filename.startswith(self._torch) and self._index.verify(code) == "ok"

    def _wrapped(self, fn: types.FunctionType, depth: int) -> list[Any] | None:
        """What ``fn`` closes over and wraps, through nested torch-made wrappers; None when
        any of it is not acceptable."""
        if depth > 8:
            return None
        found: list[Any] = []
        items = [c for _, c in _fn_state(fn, "").cells]
        wrapped = fn.__dict__.get("__wrapped__")
        if wrapped is not None:
            items.append(wrapped)
        for item in items:
            target = item.__func__ if isinstance(item, types.MethodType) else item
            found.append(target)
            if id(target) in self.known_fns or own_original(target) is not None:
                continue
            if isinstance(target, types.FunctionType):
                if not self._torch_made(target):
                    return None
                deeper = self._wrapped(target, depth + 1)
                if deeper is None:
                    return None
                found.extend(deeper)
            elif not (
                isinstance(target, type | weakref.ReferenceType)
                or id(target) in self.known_values
                or _from_torch(target)
            ):
                return None
        return found


def _from_torch(obj: Any) -> bool:
    """An object of a torch class, or one of torch's C functions (``torch._C._is_tracing``)."""
    if type(obj).__module__.partition(".")[0] == "torch":
        return True
    module = (
        getattr(obj, "__module__", None) if isinstance(obj, types.BuiltinFunctionType) else None
    )
    return isinstance(module, str) and module.partition(".")[0] == "torch"


def _shadows(mro: tuple[type, ...], name: str) -> bool:
    return any(name in vars(base) for base in mro)


def _same_kwdefaults(fn: types.FunctionType, expected: tuple[tuple[str, Any], ...] | None) -> bool:
    now = fn.__kwdefaults__
    if now is None or expected is None:
        return now is None and expected is None
    return len(now) == len(expected) and all(now.get(k, _MISSING) is v for k, v in expected)


def _items_differ(now: Mapping[Any, Any], items: tuple[tuple[Any, Any], ...]) -> bool:
    return any(now.get(k, _MISSING) is not v for k, v in items)


def _own_hook(ctx: GuardContext, hook: Any) -> bool:
    owner = getattr(hook, "__self__", None)
    if owner is None:
        return own_original(hook) is not None
    return owner is ctx or any(owner is c for c in getattr(ctx, "checks", ()))


def _hook_changes(
    ctx: GuardContext, now: Any, items: tuple[tuple[Any, Any], ...], where: str
) -> list[_Change]:
    current = dict(now.items()) if isinstance(now, Mapping) else {}
    old = dict(items)
    out = []
    for key, hook in current.items():
        if old.get(key, _MISSING) is hook:
            continue
        evidence = {"hook": describe(hook), "key": repr(key)}
        if _own_hook(ctx, hook):
            out.append(_Change(where, "", Severity.INFO, evidence, _OWN_HOOK))
        elif is_library(code_file(hook) or "<unknown>"):
            # transformers' enable_input_require_grads, accelerate, PEFT, torch's own
            # parametrizations: installed code, verified on disk like the rest
            reason = "a hook from an installed library"
            out.append(_Change(where, "", Severity.INFO, evidence, reason))
        else:
            info = describe(hook)
            out.append(
                _Change(
                    where,
                    f"a hook was registered on {where}: {info.get('qualname')} "
                    f"({info.get('file', info.get('module'))})",
                    Severity.HIGH,
                    evidence,
                )
            )
    removed = [k for k in old if k not in current]
    if removed:
        out.append(
            _Change(where, "", Severity.INFO, {"removed": len(removed)}, "hooks were removed")
        )
    return out


def _scope_modules() -> list[str]:
    names = [
        m
        for m in list(sys.modules)
        if any(m == p or m.startswith(p + ".") for p in _PACKAGES)
        and not any(m == s or m.startswith(s + ".") for s in _SKIP)
    ]
    names.extend(m for m in _MODULES if m in sys.modules)
    return sorted(set(names), key=lambda m: (m.count("."), m))


class CodeCheck(Check):
    """Watch torch's training code, the model's classes and all hooks for replacement.

    ``verify_source=False`` skips the comparison with the source files on disk (the
    background thread), for hosts where compiling the library once is unwelcome.
    """

    name = "code"

    def __init__(self, *, verify_source: bool = True) -> None:
        self._verify_source = verify_source
        self._snapshot: _Snapshot | None = None
        self._calls = 0
        self._checked_first = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.verified = threading.Event()
        self._index = SourceIndex()  # the main thread's, for vouching torch's rewrapping

    def attach(self, ctx: GuardContext) -> None:
        started = time.perf_counter()
        self._snapshot = _Snapshot(ctx, self._index)
        snap = self._snapshot
        opt = ctx.optimizer
        step = getattr(type(opt), "step", None)
        if hasattr(opt, "register_step_pre_hook") and not getattr(step, "hooked", False):
            ctx.emit(
                Rule.MONKEYPATCH,
                Severity.HIGH,
                f"{type(opt).__qualname__}.step is not torch's hooked step: optimizer step "
                "hooks (and the guard's exact checks) will not run",
                where=f"{type(opt).__module__}.{type(opt).__qualname__}.step",
                evidence={"step": describe(step)},
            )
        ctx.event(
            "code.snapshot",
            {
                "names": len(snap.slots),
                "functions": len(snap.fns),
                "classes": len(snap.classes),
                "hooks": len(snap.hooks),
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        self.verified.clear()
        if self._verify_source:
            self._thread = threading.Thread(
                target=self._verify, args=(ctx, snap), name="trainguard-code-verify", daemon=True
            )
            self._thread.start()
        else:
            self.verified.set()

    def before_step(self, ctx: GuardContext) -> None:
        if not self._checked_first and ctx.current_step == 1:
            self._checked_first = True
            self.check_now(ctx)

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        self._calls += 1
        if self._calls % ctx.every == 0:
            self.check_now(ctx)

    def rebaseline(self, ctx: GuardContext) -> None:
        if self._snapshot is None:
            return
        for change in self._snapshot.compare(ctx):
            if change.accepted == _OWN_HOOK:
                continue
            ctx.event(
                "code.accepted",
                {
                    "where": change.where,
                    "reason": change.accepted or "authorized",
                    **change.evidence,
                },
            )
        self._snapshot = _Snapshot(ctx, self._index)

    def close(self, ctx: GuardContext) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def check_now(self, ctx: GuardContext) -> None:
        """Compare with the snapshot now; report, then take the changes as the baseline."""
        if self._snapshot is None or ctx.is_authorized:
            return
        changes = self._snapshot.compare(ctx)
        if not changes:
            return
        for change in changes:
            if change.accepted == _OWN_HOOK:
                continue
            if change.accepted is not None:
                ctx.event(
                    "code.accepted",
                    {"where": change.where, "reason": change.accepted, **change.evidence},
                )
            else:
                ctx.emit(
                    Rule.MONKEYPATCH,
                    change.severity,
                    change.message,
                    where=change.where,
                    evidence=change.evidence,
                )
        self._snapshot = _Snapshot(ctx, self._index)

    def wait_verified(self, timeout: float | None = None) -> bool:
        """Block until the comparison with the source on disk has finished."""
        return self.verified.wait(timeout)

    # -- the comparison with the source on disk (background thread) --------------------

    def _verify(self, ctx: GuardContext, snap: _Snapshot) -> None:
        try:
            self._verify_all(ctx, snap)
        except Exception as exc:  # the thread must report, never die silently
            log.exception("trainguard: verifying the source of the watched code failed")
            _safe(
                ctx.emit,
                Rule.GUARD_ERROR,
                Severity.MEDIUM,
                f"check code failed verifying source: {type(exc).__name__}: {exc}",
                where="check:code",
            )
        finally:
            self.verified.set()

    def _verify_all(self, ctx: GuardContext, snap: _Snapshot) -> None:
        started = time.perf_counter()
        index = SourceIndex()
        counts = dict.fromkeys(("ok", "mismatch", "missing", "unverifiable", "foreign", "added"), 0)
        for st in snap.fns:
            if self._stop.is_set():
                return
            code = st.code
            status = index.verify(code)
            counts[status] += 1
            library = is_library(code.co_filename)
            if status in ("mismatch", "missing") and library:
                evidence = {
                    "qualname": code.co_qualname,
                    "file": f"{code.co_filename}:{code.co_firstlineno}",
                    "sha256": code_digest(code),
                    "status": status,
                }
                _safe(
                    ctx.emit,
                    Rule.MONKEYPATCH,
                    Severity.CRITICAL,
                    f"the code running as {st.where} ({code.co_qualname}) does not match its "
                    f"source file {code.co_filename} (a patched .pyc, or a patch made before "
                    "the guard started)",
                    where=st.where,
                    evidence=evidence,
                )
            elif st.torch_name is not None and not trusted_origin(st.fn):
                source, name = st.torch_name
                if name not in index.names(source):  # not torch's name: an addition
                    counts["added"] += 1
                    continue
                counts["foreign"] += 1
                _safe(
                    ctx.emit,
                    Rule.MONKEYPATCH,
                    Severity.CRITICAL,
                    f"{st.where} runs code from outside torch: {code.co_qualname} at "
                    f"{code.co_filename}:{code.co_firstlineno} (patched before the guard "
                    "started)",
                    where=st.where,
                    evidence={"new": describe(st.fn)},
                )
        ctx.event(
            "code.verified",
            {
                **counts,
                "functions": len(snap.fns),
                "files": index.compiled,
                "seconds": round(time.perf_counter() - started, 3),
            },
        )


def _safe(emit: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Emit from the thread. A guard closed meanwhile may have closed its ledger; the
    thread must not die with a traceback on stderr for that."""
    try:
        emit(*args, **kwargs)
    except Exception:
        log.error("trainguard: the code check could not report from its thread", exc_info=True)
