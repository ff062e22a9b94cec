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
* ``persistent_load`` mirrors torch's (zip and legacy formats) and checks the field types.

What this trusts: that the stand-ins are only ever reached through the three hooks above.
The one other door in ``_pickle.c`` is the ``copyreg`` extension cache (``EXT1/2/4`` push a
cached object without calling ``find_class``); it is emptied before and after every run
(``clean_extension_cache``), so it can only ever hold our stand-ins, and a stream that used
it is reported. ``tests/scan/test_judge.py`` attacks each of these; the differential fuzzer
(``tests/scan/test_differential.py``) checks that no global CPython resolves is missed.

Bounds: the bytes come through ``Feed``, whose ``peek`` (called by C every 128 KiB) checks
the time budget; memory is capped for the run with ``RLIMIT_DATA`` (``limits.memory_cap``),
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
from trainguard.scan.policy import canonical
from trainguard.scan.uses import Use

__all__ = [
    "EXT_CACHE_USED",
    "LITERAL_GETATTR",
    "GlobalUse",
    "Made",
    "Recorder",
    "StreamResult",
    "clean_extension_cache",
    "global_key",
    "judge_stream",
]

LITERAL_GETATTR = "getattr of a literal name"
"""How ``builtins.getattr(<global>, "name")`` is recorded: resolved as the global itself."""

KEEP_ITEMS = 64
"""Items of a made object remembered for argument checks; the rest are only counted."""

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

Emit = Callable[[Rule, Severity, str, "int | None", dict[str, Any]], None]
Nested = Callable[[bytes, "int | None", str], None]


@dataclass
class GlobalUse:
    """Everything one stream does with one global, aggregated."""

    module: str
    name: str
    raw: str
    written_module: str = ""
    written_name: str = ""
    uses: Use = Use.REF
    offsets: list[int] = field(default_factory=list)
    how: set[str] = field(default_factory=set)
    count: int = 0
    example_args: str | None = None

    @property
    def key(self) -> str:
        return f"{self.module}.{self.name}"


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


# -- stand-ins ---------------------------------------------------------------------------
class _GlobalMeta(type):
    """Metaclass of every stand-in for a global: calling one is a recorded ``CALL``."""

    _tg_rec: Recorder
    _tg_key: str
    _tg_module: str

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls._tg_rec.made(cls, args, kwargs, Use.CALL, "call")

    def __setitem__(cls, key: Any, value: Any) -> None:
        cls._tg_rec.mutated_global(cls, "SETITEM")

    def __repr__(cls) -> str:
        return f"<global {cls._tg_key}>"


class _Mutator:
    """``__setstate__``/``extend``/``append``/``add`` looked up on a stand-in *type*: the
    pickle is mutating the global object itself (``BUILD``/``APPEND`` on a class)."""

    def __init__(self, how: str) -> None:
        self.how = how

    def __get__(self, obj: Any, owner: Any) -> Callable[..., None]:
        def mutate(*_args: Any) -> None:
            owner._tg_rec.mutated_global(owner, self.how)

        return mutate


class _Global(metaclass=_GlobalMeta):
    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # NEWOBJ, INST/OBJ without args
        return cls._tg_rec.made(cls, args, kwargs, Use.NEW, "new")

    __setstate__ = _Mutator("BUILD")
    extend = _Mutator("APPENDS")
    append = _Mutator("APPEND")
    add = _Mutator("ADDITEMS")


class _Spread:
    """What a ``Made`` holds as its only tuple item: a callee that receives one of these as
    an argument was handed an argument *tuple* computed at load time."""

    __slots__ = ("made",)

    def __init__(self, made: Made) -> None:
        self.made = made


class Made(tuple):  # type: ignore[type-arg]
    """The result of calling or instantiating something, as the judge sees it.

    A ``tuple`` subclass so that CPython accepts it where it needs an argument tuple, as it
    would accept the real result of ``builtins.tuple(...)``; it spreads into one ``_Spread``.
    """

    maker: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    states: list[Any]
    items: list[Any]
    n_items: int
    rec: Recorder

    def __new__(cls, rec: Recorder, maker: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Made:
        token = _Spread.__new__(_Spread)
        self = tuple.__new__(cls, (token,))
        token.made = self
        self.rec, self.maker, self.args, self.kwargs = rec, maker, args, kw
        self.states, self.items, self.n_items = [], [], 0
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.rec.computed_call(self, args, kwargs)

    def __setstate__(self, state: Any) -> None:
        self.rec.built(self, state)

    def _keep(self, items: list[Any]) -> None:
        room = KEEP_ITEMS - len(self.items)
        if room > 0:
            self.items.extend(items[:room])
        self.n_items += len(items)
        self.rec.check_budget()

    def extend(self, items: Any) -> None:
        self._keep(list(items))

    def append(self, item: Any) -> None:
        self._keep([item])

    def add(self, item: Any) -> None:
        self._keep([item])

    def __setitem__(self, key: Any, value: Any) -> None:
        self._keep([(key, value)])

    def __hash__(self) -> int:
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __repr__(self) -> str:
        return f"<result of {_short(self.maker)}>"


class Persisted(Made):
    """What ``persistent_load`` returned (a storage in torch's formats)."""


def global_key(obj: Any) -> str | None:
    """``module.name`` of a stand-in global, else None."""
    return obj._tg_key if isinstance(obj, _GlobalMeta) else None


def made_class(obj: Any) -> str | None:
    """The global whose instance ``obj`` is, when it was made from one (``NEWOBJ``, a call,
    or ``copyreg._reconstructor``/``__newobj__`` of it)."""
    if not isinstance(obj, Made):
        return None
    key = global_key(obj.maker)
    if key in _CLASS_MAKERS and obj.args:
        return global_key(obj.args[0])
    return key


_CLASS_MAKERS = frozenset(["copyreg._reconstructor", "copyreg.__newobj__", "copyreg.__newobj_ex__"])


def _short(obj: Any, depth: int = 2) -> str:
    """A bounded description of an untrusted value: never a full ``repr`` (8^depth)."""
    if isinstance(obj, _GlobalMeta):
        return obj._tg_key[:200]
    if isinstance(obj, Made):
        return f"{_short(obj.maker, 0)}(...)"
    if isinstance(obj, (str, bytes, bytearray)):
        return repr(obj[:60]) + (f"...({len(obj)})" if len(obj) > 60 else "")
    if isinstance(obj, (int, float, bool, type(None))):
        text = repr(obj)
        return text if len(text) <= 40 else text[:40] + "..."
    if isinstance(obj, (tuple, list, set, frozenset, dict)):
        if depth <= 0:
            return f"<{type(obj).__name__} of {len(obj)}>"
        seq = list(obj.items())[:6] if isinstance(obj, dict) else list(obj)[:6]
        inner = ", ".join(
            f"{_short(k, depth - 1)}: {_short(v, depth - 1)}"
            if isinstance(obj, dict)
            else _short(k, depth - 1)
            for k, v in ((x if isinstance(obj, dict) else (x, None)) for x in seq)
        )
        more = ", ..." if len(obj) > 6 else ""
        return f"{type(obj).__name__}({inner}{more})"[:300]
    return f"<{type(obj).__name__}>"


# -- the recorder --------------------------------------------------------------------------
class Recorder:
    """Collects what one top-level stream (and the streams nested in it) did."""

    def __init__(
        self,
        *,
        emit: Emit,
        nested: Nested,
        arg_uses: dict[str, dict[int, Use]],
        loaders: frozenset[str],
        where: Callable[[], int | None],
        check_time: Callable[[], None],
    ) -> None:
        self.emit = emit
        self.nested = nested
        self.arg_uses = arg_uses
        self.loaders = loaders
        self.where = where
        self.check_time = check_time
        self.globals: dict[str, GlobalUse] = {}
        self._types: dict[tuple[str, str, str, str], type] = {}
        self._events = 0

    def check_budget(self) -> None:
        self._events += 1
        if not self._events % 1024:
            self.check_time()

    # globals ---------------------------------------------------------------------------
    def standin(self, written: tuple[str, str], resolved: tuple[str, str]) -> type:
        key = (*written, *resolved)
        cls = self._types.get(key)
        if cls is None:
            module, name = canonical(*resolved)
            ns = {"_tg_rec": self, "_tg_key": f"{module}.{name}", "_tg_module": module}
            cls = _GlobalMeta("Global", (_Global,), ns)
            self._types[key] = cls
        self.record(cls, Use.REF, "find_class", written)
        return cls

    def record(self, cls: Any, use: Use, how: str, written: tuple[str, str] | None = None) -> None:
        key: str = cls._tg_key
        g = self.globals.get(key)
        if g is None:
            module: str = cls._tg_module
            name = key[len(module) + 1 :]
            wm, wn = written or (module, name)
            g = GlobalUse(module, name, f"{wm}.{wn}", wm, wn)
            self.globals[key] = g
        g.uses |= use
        g.count += 1
        g.how.add(how)
        if len(g.offsets) < 8:
            off = self.where()
            if off is not None:
                g.offsets.append(off)
        self.check_budget()

    # events from the unpickler -------------------------------------------------------------
    def made(self, cls: Any, args: tuple[Any, ...], kw: dict[str, Any], use: Use, how: str) -> Any:
        if (
            cls._tg_key == "builtins.getattr"
            and use is Use.CALL
            and len(args) in (2, 3)
            and isinstance(args[0], _GlobalMeta)
            and type(args[1]) is str
            and not kw
        ):
            # getattr(<global>, "literal") is the global <global>.literal, judged as one
            # (how pickle < 4 writes classmethods such as ZoneInfo._unpickle)
            owner = args[0]
            dotted = f"{owner._tg_key[len(owner._tg_module) + 1 :]}.{args[1]}"
            written = (owner._tg_module, f"getattr({dotted})")
            self.record(cls, Use.REF, LITERAL_GETATTR)
            return self.standin(written, (owner._tg_module, dotted))
        self.record(cls, use, how)
        g = self.globals[cls._tg_key]
        if use is Use.CALL and g.example_args is None:
            g.example_args = _short(args)
        self._check_args(cls._tg_key, args, kw)
        return Made(self, cls, args, kw)

    def computed_call(self, made: Made, args: tuple[Any, ...], kw: dict[str, Any]) -> Made:
        self._critical(
            f"calls a callable that was computed at load time (the result of "
            f"{_short(made.maker, 0)}), not named by a global: a gadget chain",
            {"callable": _short(made), "args": _short(args)},
        )
        return Made(self, made, args, kw)

    def mutated_global(self, cls: Any, how: str) -> None:
        self.record(cls, Use.CALL, how)
        self._critical(
            f"{how} mutates the global object {cls._tg_key} itself at load time "
            "(monkeypatching a module or class)",
            {"global": cls._tg_key},
        )

    def built(self, made: Made, state: Any) -> None:
        if len(made.states) < 4:
            made.states.append(state)
        self.check_budget()

    # argument checks ----------------------------------------------------------------------
    def _critical(self, message: str, evidence: dict[str, Any]) -> None:
        self.emit(Rule.CODE_EXECUTION, Severity.CRITICAL, message, self.where(), evidence)

    def _check_args(self, key: str, args: tuple[Any, ...], kw: dict[str, Any]) -> None:
        for i, arg in enumerate((*args, *kw.values())):
            if isinstance(arg, _Spread):
                self._critical(
                    f"{key} is called with an argument tuple computed at load time (by "
                    f"{_short(arg.made.maker, 0)}): what it really receives is hidden",
                    {"global": key, "position": i},
                )
        for idx, use in self.arg_uses.get(key, {}).items():
            if idx >= len(args):
                continue
            arg = args[idx]
            if isinstance(arg, _GlobalMeta):
                self.record(arg, use, f"argument {idx} of {key}")
            elif isinstance(arg, Made) and use is not Use.REF and (key, idx) not in _MADE_OK:
                self._critical(
                    f"{key} {'calls' if use is Use.CALL else 'instantiates'} its argument "
                    f"{idx}, which was computed at load time ({_short(arg)})",
                    {"global": key, "position": idx},
                )
        hooks = _HOOK_ARGS.get(key)
        if hooks is not None and hooks < len(args) and _non_empty(args[hooks]):
            self._critical(
                f"{key} is given non-empty backward hooks: they run during backward()",
                {"global": key, "hooks": _short(args[hooks])},
            )
        if key in ALLOCATORS:
            big = _largest_int(args, 3)
            if big > ALLOCATION_LIMIT:
                self.emit(
                    Rule.MALFORMED,
                    Severity.HIGH,
                    f"{key} is asked to materialise {big} elements at load time "
                    "(memory exhaustion)",
                    self.where(),
                    {"global": key, "count": big},
                )
        if key in self.loaders and args:
            payload = args[0]
            if isinstance(payload, Made) and payload.args:
                payload = payload.args[0]  # io.BytesIO(b"...")
            if isinstance(payload, (bytes, bytearray)):
                self.nested(bytes(payload), self.where(), key)


_MADE_OK = frozenset(
    [
        # numpy >= 2 pickles Generator/RandomState with the bit generator object itself
        ("numpy.random._pickle.__generator_ctor", 0),
        ("numpy.random._pickle.__randomstate_ctor", 0),
    ]
)
"""(callable, position) where a computed object is the normal argument: the callee checks
its type (``isinstance(x, BitGenerator)``) and neither calls nor instantiates it."""

_HOOK_ARGS = {
    "torch._utils._rebuild_tensor_v2": 5,
    "torch._utils._rebuild_parameter": 2,
    "torch._utils._rebuild_parameter_with_state": 2,
    "torch._utils._rebuild_qtensor": 6,
    "torch._utils._rebuild_sparse_tensor": 99,
}
"""Position of ``backward_hooks`` in torch's rebuild functions: torch sets it on the tensor
as is, so any hook in it runs at the next ``backward()``."""


def _non_empty(hooks: Any) -> bool:
    if isinstance(hooks, Made):
        return hooks.n_items > 0 or bool(hooks.states)
    if isinstance(hooks, dict):
        return bool(hooks)
    return hooks is not None


ALLOCATION_LIMIT = 100_000_000
ALLOCATORS = frozenset(
    """builtins.list builtins.tuple builtins.set builtins.frozenset builtins.bytes
    builtins.bytearray builtins.dict builtins.str collections.deque collections.OrderedDict
    collections.Counter""".split()
)


def _largest_int(items: Any, depth: int) -> int:
    """The largest integer among the arguments, a few calls deep (``list(range(10**12))``)."""
    best = 0
    for item in list(items)[:KEEP_ITEMS]:
        if isinstance(item, int) and not isinstance(item, bool):
            best = max(best, item)
        elif depth and isinstance(item, Made):
            best = max(best, _largest_int(item.args, depth - 1))
        elif depth and isinstance(item, (list, tuple)):
            best = max(best, _largest_int(item, depth - 1))
    return best


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
            if data and isinstance(data[0], _GlobalMeta):
                rec.record(data[0], Use.NEW, "persistent id 'module'")
            elif data:
                rec._critical(
                    "legacy persistent id 'module' hands back a value computed at load time",
                    {"pid": _short(pid)},
                )
            return data[0] if data else None
        if typename != "storage":
            raise ScanError(f"persistent id type {_short(typename)} (torch.load raises)")
        want = 5 if self.legacy else 4
        if len(data) != want:
            raise ScanError(f"storage persistent id with {len(data)} fields, not {want}")
        storage_type, key, location = data[0], data[1], data[2]
        numel = data[3]
        if not (
            isinstance(storage_type, _GlobalMeta)
            and (
                storage_type._tg_key.removeprefix("torch.") in TORCH_STORAGES
                or storage_type._tg_key == "torch.UntypedStorage"
            )
        ):
            rec.emit(
                Rule.MALFORMED,
                Severity.HIGH,
                f"persistent id names {_short(storage_type)} as a storage type: torch reads "
                "its .dtype",
                rec.where(),
                {"pid": _short(pid)},
            )
        if not isinstance(location, (str, bytes)) or not isinstance(numel, int):
            rec.emit(
                Rule.MALFORMED,
                Severity.HIGH,
                "storage persistent id with a location or size that is not a literal",
                rec.where(),
                {"pid": _short(pid)},
            )
        if not isinstance(key, (str, bytes, int)):
            rec.emit(
                Rule.MALFORMED,
                Severity.MEDIUM,
                "storage persistent id with a key that is not a literal",
                rec.where(),
                {"pid": _short(pid)},
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
                {"pid": _short(pid)},
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
EXPANSION_CHECKED = 256 << 20
"""Streams up to this size are checked (a bomb is small by nature)."""


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
