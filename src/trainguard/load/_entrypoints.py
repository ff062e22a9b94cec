"""What ``protect()`` puts in place of each loader, and how each one is restricted.

Every replacement scans what the loader is about to read, refuses what the scan refuses,
builds that file's allowed table (``_restricted.Allowed``: every module it needs imported
now) and lets the real loader run with unpickling confined to that table, inside an audit
window (``audithook.guarding``) around the unpickler's ``load()``:

==============================================  ==========================================
``pickle.load/loads/Unpickler``, ``_pickle.*``   ``ProtectedUnpickler``: the C unpickler,
``pickle._load/_loads``                          scanning the rest of its stream first
``pickle._Unpickler``                            ``ProtectedPyUnpickler`` (pure Python)
``torch.load`` = ``torch.serialization.load``    a restricted ``pickle_module``, unless the
                                                 load is weights-only (torch's own)
``numpy.load(..., allow_pickle=True)``           the table is lent to numpy's own
                                                 ``pickle.load`` (``format.read_array``)
``joblib.load`` (and ``numpy_pickle.load``)      ``NumpyUnpickler``/``ZipNumpyUnpickler``:
                                                 ``find_class`` and ``load`` replaced
``dill.load/loads``                              ``dill.Unpickler``: the same
DCP metadata (``FileSystemReader``, ``file://``  ``FileSystemReader.read_metadata`` (and
checkpoint ids through fsspec)                   ``FsspecReader``) calls ``pickle.load``
==============================================  ==========================================

A load nested in another protected load (numpy's and joblib's object arrays) uses the
enclosing file's table: those bytes are part of the file that was scanned. A subclass of
``pickle.Unpickler`` defined after ``protect()`` inherits the restricted ``find_class``.

The job's own plumbing (the spawn bootstrap, torchrun's rendezvous state, torch.compile's
worker pool and cache) is recognised by the function that calls ``pickle.load``/``loads``
and unpickled on that caller's terms only (``trainguard.load._ipc``).

Not coverable: a loader bound before ``protect()`` ran (``from pickle import loads``, a
subclass of ``pickle.Unpickler`` defined earlier, ``multiprocessing``'s ``ForkingPickler``
on purpose: DataLoader workers' batches are the process's own) keeps the original.
"""

from __future__ import annotations

import _pickle
import functools
import io
import os
import pickle
import sys
from collections.abc import Callable
from typing import Any

from trainguard.errors import LimitExceeded, LoadBlocked
from trainguard.load import _ipc, _protect, _restricted
from trainguard.load._restricted import Allowed, Source, active, check, seekable, using, window
from trainguard.scan import Limits
from trainguard.scan.feed import readinto_by_read

__all__ = ["TARGETS", "ProtectedPyUnpickler", "ProtectedUnpickler"]

_CUnpickler = _pickle.Unpickler
_PyUnpickler = pickle._Unpickler
Factory = Callable[[Any], Any]


def _prepare(arg: Any, name: str | None = None) -> tuple[Source, Allowed]:
    """Scan, judge for a full unpickler, and build the allowed table (imports happen here)."""
    settings = _protect.settings()
    assert settings is not None
    source = Source(arg)
    if name is not None:
        source.name = name
    result = _restricted.scan_source(source, settings.policy, settings.limits)
    check(result, full_unpickler=True, trusted=settings.trusted, sink=settings.sink)
    return source, Allowed(result, trusted=settings.trusted, sink=settings.sink)


def _rewind(source: Source, arg: Any) -> Any:
    """The argument to hand the real loader: the original, or a stream we emptied."""
    if source.path is not None or isinstance(arg, (bytes, bytearray, memoryview)):
        return arg
    if source.stream is not None:
        return arg  # seekable: we read and seeked back
    return source.reopen()


def _outside(what: str) -> LoadBlocked:
    return LoadBlocked(
        f"{what} was used outside a protected load: nothing was scanned, nothing is allowed",
        path="<unscanned>",
        rule="load.blocked",
    )


class _Recorder:
    """Reads through to a stream, keeps what it read, and counts where it is (no ``peek``:
    the C unpickler then asks for exactly the bytes of each opcode)."""

    def __init__(self, stream: Any, limits: Limits) -> None:
        self.stream, self.limits, self.data = stream, limits, bytearray()
        self.cap = limits.max_member_bytes

    def _keep(self, chunk: bytes) -> bytes:
        self.data += chunk
        if len(self.data) > self.cap:
            raise LimitExceeded(f"pickle stream longer than {self.cap} bytes")
        return chunk

    def read(self, n: int = -1) -> bytes:
        return self._keep(self.stream.read(n))

    def readline(self, n: int = -1) -> bytes:
        return self._keep(self.stream.readline(n))

    def readinto(self, buffer: memoryview) -> int:
        return readinto_by_read(self.read, buffer)

    def tell(self) -> int:
        return len(self.data)


def _one_pickle(stream: Any, limits: Limits) -> bytes:
    """Exactly one pickle's bytes from a stream that cannot seek back (a pipe, a socket), so
    the stream is left where ``pickle.load`` leaves it and the next load still works.

    The bytes are taken by CPython's own unpickler (the scanner's judge, with stand-ins:
    nothing is imported or called), so they end exactly where ``pickle.load`` stops."""
    from trainguard.scan.judge import judge_stream
    from trainguard.scan.recorder import Recorder

    rec = _Recorder(stream, limits)
    judge_stream(rec, Recorder.silent(), "pickle")  # type: ignore[arg-type]  # errors: the scan reports
    return bytes(rec.data)


class _Feed:
    """The file an unpickler reads: the stream itself, or first the one pickle we read
    ahead from a stream that cannot seek back (to scan it)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.ahead: io.BytesIO | None = None

    def take(self) -> tuple[Any, str | None]:
        """(what to scan, its name): the rest of a seekable stream (left where it was), or
        one pickle read ahead now."""
        if seekable(self.stream):
            return self.stream, None
        settings = _protect.settings()
        limits = (settings.limits if settings else None) or Limits()
        data = _one_pickle(self.stream, limits)
        self.ahead = io.BytesIO(data)
        return data, str(getattr(self.stream, "name", "<stream>"))

    def read(self, n: int | None = -1) -> bytes:
        if self.ahead is None:
            return bytes(self.stream.read(n))
        chunk = self.ahead.read(n)
        if n is None or n < 0 or len(chunk) < n:
            chunk += self.stream.read(-1 if n is None or n < 0 else n - len(chunk))
        return chunk

    def readline(self, n: int = -1) -> bytes:
        if self.ahead is None:
            return bytes(self.stream.readline(n))
        line = self.ahead.readline(n)
        if not line.endswith(b"\n") and (n < 0 or len(line) < n):
            line += self.stream.readline(-1 if n < 0 else n - len(line))
        return line

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


class _Protected:
    """The restricted ``find_class`` and scanning ``load`` of both unpicklers (a mixin)."""

    def __init__(self, file: Any, *args: Any, **kwargs: Any) -> None:
        self._tg_feed = _Feed(file)
        self._tg_allowed: Allowed | None = None
        super().__init__(self._tg_feed, *args, **kwargs)  # type: ignore[call-arg]

    def find_class(self, module: str, name: str) -> Any:
        route: _ipc.Route | None = getattr(self, "_tg_route", None)
        if route is not None:
            return route.find(module, name, super().find_class, _protect.sink())  # type: ignore[misc]
        allowed = self._tg_allowed or active()
        if allowed is not None:
            return allowed.find(module, name)
        if _protect.settings() is None:  # after unprotect(): an ordinary unpickler
            return super().find_class(module, name)  # type: ignore[misc]
        raise _outside(f"find_class({module!r}, {name!r})")

    def load(self) -> Any:
        if _protect.settings() is None:
            return super().load()  # type: ignore[misc]
        allowed = active()  # a load nested in a protected one: that file's table
        if getattr(self, "_tg_route", None) or (allowed is None and _routed(self, _caller())):
            return super().load()  # type: ignore[misc]
        if allowed is None:
            arg, name = self._tg_feed.take()
            _source, allowed = _prepare(arg, name)
        self._tg_allowed = allowed
        with window(allowed):
            return super().load()  # type: ignore[misc]


def _caller() -> Any:
    """The frame that called the ``load()`` that called this (never inside a window:
    ``sys._getframe`` is an audited event)."""
    return sys._getframe(2)


def _routed(unpickler: Any, caller: Any) -> _ipc.Route | None:
    """The channel of an unpickler's ``load()`` called from ``caller`` (kept on the
    unpickler for its ``find_class``), or None. A refused channel raises here."""
    route = _ipc.recognise(caller, None)
    if route is not None:
        route.check(_protect.sink())
        unpickler._tg_route = route
    return route


class ProtectedUnpickler(_Protected, _CUnpickler):
    """``pickle.Unpickler`` under ``protect()``: scans, then unpickles only what it allowed."""

    __trainguard_original__ = _CUnpickler


class ProtectedPyUnpickler(_Protected, _PyUnpickler):
    """``pickle._Unpickler`` under ``protect()`` (the pure-Python one)."""

    __trainguard_original__ = _PyUnpickler


def _mark(wrapper: Callable[..., Any], real: Any) -> Callable[..., Any]:
    wrapper.__trainguard_original__ = real  # type: ignore[attr-defined]
    return wrapper


def _replace_class(cls: type) -> Factory:
    return lambda real: cls


def _load_with(cls: type) -> Factory:
    def factory(real: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(real)
        def load(file: Any, *args: Any, **kwargs: Any) -> Any:
            if _protect.settings() is None:
                return real(file, *args, **kwargs)
            route = _ipc.recognise(sys._getframe(1), file) if active() is None else None
            if route is not None:
                return route.load(file, _protect.sink(), *args, **kwargs)
            return cls(file, *args, **kwargs).load()

        return _mark(load, real)

    return factory


def _loads_with(cls: type) -> Factory:
    def factory(real: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(real)
        def loads(data: Any, /, *args: Any, **kwargs: Any) -> Any:
            if _protect.settings() is None:
                return real(data, *args, **kwargs)
            route = _ipc.recognise(sys._getframe(1), data) if active() is None else None
            if route is not None:
                return route.load(io.BytesIO(data), _protect.sink(), *args, **kwargs)
            return cls(io.BytesIO(data), *args, **kwargs).load()

        return _mark(loads, real)

    return factory


def _with_table(real: Callable[..., Any]) -> Callable[..., Any]:
    """``joblib.load``, ``dill.load(s)``: scan, then lend the table to their unpicklers."""

    @functools.wraps(real)
    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        if _protect.settings() is None:
            return real(f, *args, **kwargs)
        source, allowed = _prepare(f)
        with using(allowed):
            return real(_rewind(source, f), *args, **kwargs)

    return _mark(load, real)


def _numpy_load(real: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real)
    def load(file: Any, *args: Any, **kwargs: Any) -> Any:
        allow = kwargs.get("allow_pickle", args[1] if len(args) > 1 else False)
        if _protect.settings() is None or not allow:
            return real(file, *args, **kwargs)  # without allow_pickle numpy reads data only
        source, allowed = _prepare(file)
        with using(allowed):
            return real(_rewind(source, file), *args, **kwargs)

    return _mark(load, real)


def _torch_weights_only(weights_only: bool | None, pickle_module: Any) -> bool:
    """What ``torch.load`` itself will decide (``torch.serialization.load``, torch 2.6+)."""
    truthy = ("1", "y", "yes", "true")
    if os.getenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "0").lower() in truthy:
        return True
    if weights_only is None:
        if os.getenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0").lower() in truthy:
            return False
        return pickle_module is None
    return bool(weights_only)


def _torch_load(real: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(real)
    def load(
        f: Any,
        map_location: Any = None,
        pickle_module: Any = None,
        *,
        weights_only: bool | None = None,
        mmap: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        settings = _protect.settings()
        if settings is not None and _torch_weights_only(weights_only, pickle_module):
            source = Source(f)  # torch's weights-only unpickler refuses unknown globals itself
            result = _restricted.scan_source(source, settings.policy, settings.limits)
            check(result, full_unpickler=False, trusted=settings.trusted, sink=settings.sink)
            f = _rewind(source, f)
        elif settings is not None:
            source, allowed = _prepare(f)
            f, pickle_module, weights_only = _rewind(source, f), allowed.pickle_module(), False
        return real(f, map_location, pickle_module, weights_only=weights_only, mmap=mmap, **kwargs)

    return _mark(load, real)


def _find_class(real: Callable[..., Any]) -> Callable[..., Any]:
    def find_class(self: Any, module: str, name: str) -> Any:
        if _protect.settings() is None:
            return real(self, module, name)
        route: _ipc.Route | None = getattr(self, "_tg_route", None)
        if route is not None:
            return route.find(module, name, functools.partial(real, self), _protect.sink())
        allowed = active()
        if allowed is None:
            raise _outside(f"{type(self).__name__}.find_class")
        return allowed.find(module, name)

    return _mark(find_class, real)


def _windowed(real: Callable[..., Any]) -> Callable[..., Any]:
    def load(self: Any) -> Any:
        if _protect.settings() is None:
            return real(self)
        allowed = active()
        if getattr(self, "_tg_route", None) or (allowed is None and _routed(self, _caller())):
            return real(self)
        if allowed is None:
            raise _outside(type(self).__name__)
        with window(allowed):
            return real(self)

    return _mark(load, real)


_PICKLE: list[tuple[str, Factory]] = [
    ("Unpickler", _replace_class(ProtectedUnpickler)),
    ("load", _load_with(ProtectedUnpickler)),
    ("loads", _loads_with(ProtectedUnpickler)),
]
_UNPICKLER_CLASS: list[tuple[str, Factory]] = [("find_class", _find_class), ("load", _windowed)]

TARGETS: dict[str, list[tuple[str, Factory]]] = {
    "pickle": [
        *_PICKLE,
        ("_Unpickler", _replace_class(ProtectedPyUnpickler)),
        ("_load", _load_with(ProtectedUnpickler)),
        ("_loads", _loads_with(ProtectedUnpickler)),
    ],
    "_pickle": _PICKLE,
    "torch.serialization": [("load", _torch_load)],
    "torch": [("load", _torch_load)],
    "numpy": [("load", _numpy_load)],
    "joblib": [("load", _with_table)],
    "joblib.numpy_pickle": [
        ("load", _with_table),
        *[(f"NumpyUnpickler.{a}", f) for a, f in _UNPICKLER_CLASS],
    ],
    "joblib.numpy_pickle_compat": [(f"ZipNumpyUnpickler.{a}", f) for a, f in _UNPICKLER_CLASS],
    "dill": [("load", _with_table), ("loads", _with_table)],
    "dill._dill": [
        ("load", _with_table),
        ("loads", _with_table),
        *[(f"Unpickler.{a}", f) for a, f in _UNPICKLER_CLASS],
    ],
}
"""module -> [(attribute path inside it, wrapper factory)], patched when the module exists."""
