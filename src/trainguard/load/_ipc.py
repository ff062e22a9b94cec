"""The job's own plumbing: loads recognised by the function that calls the loader.

``protect()`` judges model files and checkpoints. A training process also unpickles its own
inter-process traffic through the same ``pickle.load``/``loads``: the spawn start method's
parent-to-child bootstrap, torchrun's rendezvous state, torch.compile's worker pool and its
on-disk cache. Judged as files, those are refused (they name ``multiprocessing`` and code by
design) and honest jobs die. Each is handled here as a *channel*, for that caller only; a
global allowed on a channel is allowed nowhere else.

What a channel trusts, and nothing else:

* **the caller's identity.** The frame that called the loader runs the code object that the
  named function holds *now* in its module (``sys.modules[module]``, attribute path, then
  ``__code__``): not a function of the same name elsewhere, not a subclass's override. A
  file's bytes cannot choose the caller; changing the function means editing the installed
  source (the environment check's job) or already running code in the job.
* **per channel, one more fact, checked at the load** (listed below). Where the bytes
  come from outside the job (the rendezvous store is a TCP server anyone on the network can
  write to), nothing but the exact classes is trusted.

The channels (caller; what else is trusted; how the bytes are unpickled):

* **spawn preparation**: the first load in ``multiprocessing.spawn._main``; the stream is a
  pipe (``fstat``); exactly ``multiprocessing.process.AuthenticationString`` (and
  ``_codecs.encode``, how protocols 0-2 write bytes).
* **spawn process object**: the second load there (``preparation_data`` is bound); the pipe
  the parent made, which carries its ``Process`` (the user's target and arguments, by
  design); the real unpickler. Writing into that pipe already means running in the job.
* **rendezvous state**: ``_BackendRendezvousStateHolder.sync`` (torchrun's c10d/etcd
  rendezvous); nothing else, the bytes come from a network store; exactly the state's
  classes (``RENDEZVOUS_STATE``), which are harmless however they are called.
* **compile-worker traffic**: ``SubprocPickler.loads`` called from ``SubprocMain.do_job`` or
  ``SubprocPool._read_thread`` (torch.compile's worker pool); the pool's own pipes; only
  globals of ``torch``/``triton``/``functools``/``collections``/``copyreg`` and builtins
  that neither evaluate, import, open nor reach attributes (a job is a callable by design:
  this narrows what a corrupted pipe could name, it is not the trust). ``getattr``, which
  pickle writes for a method (``getattr(cls, "name")``), is a stand-in that only reaches
  callables of torch's and triton's own classes.
* **fx graph wire**: ``GraphPickler.loads`` called from ``compile_fx_ext``'s
  ``_WireProtocolPickledInput.deserialize`` or ``_WireProtocolPickledOutput.deserialize``
  (``TORCHINDUCTOR_FX_COMPILE_MODE=subprocess``: a graph sent to a compile worker and its
  compiled result sent back); the bytes arrived inside a compile-worker message, on the
  pool's pipes; the real unpickler (a graph holds code by design).
* **inductor cache entry**: ``GuardedCache.iterate_over_candidates``; the bytes are those of
  the entry file it read, and that file and every folder up to the cache root belong to
  the user and are writable by no one else; the real unpickler (an entry holds code by
  design: whoever can write the cache owns the job, hence the ownership check).

A load on a recognised channel whose extra fact does not hold is refused with
``load.blocked`` naming the channel and the fact (a cache folder others can write to, a
regular file handed to the spawn bootstrap), never passed to the ordinary scan, whose
verdict on plumbing would only confuse.
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import builtins
import io
import os
import pickle
import stat
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any

from trainguard.errors import GlobalRefused, LoadBlocked
from trainguard.findings import Finding, Location, Rule, Severity
from trainguard.load._restricted import report

__all__ = ["Route", "recognise"]

_CUnpickler = _pickle.Unpickler  # the real one: this module is imported before protect() patches
_SPAWN = ("multiprocessing.spawn", "_main")
_RDZV_MODULE = "torch.distributed.elastic.rendezvous.dynamic_rendezvous"
_RDZV = (_RDZV_MODULE, "_BackendRendezvousStateHolder.sync")
_SUBPROC_MODULE = "torch._inductor.compile_worker.subproc_pool"
_SUBPROC_LOADS = (_SUBPROC_MODULE, "SubprocPickler.loads")
_SUBPROC_CALLERS = (
    (_SUBPROC_MODULE, "SubprocMain.do_job"),
    (_SUBPROC_MODULE, "SubprocPool._read_thread"),
)
_CACHE = ("torch._inductor.codecache", "GuardedCache.iterate_over_candidates")
_GRAPH_LOADS = ("torch.fx._graph_pickler", "GraphPickler.loads")
_WIRE = "torch._inductor.compile_fx_ext"
_GRAPH_CALLERS = (
    (_WIRE, "_WireProtocolPickledInput.deserialize"),
    (_WIRE, "_WireProtocolPickledOutput.deserialize"),
)
_NAMES = frozenset(
    q.rsplit(".", 1)[-1] for _, q in (_SPAWN, _RDZV, _SUBPROC_LOADS, _CACHE, _GRAPH_LOADS)
)

_BYTES_BEFORE_3 = ("_codecs", "encode")  # protocols 0-2 write bytes as a str encoded
SPAWN_PREPARATION = frozenset(
    {("multiprocessing.process", "AuthenticationString"), _BYTES_BEFORE_3}
)
RENDEZVOUS_STATE = frozenset(
    {
        (_RDZV_MODULE, "_RendezvousState"),
        (_RDZV_MODULE, "_NodeDesc"),
        ("datetime", "datetime"),
        ("datetime", "timezone"),
        ("datetime", "timedelta"),
        ("builtins", "set"),  # protocols 0-3 write sets as a call of set
        _BYTES_BEFORE_3,
    }
)
_WORKER_TOPS = frozenset({"torch", "triton", "functools", "collections", "copyreg", "_codecs"})
_WORKER_BUILTINS_REFUSED = frozenset(
    {
        "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
        "globals", "locals", "vars", "breakpoint", "input", "exit", "quit", "help",
    }
)  # fmt: skip


def _code_of(module: str, qualname: str) -> CodeType | None:
    """The code object ``module.qualname`` holds now, or None (module not imported)."""
    obj: Any = sys.modules.get(module)
    if obj is None:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    func = getattr(obj, "__func__", obj)
    code = getattr(func, "__code__", None)
    return code if isinstance(code, CodeType) else None


def _is(frame: FrameType | None, where: tuple[str, str]) -> bool:
    return frame is not None and frame.f_code is _code_of(*where)


def _is_pipe(stream: Any) -> bool:
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _blocked(channel: str, why: str) -> LoadBlocked:
    message = f"refused a load on torch/multiprocessing's {channel} channel: {why}"
    finding = Finding(
        Rule.LOAD_BLOCKED, Severity.HIGH, message, Location(f"<{channel}>"), {"channel": channel}
    )
    return LoadBlocked(message, path=f"<{channel}>", rule=Rule.LOAD_BLOCKED.value, finding=finding)


@dataclass(frozen=True)
class Route:
    """How one recognised load runs: ``allow`` decides each global (None: the real
    ``find_class``, for a channel whose bytes the job itself wrote), or ``refused``."""

    channel: str
    allow: Callable[[str, str], bool] | None = None
    replace: Mapping[tuple[str, str], Any] = field(default_factory=dict)
    """globals answered by a narrower stand-in of our own (checked before ``allow``)"""
    refused: str | None = None

    def check(self, sink: Callable[[Finding], None] | None) -> None:
        """Raise (and report) the refusal of a channel whose extra fact does not hold."""
        if self.refused is not None:
            error = _blocked(self.channel, self.refused)
            report(error.finding, sink)
            raise error

    def find(
        self,
        module: str,
        name: str,
        default: Callable[[str, str], Any],
        sink: Callable[[Finding], None] | None,
    ) -> Any:
        """``find_class`` on this channel: a stand-in, ``default`` (the real lookup) if
        ``allow`` says so or the channel is the job's own, else ``GlobalRefused``."""
        stand_in = self.replace.get(_python3_name(module, name))
        if stand_in is not None:
            return stand_in
        if self.allow is None or self.allow(module, name):
            return default(module, name)
        error = _blocked(self.channel, f"global {module}.{name} is not one of its classes")
        report(error.finding, sink)
        raise GlobalRefused(
            str(error),
            path=error.path,
            global_name=f"{module}.{name}",
            rule=Rule.LOAD_BLOCKED.value,
            finding=error.finding,
        )

    def load(
        self, file: Any, sink: Callable[[Finding], None] | None, *args: Any, **kwargs: Any
    ) -> Any:
        """Unpickle ``file`` on this channel's terms; a refusal is reported to ``sink``."""
        self.check(sink)
        route = self

        class ChannelUnpickler(_CUnpickler):
            def find_class(self, module: str, name: str) -> Any:
                return route.find(module, name, super().find_class, sink)

        return ChannelUnpickler(file, *args, **kwargs).load()


def _python3_name(module: str, name: str) -> tuple[str, str]:
    """The name the default ``find_class`` resolves (protocols 0-2 write Python 2 names)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _exactly(classes: frozenset[tuple[str, str]]) -> Callable[[str, str], bool]:
    return lambda module, name: _python3_name(module, name) in classes


def _worker_global(module: str, name: str) -> bool:
    module, name = _python3_name(module, name)
    top = module.partition(".")[0]
    if module == "builtins":
        return name not in _WORKER_BUILTINS_REFUSED and hasattr(builtins, name)
    return top in _WORKER_TOPS


def _worker_module(obj: Any) -> bool:
    """``obj`` is defined by a worker module (a class, function or method of torch/triton)."""
    module = getattr(obj, "__module__", None)
    if not isinstance(module, str):
        return False
    top = module.partition(".")[0]
    return top in _WORKER_TOPS and top not in ("builtins", "collections", "copyreg", "_codecs")


def _worker_getattr(obj: Any, name: str) -> Any:
    """``getattr`` as pickle uses it for a method (``getattr(cls, "name")``), for torch's
    and triton's classes and their functions only: never a module, never anything else."""
    if not (isinstance(obj, type) and _worker_module(obj) and isinstance(name, str)):
        raise pickle.UnpicklingError(f"getattr on {type(obj).__name__} refused on this channel")
    value = getattr(obj, name)
    if isinstance(value, types.ModuleType) or not (callable(value) and _worker_module(value)):
        raise pickle.UnpicklingError(f"getattr(..., {name!r}) is not a torch function")
    return value


_WORKER_STAND_INS = {("builtins", "getattr"): _worker_getattr}


def _private(path: str, root: str) -> str | None:
    """Why ``path`` (a cache entry) could have been written by someone else, or None: the
    file and every folder up to ``root`` must be the user's and writable by no one else."""
    uid = os.geteuid()
    try:
        real_root = os.path.realpath(root)
        current = os.path.realpath(path)
        if os.path.commonpath([current, real_root]) != real_root:
            return f"{path} is outside the cache root {root}"
        while True:
            st = os.lstat(current)
            if st.st_uid != uid:
                return f"{current} belongs to uid {st.st_uid}, not {uid}"
            if st.st_mode & 0o022:
                return f"{current} is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
            if current == real_root:
                return None
            current = os.path.dirname(current)
    except (OSError, ValueError) as exc:
        return f"cannot check {path}: {exc}"


def _cache_route(frame: FrameType, data: Any) -> Route:
    channel = "inductor cache"
    local = frame.f_locals
    subdir, name = local.get("subdir"), local.get("path")
    if not (isinstance(subdir, str) and isinstance(name, str)):
        return Route(channel, refused="not read from the local cache")
    entry = os.path.join(subdir, name)
    try:
        from torch._inductor.runtime.cache_dir_utils import cache_dir

        root = cache_dir()
        with open(entry, "rb") as fh:
            same = fh.read() == bytes(data)
    except (ImportError, OSError) as exc:
        return Route(channel, refused=f"cannot read back {entry}: {exc}")
    if not same:
        return Route(channel, refused=f"the bytes are not those of {entry}")
    why = _private(entry, root)
    return Route(channel, refused=why) if why else Route(channel)


def recognise(frame: FrameType | None, source: Any) -> Route | None:
    """The channel of a load called from ``frame`` (the loader's caller), or None for an
    ordinary load. ``source`` is what the loader was given (a stream or bytes)."""
    if frame is None or frame.f_code.co_name not in _NAMES:
        return None
    if _is(frame, _SPAWN):
        if not _is_pipe(source):
            return Route("spawn bootstrap", refused="the stream is not a pipe from the parent")
        if "preparation_data" in frame.f_locals:
            return Route("spawn process object")
        return Route("spawn preparation", allow=_exactly(SPAWN_PREPARATION))
    if _is(frame, _RDZV):
        return Route("rendezvous state", allow=_exactly(RENDEZVOUS_STATE))
    if _is(frame, _SUBPROC_LOADS) and any(_is(frame.f_back, c) for c in _SUBPROC_CALLERS):
        return Route("compile worker", allow=_worker_global, replace=_WORKER_STAND_INS)
    if _is(frame, _CACHE):
        return _cache_route(frame, source)
    if _is(frame, _GRAPH_LOADS) and any(_is(frame.f_back, c) for c in _GRAPH_CALLERS):
        return Route("fx graph wire")
    return None
