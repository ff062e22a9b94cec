"""``protect()``: every load in the process is scanned, then restricted to what the scan allowed.

The insider's backdoor ran when a colleague resumed training, through a loading path nobody
thought of. ``protect()`` replaces every pickle entry point a training process uses (the
table in ``trainguard.load._entrypoints``) with one that scans the bytes first and then runs
the *restricted* unpickler: ``find_class`` returns only the globals the scan of that very
file allowed (``trainguard.load._restricted``), inside an audit window that refuses every
effect (``trainguard.load.audithook``). A file judged safe is no longer handed to an
ordinary unpickler, so a scanner miss is a refused global, not code execution.

Modules imported later are patched as they are imported (an import hook), so the order of
``protect()`` and ``import torch`` does not matter. ``unprotect()`` (or leaving
``protected()``) restores exactly the objects that were there. The Hugging Face ``Trainer``
resumes through ``torch.load``, so it is covered.

Functions bound before ``protect()`` ran (``from pickle import loads`` executed earlier, an
``Unpickler`` subclass defined earlier) still point at the originals and cannot be covered.

State is one frozen record rebound on every change, so the seal checked after each load
window (``trainguard.load._seal``) notices if code inside a load swapped it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any

from trainguard.findings import Finding
from trainguard.load import audithook
from trainguard.scan import Limits, Policy

__all__ = ["is_protected", "original", "protect", "protected", "unprotect"]


@dataclass(frozen=True)
class Settings:
    policy: Policy | None
    limits: Limits | None
    sink: Callable[[Finding], None] | None
    trusted: bool


@dataclass(frozen=True)
class _State:
    depth: int = 0
    settings: Settings | None = None
    patches: tuple[tuple[Any, str, Any, Any, bool], ...] = ()
    """(owner, attribute, original, wrapper, whether the owner itself held the original)"""
    finder: Any = None


_lock = threading.RLock()
_state = _State()


def settings() -> Settings | None:
    """The active settings, or None when nothing is protected (wrappers pass through)."""
    return _state.settings if _state.depth else None


def sink() -> Callable[[Finding], None] | None:
    """Where findings of the active protection go (None when unprotected or unset)."""
    current = settings()
    return current.sink if current is not None else None


def depth() -> int:
    return _state.depth


def set_depth(value: int) -> None:
    """Put back a depth changed behind ``protect()``'s back (the seal's repair)."""
    global _state
    _state = replace(_state, depth=value)


def patched() -> Iterator[tuple[Any, str, Any]]:
    """(owner, attribute, wrapper) for every attribute replaced now."""
    for owner, attr, _original, wrapper, _own in _state.patches:
        yield owner, attr, wrapper


def _owner(module: ModuleType, dotted: str) -> tuple[Any, str]:
    obj: Any = module
    *parents, attr = dotted.split(".")
    for p in parents:
        obj = getattr(obj, p)
    return obj, attr


def _patch_module(name: str) -> None:
    global _state
    from trainguard.load._entrypoints import TARGETS

    module = sys.modules.get(name)
    if module is None:
        return
    added = []
    for dotted, factory in TARGETS[name]:
        try:
            owner, attr = _owner(module, dotted)
            current = getattr(owner, attr)
        except AttributeError:
            continue
        if "__trainguard_original__" in getattr(current, "__dict__", {}):
            continue  # already ours (torch.load and torch.serialization.load are one object)
        wrapped = factory(current)
        own = not isinstance(owner, type) or attr in vars(owner)
        setattr(owner, attr, wrapped)
        added.append((owner, attr, current, wrapped, own))
    _state = replace(_state, patches=(*_state.patches, *added))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches a target module right after it is first imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        from trainguard.load._entrypoints import TARGETS

        if fullname not in TARGETS or fullname in sys.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, fullname)
                return spec
        return None


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner: Any, name: str) -> None:
        self.inner = inner
        self.name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self.inner.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        self.inner.exec_module(module)
        with _lock:
            if _state.depth > 0:
                _patch_module(self.name)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)


def _import_scanner() -> None:
    """Import every module of ``trainguard.scan`` now, before the unpicklers are replaced."""
    import pkgutil

    import trainguard.scan

    for info in pkgutil.walk_packages(trainguard.scan.__path__, "trainguard.scan."):
        importlib.import_module(info.name)


def protect(
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    on_finding: Callable[[Finding], None] | None = None,
    trusted: bool = False,
) -> None:
    """Route every load in this process through the scanner (idempotent, counted)."""
    global _state
    with _lock:
        if _state.depth:
            _state = replace(_state, depth=_state.depth + 1)
            return
        audithook.install()
        # ForkingPickler binds pickle.loads when first imported; bind the real one, so that
        # DataLoader workers' batches never pass through the scanner.
        import multiprocessing.reduction  # noqa: F401

        _import_scanner()  # its judges subclass pickle's unpicklers: the real ones

        from trainguard.load._entrypoints import TARGETS

        finder = _PatchOnImport()
        sys.meta_path.insert(0, finder)
        _state = _State(1, Settings(policy, limits, on_finding, trusted), (), finder)
        for name in TARGETS:
            _patch_module(name)


def unprotect() -> None:
    """Undo one ``protect()``; the last one restores every original object exactly."""
    global _state
    with _lock:
        if _state.depth == 0:
            return
        if _state.depth > 1:
            _state = replace(_state, depth=_state.depth - 1)
            return
        for owner, attr, original_obj, wrapped, own in reversed(_state.patches):
            if getattr(owner, attr, None) is wrapped:
                if own:
                    setattr(owner, attr, original_obj)
                else:
                    delattr(owner, attr)  # it was inherited: inherit it again
        if _state.finder in sys.meta_path:
            sys.meta_path.remove(_state.finder)
        _state = _State()


@contextlib.contextmanager
def protected(**kwargs: Any) -> Iterator[None]:
    """``protect()`` for the duration of a ``with`` block."""
    protect(**kwargs)
    try:
        yield
    finally:
        unprotect()


def is_protected() -> bool:
    return bool(_state.depth)


def original(owner: Any, attr: str) -> Any:
    """The unwrapped object behind ``owner.attr`` (the attribute itself if not wrapped)."""
    current = getattr(owner, attr, None)
    return getattr(current, "__trainguard_original__", current)
