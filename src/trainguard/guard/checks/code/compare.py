"""Compare the snapshot with what is there now, classify each difference, absorb it.

A difference is an alert unless it is one of the honest rewrites torch and the libraries
around it make (see the package docstring): torch's own lazy wrappers (a fresh function
made by torch's verified code that wraps what stood there before and nothing but known
code), trainguard's own wrappers (the registry in ``_codehash``), a brand-new name that
shadows nothing, the exact instance writes ``_known_patches`` recognises, and hooks of
verified library code. Every difference is then taken into the baseline, so that it is
reported once, at the step it was first seen.

*What it trusts:* the snapshot (``snapshot``), ``_known_patches`` for accelerate's exact
patch, and ``SourceIndex.verify`` for "made by torch's own code".
"""

from __future__ import annotations

import builtins
import types
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainguard.findings import Severity
from trainguard.guard.checks._codehash import code_digest, describe, own_original
from trainguard.guard.checks._known_patches import accepted
from trainguard.guard.checks.base import GuardContext
from trainguard.guard.checks.code.hooks import entries, judge_hook
from trainguard.guard.checks.code.origin import Origins
from trainguard.guard.checks.code.snapshot import Fn, Keys, Snapshot, fn_state, is_code_attr

__all__ = ["OWN_HOOK", "Change", "compare"]

MISSING = object()
OWN_HOOK = "the guard's own hook"


@dataclass(frozen=True, slots=True)
class Change:
    where: str
    message: str
    severity: Severity
    evidence: dict[str, Any]
    accepted: str | None = None  # why it is benign; None: an alert


def compare(snap: Snapshot, ctx: GuardContext, origins: Origins) -> list[Change]:
    """Every difference from the snapshot, classified; the snapshot then holds what is
    there now."""
    changes: list[Change] = []
    gone: list[int] = []
    for i, slot in enumerate(snap.slots):
        now = slot.mapping.get(slot.name, MISSING)
        if now is slot.value:
            continue
        owner = snap.owners.get(id(slot.mapping))
        honest = None
        if now is not MISSING and owner is not None:
            inherited = _inherited(snap, type(owner).__mro__, slot.name)
            honest = accepted(slot.name, now, owner, inherited, slot.value)
        if honest:
            evidence = {"old": describe(slot.value), "new": describe(now)}
            changes.append(Change(slot.where, "", Severity.INFO, evidence, honest))
        else:
            new = None if now is MISSING else now
            changes.append(_replaced(snap, slot.where, slot.value, new))
        if now is MISSING:
            gone.append(i)
            continue
        slot.value = now  # (``class_values`` keeps what the class held at the snapshot)
        snap.learn(now, slot.where, slot.torch_name, slot.owner, slot.step)
    for i in reversed(gone):
        del snap.slots[i]
    for i, st in enumerate(snap.fns):
        change = _fn_changed(st)
        if change is not None:
            changes.append(change)
            snap.fns[i] = fn_state(st.fn, st.where, st.torch_name, st.owner, st.step)
    for ks in snap.keysets:
        mapping = ks.mapping
        if len(mapping) != len(ks.keys) or not ks.keys.issuperset(mapping):
            changes.extend(_added(snap, ks))
            ks.keys = frozenset(mapping)
    for i, (obj, cls, where) in enumerate(snap.types):
        if type(obj) is not cls:
            changes.append(
                Change(
                    f"{where}.__class__",
                    f"the class of {where} was swapped: {cls.__qualname__} -> "
                    f"{type(obj).__qualname__}",
                    Severity.CRITICAL,
                    {"old": describe(cls), "new": describe(type(obj))},
                )
            )
            snap.types[i] = (obj, type(obj), where)
    for hs in snap.hooks:
        now = hs.read()
        items = entries(now)
        if now is not hs.container or len(items) != len(hs.items) or _items_differ(items, hs.items):
            changes.extend(_hook_changes(ctx, snap, origins, items, hs.items, hs.where))
            hs.container, hs.items = now, items
    return changes


def _replaced(
    snap: Snapshot, where: str, old: Any, new: Any, inherited: tuple[Any, ...] = (None,)
) -> Change:
    """Classify ``old`` -> ``new`` at ``where`` (``old`` None: an addition shadowing
    what is ``inherited`` now or was at the snapshot; ``new`` None: a deletion)."""
    evidence = {"old": describe(old), "new": describe(new)}
    wraps, wrapped = own_original(new), own_original(old)
    if wraps is not None and wraps is old:
        return Change(where, "", Severity.INFO, evidence, "trainguard wrapper installed")
    if wrapped is not None and wrapped is new:
        return Change(where, "", Severity.INFO, evidence, "trainguard wrapper removed")
    if new is not None and vouched(snap, new, inherited if old is None else (old,)):
        return Change(where, "", Severity.INFO, evidence, "torch's own wrapper")
    if new is None:
        message = f"{where} was deleted"
    else:
        info = evidence["new"]
        origin = f" ({info.get('qualname')} at {info['file']})" if "file" in info else ""
        message = f"{where} was replaced{origin}"
    return Change(where, message, Severity.CRITICAL, evidence)


def _fn_changed(st: Fn) -> Change | None:
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
    return Change(
        where, f"the {what} of {where} was replaced in place", Severity.CRITICAL, evidence
    )


def _added(snap: Snapshot, ks: Keys) -> list[Change]:
    """New names in a class, instance or module dict. Only a name that shadows something
    (an inherited method, the class's method for an instance, a builtin for a module's
    code) changes what existing code calls; a brand-new name (transformers adds
    ``nn.Module.smart_apply``) cannot. Each new callable joins the snapshot."""
    out = []
    mapping = ks.mapping
    for name in set(mapping) - ks.keys:
        value = mapping.get(name)
        where = f"{ks.where}.{name}"
        if ks.kind == "module":
            if callable(value) and hasattr(builtins, name) and not name.startswith("__"):
                msg = f"{where} was added, shadowing the builtin {name} in {ks.where}'s code"
                out.append(Change(where, msg, Severity.CRITICAL, {"new": describe(value)}))
            if callable(value) or isinstance(value, types.ModuleType):
                snap.add_slot(mapping, name, value, where, ks.step, None)
            continue
        if not is_code_attr(value):
            continue
        if ks.kind == "instance" and not hasattr(type(ks.obj), name):
            continue  # an instance attribute that shadows no method
        out.append(_judge_added(snap, ks, name, value, where))
        snap.add_slot(
            mapping, name, value, where, ks.step, None, ks.obj if ks.kind == "class" else None
        )
    return out


def _judge_added(snap: Snapshot, ks: Keys, name: str, value: Any, where: str) -> Change:
    mro = type(ks.obj).__mro__ if ks.kind == "instance" else ks.obj.__mro__[1:]
    if not any(name in vars(base) for base in mro):
        return Change(where, "", Severity.INFO, {"new": describe(value)}, "a new name")
    inherited = _inherited(snap, mro, name)
    instance = ks.obj if ks.kind == "instance" else None
    honest = None if instance is None else accepted(name, value, instance, inherited)
    if honest:
        return Change(where, "", Severity.INFO, {"new": describe(value)}, honest)
    change = _replaced(snap, where, None, value, inherited)
    if change.accepted is None:
        tail = change.message.partition("replaced")[2]
        change = Change(
            where,
            f"{where} was added, shadowing the inherited one{tail}",
            change.severity,
            change.evidence,
        )
    return change


def _inherited(snap: Snapshot, mro: tuple[type, ...], name: str) -> tuple[Any, Any]:
    now = next((vars(base)[name] for base in mro if name in vars(base)), None)
    then = next(
        (snap.class_values[id(b), name] for b in mro if (id(b), name) in snap.class_values),
        now,
    )
    return now, then


def vouched(snap: Snapshot, new: Any, old: tuple[Any, ...]) -> bool:
    """``new`` (now where ``old`` was) is torch's own rewrapping: a fresh function made
    by torch's code (verified against its source) that wraps ``old`` and nothing but
    known functions, trainguard wrappers and torch objects. A known function moved to
    another name is not (``F.gelu = F.relu``), nor is any other code."""
    if isinstance(new, staticmethod | classmethod):
        new = new.__func__
    if id(new) in snap.known_fns or not _torch_made(snap, new):
        return False
    inner = _wrapped(snap, new, 0)
    if inner is None:
        return False
    return all(o is None for o in old) or any(item is o for item in inner for o in old)


def _torch_made(snap: Snapshot, fn: Any) -> bool:
    if not isinstance(fn, types.FunctionType):
        return False
    code = fn.__code__
    if id(code) in snap.known_codes:
        return True
    return code.co_filename.startswith(snap.torch) and snap.index.verify(code) == "ok"


def _wrapped(snap: Snapshot, fn: types.FunctionType, depth: int) -> list[Any] | None:
    """What ``fn`` closes over and wraps, through nested torch-made wrappers; None when
    any of it is not acceptable."""
    if depth > 8:
        return None
    found: list[Any] = []
    items = [c for _, c in fn_state(fn, "").cells]
    wrapped = fn.__dict__.get("__wrapped__")
    if wrapped is not None:
        items.append(wrapped)
    for item in items:
        target = item.__func__ if isinstance(item, types.MethodType) else item
        found.append(target)
        if id(target) in snap.known_fns or own_original(target) is not None:
            continue
        if isinstance(target, types.FunctionType):
            if not _torch_made(snap, target):
                return None
            deeper = _wrapped(snap, target, depth + 1)
            if deeper is None:
                return None
            found.extend(deeper)
        elif not (
            isinstance(target, type | weakref.ReferenceType)
            or id(target) in snap.known_values
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


def _same_kwdefaults(fn: types.FunctionType, expected: tuple[tuple[str, Any], ...] | None) -> bool:
    now = fn.__kwdefaults__
    if now is None or expected is None:
        return now is None and expected is None
    return len(now) == len(expected) and all(now.get(k, MISSING) is v for k, v in expected)


def _items_differ(now: tuple[tuple[Any, Any], ...], then: tuple[tuple[Any, Any], ...]) -> bool:
    return any(a[0] != b[0] or a[1] is not b[1] for a, b in zip(now, then, strict=True))


def _hook_changes(
    ctx: GuardContext,
    snap: Snapshot,
    origins: Origins,
    now: tuple[tuple[Any, Any], ...],
    then: tuple[tuple[Any, Any], ...],
    where: str,
) -> list[Change]:
    old: Mapping[Any, Any] = dict(then)
    out = []
    for key, hook in now:
        if old.get(key, MISSING) is hook:
            continue
        verdict = judge_hook(ctx, hook, snap, origins, existing=False)
        evidence = {**verdict.evidence, "key": repr(key)}
        if verdict.kind == "own":
            out.append(Change(where, "", Severity.INFO, evidence, OWN_HOOK))
        elif verdict.kind == "adopted":
            reason = f"a hook from an installed library ({verdict.reason})"
            out.append(Change(where, "", Severity.INFO, evidence, reason))
        else:
            info = verdict.evidence["hook"]
            out.append(
                Change(
                    where,
                    f"a hook was registered on {where}: {info.get('qualname')} "
                    f"({info.get('file', info.get('module'))}): {verdict.reason}",
                    Severity.HIGH,
                    evidence,
                )
            )
    current = dict(now)
    removed = [k for k in old if k not in current]
    if removed:
        out.append(
            Change(where, "", Severity.INFO, {"removed": len(removed)}, "hooks were removed")
        )
    return out
