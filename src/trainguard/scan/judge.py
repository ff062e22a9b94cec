"""The judge: CPython's own C unpickler runs over the bytes, and nothing real is ever called.

Every earlier bypass of a pickle scanner came from one place: the scanner's *model* of the
bytes differed from what ``_pickle.c`` does (frames, text integers, ``POP`` after ``MARK``,
2to3 name mapping, ...). So there is no model here. ``_pickle.Unpickler`` itself decodes
every opcode; only three things are ours:

* ``find_class`` records the global and returns an inert *stand-in* (a fresh type, because
  ``NEWOBJ`` needs a type) instead of importing anything. Which name CPython really resolves
  (the 2to3 mapping depends on the protocol the stream declared, which Python cannot see) is
  learned by letting the C ``find_class`` run with an ``__import__`` that only reports the
  module it was asked for (``_mapped``).
* stand-ins record what the unpickler does with them: calling one (``REDUCE``, ``INST``,
  ``OBJ``) is a ``CALL``, ``NEWOBJ``/``cls.__new__`` is a ``NEW``; the result is a ``Made``
  that records ``BUILD`` states and ``APPEND``/``SETITEM``/``ADDITEMS``; mutating a global
  itself or calling a ``Made`` is reported as code execution.
* ``persistent_load`` mirrors torch's (zip, legacy and tar formats) and checks the field types.

The stand-ins live in ``standins.py``, what they report to in ``recorder.py``.

What this trusts: that the stand-ins are only ever reached through the three hooks above.
The one other door in ``_pickle.c`` is the ``copyreg`` extension cache (``EXT1/2/4`` push a
cached object without calling ``find_class``); it is emptied before and after every run
(``clean_extension_cache``), so it can only ever hold our stand-ins, and a stream that used
it is reported. ``tests/scan/test_judge.py`` attacks each of these; the differential fuzzer
(``tests/scan/test_differential.py``) checks that no global CPython resolves is missed.

Bounds: the bytes come through ``Feed``, whose ``peek`` (called by C every 128 KiB) checks
the time budget; memory is capped for the run with ``RLIMIT_DATA`` (``feed.memory_cap``),
because ``_pickle.c`` allocates ``2 * index`` memo slots for one ``LONG_BINPUT``.
"""

from __future__ import annotations

import _compat_pickle
import _pickle
import contextlib
import copyreg
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.feed import Feed, FrameFeed, memory_cap
from trainguard.scan.recorder import LITERAL_GETATTR, GlobalUse, Recorder
from trainguard.scan.standins import GlobalMeta, Made, Persisted, describe
from trainguard.scan.uses import Use

__all__ = [
    "EXT_CACHE_USED",
    "LITERAL_GETATTR",
    "TORCH_STORAGES",
    "VIEWS",
    "GlobalUse",
    "Made",
    "Recorder",
    "StreamResult",
    "clean_extension_cache",
    "judge_stream",
]

TORCH_STORAGES = frozenset(
    "BFloat16Storage BoolStorage ByteStorage CharStorage ComplexDoubleStorage "
    "ComplexFloatStorage DoubleStorage FloatStorage HalfStorage IntStorage LongStorage "
    "QInt32Storage QInt8Storage QUInt2x4Storage QUInt4x2Storage QUInt8Storage "
    "ShortStorage".split()
)
"""Names ``torch.load``'s ``find_class`` turns into a ``StorageType`` whatever the module
(``"Storage" in name`` and a key of ``torch.storage._storage_type_to_dtype_map()``)."""

TORCH_MODULE_MAPPING = {"torch.tensor": "torch._tensor"}
"""``torch.serialization._load``'s ``load_module_mapping`` (zip format only)."""


@dataclass
class StreamResult:
    """What one pickle stream (up to its STOP) resolved and built."""

    start: int
    end: int | None = None
    globals: dict[str, GlobalUse] = field(default_factory=dict)
    value: Any = None
    joblib_arrays: int = 0
    error: ScanError | None = None
    """Set when the unpickler stopped before STOP; everything before it is recorded."""
    diverged: list[tuple[Rule, Severity, str, dict[str, Any]]] = field(default_factory=list)
    """Findings the break means *if* the loader reaches it (``FileScan.settle`` reports them):
    the stand-ins differ from the real objects there."""


# -- which name CPython really resolves -----------------------------------------------------
class _Asked(Exception):
    def __init__(self, module: str) -> None:
        self.module = module


def _report_import(name: Any, *_args: Any, **_kwargs: Any) -> Any:
    raise _Asked(name)


_PROBE_GLOBALS: dict[str, Any] = {
    "__builtins__": {"__import__": _report_import},
    "_Asked": _Asked,
    "_c_find_class": _pickle.Unpickler.find_class,
}
exec(
    "def probe(unpickler, module, name):\n"
    "    try:\n"
    "        _c_find_class(unpickler, module, name)\n"
    "    except _Asked as asked:\n"
    "        return asked.module\n"
    "    return None\n",
    _PROBE_GLOBALS,
)
_probe: Callable[[Any, str, str], Any] = _PROBE_GLOBALS["probe"]


def _mapped(unpickler: Any, module: str, name: str) -> list[tuple[str, str]]:
    """The (module, name) pairs the C ``find_class`` would import for this stream.

    The C code applies ``_compat_pickle``'s 2to3 mapping when the stream's protocol is below
    3; our probe lets it run with an ``__import__`` that only reports what it was asked for.
    When the mapping keeps the module and renames only the global, both names are returned.
    """
    asked = _probe(unpickler, module, name)
    if not isinstance(asked, str):
        return [(module, name)]
    renamed = _compat_pickle.NAME_MAPPING.get((module, name))
    if renamed is not None and renamed[0] == asked:
        if asked == module:
            return [(module, name), renamed]
        return [renamed]
    return [(asked, name)]


# -- the unpicklers ---------------------------------------------------------------------------
class _Judge(_pickle.Unpickler):
    """``pickle.load``'s view: no ``persistent_load``, ASCII strings by default."""

    def __init__(self, file: Any, rec: Recorder, *, encoding: str = "ASCII") -> None:
        super().__init__(file, encoding=encoding)
        self._rec = rec

    def find_class(self, module: str, name: str) -> Any:
        if not (isinstance(module, str) and isinstance(name, str)):
            raise ScanError("global name is not text")
        pairs = _mapped(self, module, name)
        first = None
        for resolved in pairs:
            cls = self._rec.standin((module, name), resolved)
            first = first or cls
        return first


class _TorchJudge(_Judge):
    """``torch.load``'s view of a zip checkpoint's ``data.pkl``."""

    legacy = False

    def __init__(self, file: Any, rec: Recorder) -> None:
        super().__init__(file, rec, encoding="utf-8")

    def find_class(self, module: str, name: str) -> Any:
        if type(name) is str and "Storage" in name and name in TORCH_STORAGES:
            # torch hands out a StorageType without importing ``module`` at all
            return self._rec.standin((module, name), ("torch", name))
        if not self.legacy:
            module = TORCH_MODULE_MAPPING.get(module, module)
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        rec = self._rec
        if not isinstance(pid, tuple) or not pid:
            raise ScanError("persistent id is not a tuple (torch.load raises)")
        typename = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        data = pid[1:]
        if self.legacy and typename == "module":
            # legacy torch returns data[0] itself: the class a module was saved as
            if data and isinstance(data[0], GlobalMeta):
                rec.record(data[0], Use.NEW, "persistent id 'module'")
            elif data:
                rec._critical(
                    "legacy persistent id 'module' hands back a value computed at load time",
                    {"pid": describe(pid)},
                )
            return data[0] if data else None
        if typename != "storage":
            raise ScanError(f"persistent id type {describe(typename)} (torch.load raises)")
        want = 5 if self.legacy else 4
        if len(data) != want:
            raise ScanError(f"storage persistent id with {len(data)} fields, not {want}")
        storage_type, key, location = data[0], data[1], data[2]
        numel = data[3]
        if not (
            isinstance(storage_type, GlobalMeta)
            and (
                storage_type._tg_key.removeprefix("torch.") in TORCH_STORAGES
                or storage_type._tg_key == "torch.UntypedStorage"
            )
        ):
            rec.emit(
                Rule.MALFORMED,
                Severity.HIGH,
                f"persistent id names {describe(storage_type)} as a storage type: torch reads "
                "its .dtype",
                rec.where(),
                {"pid": describe(pid)},
            )
        if not isinstance(location, (str, bytes)) or not isinstance(numel, int):
            rec.emit(
                Rule.MALFORMED,
                Severity.HIGH,
                "storage persistent id with a location or size that is not a literal",
                rec.where(),
                {"pid": describe(pid)},
            )
        if not isinstance(key, (str, bytes, int)):
            rec.emit(
                Rule.MALFORMED,
                Severity.MEDIUM,
                "storage persistent id with a key that is not a literal",
                rec.where(),
                {"pid": describe(pid)},
            )
        return Persisted(rec, storage_type, data, {})


class _LegacyTorchJudge(_TorchJudge):
    """``torch.load``'s view of the object stream of a legacy (pre-1.6) checkpoint."""

    legacy = True


class _TarTorchJudge(_LegacyTorchJudge):
    """``torch.load``'s view of the ``pickle`` member of a legacy tar checkpoint, whose
    persistent ids are ``int(saved_id)`` keys of the storages read before it."""

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, (str, bytes, int)):
            self._rec.emit(
                Rule.CODE_EXECUTION,
                Severity.HIGH,
                "persistent id computed at load time: torch calls int() on it",
                self._rec.where(),
                {"pid": describe(pid)},
            )
        return Persisted(self._rec, None, (pid,), {})


VIEWS: dict[str, Callable[[Any, Recorder], _Judge]] = {
    "pickle": lambda f, rec: _Judge(f, rec),
    "torch": lambda f, rec: _TorchJudge(f, rec),
    "torch-legacy": lambda f, rec: _LegacyTorchJudge(f, rec),
    "torch-tar": lambda f, rec: _TarTorchJudge(f, rec),
}


EXT_CACHE_USED: tuple[Rule, Severity, str, dict[str, Any]] = (
    Rule.CODE_EXECUTION,
    Severity.HIGH,
    "a global named only by a copyreg extension code (EXT1/2/4), resolved from the loader's "
    "registry at load time; no checkpoint writer emits this",
    {},
)


def clean_extension_cache() -> bool:
    """Empty copyreg's extension cache; True if it held anything (EXT opcodes were used)."""
    cache: dict[int, Any] = copyreg._extension_cache  # type: ignore[attr-defined]
    used = bool(cache)
    cache.clear()
    return used


def judge_stream(feed: Feed, rec: Recorder, view: str = "pickle") -> StreamResult:
    """Run one stream from ``feed``'s position through the C unpickler of ``view``."""
    res = StreamResult(start=feed.tell())
    rec.globals = res.globals
    clean_extension_cache()
    unpickler = VIEWS[view](feed, rec)
    try:
        with memory_cap(feed.limits), _no_gc():
            res.value = unpickler.load()
        res.end = feed.tell()
        del unpickler  # and its memo: the expansion check counts references
        _check_expansion(res, rec)
    except ScanError as exc:  # LimitExceeded included: what was recorded is still judged
        res.error = exc
    except MemoryError:
        res.error = LimitExceeded(
            f"unpickling needs more than {feed.limits.max_memory >> 20} MiB", offset=feed.tell()
        )
    except RecursionError:
        res.error = ScanError("nesting too deep for the unpickler", offset=feed.tell())
    except Exception as exc:  # noqa: BLE001 - whatever _pickle raises ends the stream
        res.error = ScanError(f"{type(exc).__name__}: {_text(exc)}", offset=feed.tell())
    finally:
        if isinstance(feed, FrameFeed) and feed.straddles:
            rec.emit(
                Rule.DIFFERENTIAL,
                Severity.HIGH,
                "an opcode runs past the end of its FRAME: torch.load (reading a BytesIO) "
                "and pickle.loads read different opcodes from here on",
                feed.straddles[0],
                {"offsets": feed.straddles[:8]},
            )
        if clean_extension_cache():
            rule, sev, msg, ev = EXT_CACHE_USED
            rec.emit(rule, sev, msg, feed.tell(), ev)
    if res.error is not None:
        if res.error.offset is None:
            res.error.offset = feed.tell()
        res.diverged = _explain(res.error)
    return res


_DIVERGED = {
    "STACK_GLOBAL requires str": "the module or name of a global was computed at load time "
    "(the real loader imports whatever the computation returns)",
    "class argument must be a type": "NEWOBJ instantiates a class computed at load time",
    "class argument isn't a type object": "NEWOBJ instantiates a class computed at load time",
    "keyword argument dict": "NEWOBJ_EX keyword arguments computed at load time",
}


def _explain(error: ScanError) -> list[tuple[Rule, Severity, str, dict[str, Any]]]:
    """The breaks that mean the *stand-ins* differ from what the real loader holds: there,
    the real loader goes on with a computed value the judge cannot follow."""
    text = error.message
    if "unregistered extension code" in text:
        code = text.rpartition("unregistered extension code ")[2]
        why = (
            f"a global named only by copyreg extension code {code} (EXT1/2/4): not registered "
            "here, resolved from the registry of whatever process loads it; no checkpoint "
            "writer emits this"
        )
        return [(Rule.CODE_EXECUTION, Severity.HIGH, why, {"code": code})]
    for needle, why in _DIVERGED.items():
        if needle in text:
            return [(Rule.CODE_EXECUTION, Severity.CRITICAL, why, {"unpickler": text})]
    return []


EXPANSION_LIMIT = 100_000_000
"""Tree-walked elements above which a result is an expansion bomb (when also more than
``EXPANSION_RATIO`` per byte of the stream)."""
EXPANSION_RATIO = 100
EXPANSION_CHECKED = 16 << 20
"""Streams up to this size are checked: a bomb is a few hundred bytes by nature, and the
check costs about as much as the load on a graph of millions of objects. A bomb padded past
this size is not reported (it is a denial of service against whatever walks the result,
not code execution)."""


def _check_expansion(res: StreamResult, rec: Recorder) -> None:
    from trainguard.scan.expansion import logical_size

    size = (res.end or 0) - res.start
    if size > EXPANSION_CHECKED:
        return
    limit = max(EXPANSION_LIMIT, EXPANSION_RATIO * size)
    n = logical_size(res.value, limit)
    if n > limit:
        rec.emit(
            Rule.MALFORMED,
            Severity.HIGH,
            f"expansion bomb: {size} bytes of pickle make more than {limit} elements when the "
            "result is walked as a tree (repr, json, comparisons, recursive copies)",
            res.start,
            {"bytes": size, "elements_over": limit},
        )


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """The cyclic collector off while C builds the graph (a graph of millions of fresh
    containers triggers it thousands of times for nothing); back as it was afterwards."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _text(exc: BaseException) -> str:
    text = str(exc)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:300]
