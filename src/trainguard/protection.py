"""``protect()``: every load in the process goes through the scanner first.

The insider's backdoor ran when a colleague resumed training, through a loading path nobody
thought of. ``protect()`` replaces the loaders a training process uses with wrappers that
scan the bytes before the real loader sees them:

=================================================  ======================================
``torch.load`` (and ``torch.serialization.load``)  every resume file: ``rng_state*.pth``,
                                                   ``optimizer.pt``, ``scheduler.pt``, ...
``pickle.load`` / ``pickle.loads``                 anything unpickled by hand
``numpy.load(..., allow_pickle=True)``             object arrays
``joblib.load``                                    scikit-learn models
``FileSystemReader.read_metadata``                 ``torch.distributed.checkpoint``
=================================================  ======================================

Modules imported later are patched as they are imported (an import hook), so the order of
``protect()`` and ``import torch`` does not matter. ``unprotect()`` (or leaving
``protected()``) restores exactly the objects that were there. Loads that run a full
unpickler (``weights_only=False``, ``pickle``, ``joblib``) also run under the blocking audit
hook. The Hugging Face ``Trainer`` resumes through ``torch.load``, so it is covered.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import io
import sys
import threading
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from trainguard import audithook
from trainguard.errors import LimitExceeded
from trainguard.findings import Finding
from trainguard.loader import FindingSink, Source, check
from trainguard.scan import Limits, Policy

__all__ = ["is_protected", "original", "protect", "protected", "unprotect"]


class _Settings:
    def __init__(
        self, policy: Policy | None, limits: Limits | None, sink: FindingSink | None, trusted: bool
    ) -> None:
        self.policy = policy
        self.limits = limits
        self.sink = sink
        self.trusted = trusted


_lock = threading.RLock()
_state: dict[str, Any] = {"depth": 0, "settings": None, "patches": [], "finder": None}
_inside = threading.local()  # a wrapper calling another wrapped loader must not scan twice


def _guard(source_arg: Any, full_unpickler: bool) -> Source | None:
    """Scan what a loader is about to read; raise ``LoadBlocked`` if it must not."""
    if getattr(_inside, "on", False):
        return None
    settings: _Settings = _state["settings"]
    source = Source(source_arg)
    result = source.scan(settings.policy, settings.limits)
    check(result, full_unpickler=full_unpickler, trusted=settings.trusted, sink=settings.sink)
    return source


@contextlib.contextmanager
def _loading(name: str, full_unpickler: bool) -> Iterator[None]:
    settings: _Settings = _state["settings"]
    previous = getattr(_inside, "on", False)
    _inside.on = True
    try:
        if full_unpickler:
            with audithook.guarding(name, on_finding=settings.sink):
                yield
        else:
            yield
    finally:
        _inside.on = previous


def _active() -> bool:
    """Wrappers captured by other modules (``from pickle import loads``) outlive
    ``unprotect()``; once it ran they pass straight through to the original."""
    return bool(_state["depth"])


def _rewind(source: Source | None, arg: Any) -> Any:
    """The argument to hand the real loader: the original, or a stream we emptied."""
    if source is None or source.path is not None or isinstance(arg, (bytes, bytearray)):
        return arg
    if getattr(source, "stream", None) is not None:
        return arg  # seekable: we read and seeked back
    return source.reopen()


def _wrap_torch_load(real: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active():
            return real(f, *args, **kwargs)
        weights_only = kwargs.get("weights_only")
        full = weights_only is False or kwargs.get("pickle_module") is not None
        source = _guard(f, full)
        with _loading(source.name if source else str(f), full):
            return real(_rewind(source, f), *args, **kwargs)

    load.__trainguard_original__ = real  # type: ignore[attr-defined]
    return load


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable())
    except (AttributeError, OSError, ValueError):
        return False


class _Recorder:
    """Reads through to a stream and keeps what it read."""

    def __init__(self, stream: Any, cap: int) -> None:
        self.stream = stream
        self.cap = cap
        self.data = bytearray()

    def _keep(self, chunk: bytes) -> bytes:
        self.data += chunk
        if len(self.data) > self.cap:
            raise LimitExceeded(f"pickle stream longer than {self.cap} bytes")
        return chunk

    def read(self, n: int = -1) -> bytes:
        return self._keep(self.stream.read(n))

    def readline(self, n: int = -1) -> bytes:
        return self._keep(self.stream.readline(n))


def _one_pickle(stream: Any) -> bytes:
    """Exactly one pickle's bytes from a stream that cannot seek back (a pipe, a socket), so
    the stream is left where ``pickle.load`` leaves it and the next load still works."""
    import pickletools

    settings: _Settings = _state["settings"]
    limits = settings.limits or Limits()
    rec = _Recorder(stream, limits.max_member_bytes)
    try:
        for op, _arg, _pos in pickletools.genops(rec):  # type: ignore[arg-type]
            if op.name == "STOP":
                break
    except ValueError:
        pass  # truncated or garbage: the scan of what was read reports it
    return bytes(rec.data)


def _wrap_full(
    real: Callable[..., Any], *, pickle_flag: str | None = None, one_pickle: bool = False
) -> Callable[..., Any]:
    """A loader that always (or with ``pickle_flag=True``) runs a full unpickler."""

    @functools.wraps(real)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active() or (pickle_flag is not None and not kwargs.get(pickle_flag, False)):
            return real(f, *args, **kwargs)  # numpy.load without allow_pickle is data only
        if one_pickle and hasattr(f, "read") and not _seekable(f):
            f = io.BytesIO(_one_pickle(f))  # leave the stream where pickle.load would
        source = _guard(f, True)
        with _loading(source.name if source else "<stream>", True):
            return real(_rewind(source, f), *args, **kwargs)

    load.__trainguard_original__ = real  # type: ignore[attr-defined]
    return load


def _wrap_read_metadata(real: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real)
    def read_metadata(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active():
            return real(self, *args, **kwargs)
        path = self._get_metadata_path(kwargs.get("rank"))
        if _is_local_file(path):
            _guard(path, True)
        with _loading(str(path), True):
            return real(self, *args, **kwargs)

    read_metadata.__trainguard_original__ = real  # type: ignore[attr-defined]
    return read_metadata


def _is_local_file(path: Any) -> bool:
    import os

    try:
        return os.path.isfile(os.fspath(path))
    except TypeError:
        return False


# module -> [(object path inside the module, wrapper factory)]
_TARGETS: dict[str, list[tuple[str, Callable[[Callable[..., Any]], Callable[..., Any]]]]] = {
    "pickle": [("load", functools.partial(_wrap_full, one_pickle=True)), ("loads", _wrap_full)],
    "torch.serialization": [("load", _wrap_torch_load)],
    "torch": [("load", _wrap_torch_load)],
    "numpy": [("load", functools.partial(_wrap_full, pickle_flag="allow_pickle"))],
    "joblib": [("load", _wrap_full)],
    "torch.distributed.checkpoint.filesystem": [
        ("FileSystemReader.read_metadata", _wrap_read_metadata)
    ],
}


def _owner(module: ModuleType, dotted: str) -> tuple[Any, str]:
    obj: Any = module
    *parents, attr = dotted.split(".")
    for p in parents:
        obj = getattr(obj, p)
    return obj, attr


def _patch_module(name: str) -> None:
    module = sys.modules.get(name)
    if module is None:
        return
    for dotted, factory in _TARGETS[name]:
        try:
            owner, attr = _owner(module, dotted)
            current = getattr(owner, attr)
        except AttributeError:
            continue
        if hasattr(current, "__trainguard_original__"):
            continue  # already ours (torch.load and torch.serialization.load are one object)
        wrapped = factory(current)
        setattr(owner, attr, wrapped)
        _state["patches"].append((owner, attr, current, wrapped))


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Patches a target module right after it is first imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _TARGETS or fullname in sys.modules:
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
            if _state["depth"] > 0:
                _patch_module(self.name)

    def __getattr__(self, item: str) -> Any:
        return getattr(self.inner, item)


def protect(
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    on_finding: Callable[[Finding], None] | None = None,
    trusted: bool = False,
) -> None:
    """Route every load in this process through the scanner (idempotent, counted)."""
    with _lock:
        _state["depth"] += 1
        if _state["depth"] > 1:
            return
        _state["settings"] = _Settings(policy, limits, on_finding, trusted)
        audithook.install()
        # ForkingPickler binds pickle.loads when first imported; bind the real one, so that
        # DataLoader workers' batches never pass through the scanner.
        import multiprocessing.reduction  # noqa: F401

        finder = _PatchOnImport()
        sys.meta_path.insert(0, finder)
        _state["finder"] = finder
        for name in _TARGETS:
            _patch_module(name)


def unprotect() -> None:
    """Undo one ``protect()``; the last one restores every original object exactly."""
    with _lock:
        if _state["depth"] == 0:
            return
        _state["depth"] -= 1
        if _state["depth"] > 0:
            return
        for owner, attr, original_obj, wrapped in reversed(_state["patches"]):
            if getattr(owner, attr, None) is wrapped:
                setattr(owner, attr, original_obj)
        _state["patches"].clear()
        finder = _state["finder"]
        if finder in sys.meta_path:
            sys.meta_path.remove(finder)
        _state["finder"] = None
        _state["settings"] = None


@contextlib.contextmanager
def protected(**kwargs: Any) -> Iterator[None]:
    """``protect()`` for the duration of a ``with`` block."""
    protect(**kwargs)
    try:
        yield
    finally:
        unprotect()


def is_protected() -> bool:
    return bool(_state["depth"])


def original(owner: Any, attr: str) -> Any:
    """The unwrapped object behind ``owner.attr`` (the attribute itself if not wrapped)."""
    current = getattr(owner, attr, None)
    return getattr(current, "__trainguard_original__", current)
