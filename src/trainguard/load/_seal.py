"""After every load window: was trainguard itself changed from inside the load?

Rebinding a module attribute (``trainguard.load._restricted.scan_source = ...``,
``builtins.isinstance = ...``) or a class attribute raises no audit event in CPython 3.11,
so the audit window cannot refuse it; such a change would not help the load it happens in
(the window and the table are already set) but would disarm the *next* load. So the loader
takes a snapshot of the namespaces the load path runs on before each window (trainguard's
``load``/``scan`` modules, ``errors``, ``findings``, their classes, ``builtins``, and every
attribute ``protect()`` replaced) and compares it, by identity, after the window: what was
changed is put back and the load fails with a ``runtime.monkeypatch`` cause.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from trainguard.errors import LoadBlocked
from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["snapshot", "tampered"]

_PREFIXES = ("trainguard.load", "trainguard.scan", "trainguard.errors", "trainguard.findings")
_VOLATILE = MappingProxyType(  # names other threads rebind on purpose (the guard's recordings)
    {
        "trainguard.load._auditrecord": frozenset(
            {"_recorders", "_recordable", "_fork_handler", "_next"}
        ),
        "builtins": frozenset({"_"}),
    }
)


def _modules() -> list[tuple[str, Any]]:
    found = [
        (name, mod)
        for name, mod in list(sys.modules.items())
        if name.startswith(_PREFIXES) and mod is not None
    ]
    return [("builtins", builtins), *found]


def snapshot() -> Callable[[], list[str]]:
    """Record the namespaces now; the returned function restores and names what changed.

    It runs after code it does not trust, so it looks nothing up at call time: every
    builtin and helper it uses is captured here, before the window."""
    from trainguard.load import _protect

    spaces: list[tuple[str, Any, dict[str, Any], frozenset[str]]] = []
    for name, mod in _modules():
        space = vars(mod)
        spaces.append((name, mod, dict(space), _VOLATILE.get(name, frozenset())))
        for attr, value in list(space.items()):
            if isinstance(value, type) and value.__module__ == name:
                spaces.append((f"{name}.{attr}", value, dict(vars(value)), frozenset()))
    patches = list(_protect.patched())
    depth = _protect.depth()
    kind, is_type, listed, namespace = type, isinstance, list, vars
    put, drop, lookup = setattr, delattr, getattr
    depth_of, set_depth, missing = _protect.depth, _protect.set_depth, object()

    def restore(owner: Any, key: Any, value: Any) -> None:
        if is_type(owner, kind):
            if value is missing:
                drop(owner, key)
            else:
                put(owner, key, value)
        elif value is missing:
            del namespace(owner)[key]
        else:
            namespace(owner)[key] = value

    def verify() -> list[str]:
        changed: list[str] = []
        for label, owner, before, skip in spaces:
            now = namespace(owner)
            keys = listed(now)
            odd = False
            for key in keys:  # a foreign key could run its __hash__/__eq__ in a lookup
                if kind(key) is not str:
                    odd = True
            if odd and not is_type(owner, kind):
                changed.append(label + " (a key that is not a str)")
                now.clear()
                now.update(before)
                continue
            for key in keys:
                if kind(key) is str and key not in before and key not in skip:
                    changed.append(label + "." + key + " (added)")
                    restore(owner, key, missing)
            for key, value in before.items():
                if key not in skip and now.get(key, missing) is not value:
                    changed.append(label + "." + key)
                    restore(owner, key, value)
        for owner, attr, wrapped in patches:
            if lookup(owner, attr, None) is not wrapped:
                changed.append(attr + " of " + kind(owner).__name__ + " (unwrapped)")
                put(owner, attr, wrapped)
        if depth_of() != depth:
            changed.append("protect() depth")
            set_depth(depth)
        return changed

    return verify


def tampered(path: str, changed: list[str], sink: Callable[[Finding], None] | None) -> LoadBlocked:
    """The error (and its reported finding) for a load that changed trainguard."""
    shown = ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
    message = f"the load of {path} changed trainguard itself (put back): {shown}"
    finding = Finding(
        Rule.LOAD_BLOCKED,
        Severity.CRITICAL,
        message,
        Location(path),
        {"cause": Rule.MONKEYPATCH.value, "changed": changed},
    )
    from trainguard.load._restricted import report

    report(finding, sink)
    return LoadBlocked(message, path=path, rule=Rule.MONKEYPATCH.value, finding=finding)
