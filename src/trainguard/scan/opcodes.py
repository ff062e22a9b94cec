"""A symbolic run of the pickle machine: every global, call and mutation, nothing executed.

``pickletools.genops`` decodes opcodes from a bounded ``Window``; this module keeps a model
of the unpickler's stack and memo in which values are *descriptions* (a literal, a global
reference, the result of calling something) rather than objects. That is enough to resolve
each global exactly as ``Unpickler.find_class`` would (``STACK_GLOBAL`` operands from the
memo, protocol-dependent dotted names, Python 2 import mappings, ``EXT`` codes), to see
what is called with what, and to find pickles nested inside pickles.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import io
import pickletools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity
from trainguard.scan.dtypes import parse_dtype
from trainguard.scan.fastops import fast_genops
from trainguard.scan.limits import Budget
from trainguard.scan.policy import canonical
from trainguard.scan.uses import Use
from trainguard.scan.window import Skipped

__all__ = ["GlobalUse", "PickleMachine", "StreamResult"]

KEEP_ITEMS = 64
"""Items of a container remembered for evidence and argument checks; the rest are counted."""


class Val:
    __slots__ = ()


class Lit(Val):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        v = self.value
        if isinstance(v, (bytes, str)) and len(v) > 80:
            return repr(v[:80]) + f"...({len(v)})"
        return repr(v)


class GlobalRef(Val):
    __slots__ = ("key", "module", "name", "offset")

    def __init__(self, module: str, name: str, offset: int) -> None:
        self.module = module
        self.name = name
        self.offset = offset
        self.key = f"{module}.{name}"

    def __repr__(self) -> str:
        return self.key


class Obj(Val):
    """The result of calling or instantiating something."""

    __slots__ = ("args", "maker", "offset", "state")

    def __init__(self, maker: Val, args: Val | None, offset: int) -> None:
        self.maker = maker
        self.args = args
        self.offset = offset
        self.state: Val | None = None

    def __repr__(self) -> str:
        return f"{self.maker!r}(...)"


class Seq(Val):
    __slots__ = ("count", "items", "kind")

    def __init__(self, kind: str, items: list[Val] | None = None) -> None:
        self.kind = kind
        self.items: list[Val] = []
        self.count = 0
        if items:
            self.extend(items)

    def extend(self, items: list[Val]) -> None:
        room = KEEP_ITEMS - len(self.items)
        if room > 0:
            self.items.extend(items[:room])
        self.count += len(items)

    def __repr__(self) -> str:
        inner = ", ".join(repr(i) for i in self.items[:8])
        more = ", ..." if self.count > 8 else ""
        return {"tuple": f"({inner}{more})", "list": f"[{inner}{more}]"}.get(
            self.kind, f"{self.kind}[{inner}{more}]"
        )


class PersRef(Val):
    __slots__ = ("pid",)

    def __init__(self, pid: Val) -> None:
        self.pid = pid

    def __repr__(self) -> str:
        return f"persistent_id({self.pid!r})"


@dataclass
class GlobalUse:
    """Everything a stream does with one global, aggregated."""

    module: str
    name: str
    raw: str
    written_module: str = ""
    written_name: str = ""
    uses: Use = Use.REF
    offsets: list[int] = field(default_factory=list)
    opcodes: set[str] = field(default_factory=set)
    count: int = 0
    example_args: str | None = None

    @property
    def key(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class StreamResult:
    """What one pickle stream (up to its STOP) contained."""

    start: int
    end: int | None = None
    protocol: int = 0
    ops: int = 0
    globals: dict[str, GlobalUse] = field(default_factory=dict)
    value: Val | None = None
    joblib_arrays: int = 0


class Stream(Protocol):
    """What the machine reads from: a ``Window``, or a ``BytesIO`` for small streams."""

    def read(self, size: int = -1, /) -> bytes: ...
    def readline(self, size: int | None = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...


# A finding raised by the machine itself (not tied to the policy): rule, severity, message,
# offset, evidence.
Emit = Callable[[Rule, Severity, str, int, dict[str, Any]], None]
Nested = Callable[[bytes | Skipped, int, str], None]
Judge = Callable[[str, str], Use]

_LIT_OPS = frozenset(
    [
        "INT",
        "BININT",
        "BININT1",
        "BININT2",
        "LONG",
        "LONG1",
        "LONG4",
        "FLOAT",
        "BINFLOAT",
        "STRING",
        "BINSTRING",
        "SHORT_BINSTRING",
        "BINBYTES",
        "SHORT_BINBYTES",
        "BINBYTES8",
        "BYTEARRAY8",
        "UNICODE",
        "SHORT_BINUNICODE",
        "BINUNICODE",
        "BINUNICODE8",
    ]
)
_OPCODE_BYTES = frozenset(op.code.encode("latin-1")[0] for op in pickletools.opcodes)


def looks_like_pickle_start(byte: int) -> bool:
    """Any opcode can start a pickle: ``PROTO`` is optional, even for binary protocols."""
    return byte in _OPCODE_BYTES


def canonical_module(module: str, proto: int) -> str:
    """The module name ``find_class`` really imports (Python 2 names mapped for proto < 3)."""
    if proto < 3:
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module


class PickleMachine:
    """Runs one pickle stream symbolically. Not reusable: one instance per stream."""

    def __init__(
        self,
        win: Stream,
        budget: Budget,
        *,
        emit: Emit,
        nested: Nested,
        arg_uses: dict[str, dict[int, Use]],
        loaders: frozenset[str],
    ) -> None:
        self.win = win
        pos = win.tell()
        self.size = win.seek(0, 2)
        win.seek(pos)
        self.budget = budget
        self.limits = budget.limits
        self.emit = emit
        self.nested = nested
        self.arg_uses = arg_uses
        self.loaders = loaders
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Val] = {}
        self.result = StreamResult(start=win.tell())

    # -- helpers ------------------------------------------------------------------
    def _pop(self, pos: int) -> Any:
        if not self.stack:
            raise ScanError("stack underflow (malformed pickle)", offset=pos)
        return self.stack.pop()

    def _top(self, pos: int) -> Any:
        if not self.stack:
            raise ScanError("stack underflow (malformed pickle)", offset=pos)
        return self.stack[-1]

    def _pop_mark(self, pos: int) -> list[Any]:
        if not self.metastack:
            raise ScanError("MARK expected but not found (malformed pickle)", offset=pos)
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    def _push(self, v: Any) -> None:
        self.stack.append(v)  # the stack bound is checked every _CHECK_EVERY opcodes

    def _global(self, module: Any, name: Any, pos: int, opname: str) -> GlobalRef:
        proto = self.result.protocol
        if not (isinstance(module, str) and isinstance(name, str)):
            raise ScanError("global name is not text", offset=pos)
        written = (module, name)
        raw = f"{module}.{name}"
        if proto < 3 and (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = canonical_module(module, proto)
        if proto < 4 and "." in name:
            # find_class does getattr(module, "a.b"): fails after importing the module.
            self.emit(
                Rule.MALFORMED,
                Severity.LOW,
                f"dotted name {name!r} needs protocol 4; the loader imports {module} then fails",
                pos,
                {"global": raw},
            )
        ref = GlobalRef(module, name, pos)
        self._record(ref, Use.REF, pos, opname, written)
        return ref

    def _record(
        self,
        ref: GlobalRef,
        use: Use,
        pos: int,
        opname: str,
        written: tuple[str, str] | None = None,
    ) -> None:
        g = self.result.globals.get(ref.key)
        if g is None:
            wm, wn = written or (ref.module, ref.name)
            g = GlobalUse(ref.module, ref.name, f"{wm}.{wn}", wm, wn)
            self.result.globals[ref.key] = g
        g.uses |= use
        g.count += 1
        g.opcodes.add(opname)
        if len(g.offsets) < 8:
            g.offsets.append(pos)

    def _apply(self, callee: Any, args: Any, pos: int, opname: str, use: Use) -> Obj:
        """Something is called or instantiated: judge the callee, look into its arguments."""
        if isinstance(callee, GlobalRef):
            self._record(callee, use, pos, opname)
            g = self.result.globals[callee.key]
            if use is Use.CALL and g.example_args is None:
                g.example_args = repr(args)[:300]
            self._check_args(callee, args, pos, opname)
        else:
            self.emit(
                Rule.CODE_EXECUTION,
                Severity.CRITICAL,
                f"{opname} calls a callable that was computed at load time ({callee!r}), "
                "not named by a global: a gadget chain",
                pos,
                {"opcode": opname, "callable": repr(callee)[:300], "args": repr(args)[:300]},
            )
        return Obj(callee, args, pos)

    def _check_args(self, callee: GlobalRef, args: Any, pos: int, opname: str) -> None:
        items = args.items if isinstance(args, Seq) else []
        key = ".".join(canonical(callee.module, callee.name))
        extra = self.arg_uses.get(key)
        if extra:
            for idx, use in extra.items():
                item = items[idx] if idx < len(items) else None
                if isinstance(item, GlobalRef):
                    self._record(item, use, pos, opname)
        if key in ALLOCATORS:
            big = _largest_int(items)
            if big > ALLOCATION_LIMIT:
                self.emit(
                    Rule.MALFORMED,
                    Severity.HIGH,
                    f"{key} is asked to materialise {big} elements at load time "
                    "(memory exhaustion)",
                    pos,
                    {"global": key, "count": big},
                )
        if key in self.loaders and items:
            payload = items[0]
            if isinstance(payload, Obj) and isinstance(payload.args, Seq) and payload.args.items:
                payload = payload.args.items[0]  # io.BytesIO(b"...")
            if isinstance(payload, Lit) and isinstance(payload.value, (bytes, bytearray)):
                blob = payload.value
                self.nested(blob if isinstance(blob, Skipped) else bytes(blob), pos, key)

    def _build(self, target: Any, state: Any, pos: int) -> None:
        if isinstance(target, GlobalRef):
            self._record(target, Use.CALL, pos, "BUILD")
            self.emit(
                Rule.CODE_EXECUTION,
                Severity.CRITICAL,
                f"BUILD sets attributes on the global {target.key} itself (monkeypatching "
                "a module or class at load time)",
                pos,
                {"global": target.key, "state": repr(state)[:300]},
            )
            return
        if isinstance(target, Obj):
            target.state = state
            maker = target.maker
            if (
                isinstance(maker, GlobalRef)
                and maker.key == "joblib.numpy_pickle.NumpyArrayWrapper"
            ):
                self._skip_joblib_array(state, pos)
            return
        if isinstance(target, (Lit, Seq, PersRef)):
            raise ScanError("BUILD on a value that has no state (malformed pickle)", offset=pos)

    def _skip_joblib_array(self, state: Any, pos: int) -> None:
        """joblib writes array bytes (or a nested pickle for object arrays) right after BUILD."""
        fields = _dict_items(state)
        dtype = fields.get("dtype")
        shape = fields.get("shape")
        itemsize, has_object = _dtype_info(dtype)
        self.result.joblib_arrays += 1
        if has_object:
            # joblib pickles object arrays as a separate protocol-2 pickle in the stream.
            sub = PickleMachine(
                self.win,
                self.budget,
                emit=self.emit,
                nested=self.nested,
                arg_uses=self.arg_uses,
                loaders=self.loaders,
            )
            inner = sub.run()
            self.result.ops += inner.ops
            for key, g in inner.globals.items():
                mine = self.result.globals.setdefault(key, g)
                if mine is not g:
                    mine.uses |= g.uses
                    mine.count += g.count
                    mine.opcodes |= g.opcodes
                    mine.offsets.extend(g.offsets[: 8 - len(mine.offsets)])
            return
        dims = _int_items(shape)
        if itemsize is None or dims is None:
            raise ScanError(
                "joblib array wrapper with a dtype or shape that cannot be read", offset=pos
            )
        align = fields.get("numpy_array_alignment_bytes")
        if isinstance(align, Lit) and align.value is not None:
            pad = self.win.read(1)
            if len(pad) != 1:
                raise ScanError("joblib array padding truncated", offset=self.win.tell())
            self.win.seek(pad[0], 1)
        nbytes = itemsize
        for d in dims:
            nbytes *= d
        if nbytes < 0 or nbytes > self.size - self.win.tell():
            raise ScanError(
                f"joblib array of {nbytes} bytes runs past the end of the stream",
                offset=self.win.tell(),
            )
        self.win.seek(nbytes, 1)

    # -- the run --------------------------------------------------------------------
    def run(self) -> StreamResult:
        res = self.result
        win = self.win
        table = _BY_OPCODE
        ops = 0
        decoded: Iterator[tuple[pickletools.OpcodeInfo, Any, int]]
        if isinstance(win, io.BytesIO):  # noqa: SIM108 - the two need different ignores
            decoded = fast_genops(win)
        else:  # positions are always ints for a seekable stream
            decoded = pickletools.genops(win)  # type: ignore[arg-type,assignment]
        try:
            for op, arg, pos in decoded:
                ops += 1
                handler = table[op]
                if handler is None:
                    self.stack.append(Lit(arg))
                else:
                    handler(self, op.name, arg, pos)
                    if op.name == "STOP":
                        res.end = win.tell()
                        break
                if not ops % _CHECK_EVERY:
                    self._check_bounds(ops, pos or 0)
        except ScanError as exc:
            if exc.offset is None:
                exc.offset = win.tell()
            raise
        except (ValueError, KeyError, IndexError, TypeError, OverflowError, UnicodeError) as exc:
            raise ScanError(f"malformed pickle: {exc}", offset=win.tell()) from None
        finally:
            res.ops += ops
        return res

    def _check_bounds(self, ops: int, pos: int) -> None:
        limits = self.limits
        if ops > limits.max_pickle_ops:
            raise LimitExceeded(f"more than {limits.max_pickle_ops} pickle opcodes", offset=pos)
        depth = len(self.stack) + sum(len(s) for s in self.metastack)
        if depth > limits.max_stack or len(self.metastack) > limits.max_stack:
            raise LimitExceeded(f"pickle stack deeper than {limits.max_stack}", offset=pos)
        self.budget.check_time()

    # -- opcode handlers: (self, opcode name, argument, position) ----------------------
    def _op_mark(self, name: str, arg: Any, pos: int) -> None:
        self.metastack.append(self.stack)
        self.stack = []

    def _op_const(self, name: str, arg: Any, pos: int) -> None:
        self._push(Lit({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name]))

    def _op_empty(self, name: str, arg: Any, pos: int) -> None:
        self._push(Seq(name[6:].lower()))

    def _op_put(self, name: str, arg: Any, pos: int) -> None:
        self._memo_put(len(self.memo) if name == "MEMOIZE" else arg, pos)

    def _op_get(self, name: str, arg: Any, pos: int) -> None:
        value = self.memo.get(arg)
        if value is None:
            raise ScanError(f"memo key {arg} was never stored", offset=pos)
        self._push(value)

    def _op_global(self, name: str, arg: Any, pos: int) -> None:
        module, _, gname = str(arg).partition(" ")
        self._push(self._global(module, gname, pos, name))

    def _op_stack_global(self, name: str, arg: Any, pos: int) -> None:
        gname = self._pop(pos)
        module = self._pop(pos)
        if isinstance(module, Lit) and isinstance(gname, Lit):
            self._push(self._global(module.value, gname.value, pos, name))
            return
        self.emit(
            Rule.CODE_EXECUTION,
            Severity.CRITICAL,
            "STACK_GLOBAL operands were computed at load time, not written as text",
            pos,
            {"module": repr(module)[:200], "name": repr(gname)[:200]},
        )
        self._push(Obj(Lit("<dynamic global>"), None, pos))

    def _op_reduce(self, name: str, arg: Any, pos: int) -> None:
        args = self._pop(pos)
        callee = self._pop(pos)
        self._push(self._apply(callee, args, pos, name, Use.CALL))

    def _op_build(self, name: str, arg: Any, pos: int) -> None:
        state = self._pop(pos)
        self._build(self._top(pos), state, pos)

    def _op_newobj(self, name: str, arg: Any, pos: int) -> None:
        if name == "NEWOBJ_EX":
            self._pop(pos)  # kwargs
        args = self._pop(pos)
        cls = self._pop(pos)
        self._push(self._apply(cls, args, pos, name, Use.NEW))

    def _op_inst(self, name: str, arg: Any, pos: int) -> None:
        items = self._pop_mark(pos)
        module, _, gname = str(arg).partition(" ")
        ref = self._global(module, gname, pos, name)
        use = Use.CALL if items else Use.NEW
        self._push(self._apply(ref, Seq("tuple", items), pos, name, use))

    def _op_obj(self, name: str, arg: Any, pos: int) -> None:
        items = self._pop_mark(pos)
        if not items:
            raise ScanError("OBJ without a class", offset=pos)
        use = Use.CALL if len(items) > 1 else Use.NEW
        self._push(self._apply(items[0], Seq("tuple", items[1:]), pos, name, use))

    def _op_collect(self, name: str, arg: Any, pos: int) -> None:
        kind = "dict" if name == "DICT" else name.lower()
        self._push(Seq(kind, self._pop_mark(pos)))

    def _op_tuple_n(self, name: str, arg: Any, pos: int) -> None:
        n = int(name[-1])
        st = self.stack
        if len(st) < n:
            raise ScanError("stack underflow (malformed pickle)", offset=pos)
        items = st[-n:]
        del st[-n:]
        self._push(Seq("tuple", items))

    def _op_fill(self, name: str, arg: Any, pos: int) -> None:
        if name == "APPEND":
            items = [self._pop(pos)]
        elif name == "SETITEM":
            value = self._pop(pos)
            items = [self._pop(pos), value]
        else:
            items = self._pop_mark(pos)
        target = self._top(pos)
        if isinstance(target, Seq):
            target.extend(items)
        elif isinstance(target, GlobalRef):
            self._record(target, Use.CALL, pos, name)
            self.emit(
                Rule.CODE_EXECUTION,
                Severity.CRITICAL,
                f"{name} mutates the global object {target.key} at load time",
                pos,
                {"global": target.key},
            )
        elif isinstance(target, Lit):
            raise ScanError(f"{name} on a literal (malformed pickle)", offset=pos)

    def _op_pop(self, name: str, arg: Any, pos: int) -> None:
        if name == "POP_MARK":
            self._pop_mark(pos)
            return
        self._pop(pos)

    def _op_dup(self, name: str, arg: Any, pos: int) -> None:
        self._push(self._top(pos))

    def _op_persid(self, name: str, arg: Any, pos: int) -> None:
        pid = Lit(arg) if name == "PERSID" else self._pop(pos)
        self._push(PersRef(pid))
        if isinstance(pid, Seq):
            for item in pid.items:
                if isinstance(item, GlobalRef):
                    self._record(item, Use.NEW, pos, name)

    def _op_ext(self, name: str, arg: Any, pos: int) -> None:
        self._ext(int(arg), pos, name)

    def _op_proto(self, name: str, arg: Any, pos: int) -> None:
        self.result.protocol = int(arg)

    def _op_nothing(self, name: str, arg: Any, pos: int) -> None:
        pass

    def _op_next_buffer(self, name: str, arg: Any, pos: int) -> None:
        self._push(Lit(None))

    def _op_stop(self, name: str, arg: Any, pos: int) -> None:
        value = self._pop(pos)
        if self.metastack:
            raise ScanError("STOP inside an unclosed MARK", offset=pos)
        self.result.value = value

    def _memo_put(self, idx: Any, pos: int) -> None:
        if not isinstance(idx, int) or idx < 0:
            raise ScanError(f"bad memo index {idx!r}", offset=pos)
        if idx not in self.memo and len(self.memo) >= self.limits.max_memo:
            raise LimitExceeded(f"more than {self.limits.max_memo} memo entries", offset=pos)
        self.memo[idx] = self._top(pos)

    def _ext(self, code: int, pos: int, opname: str) -> None:
        entry = copyreg._extension_registry.get(code)  # type: ignore[attr-defined]
        desc = f"{entry[0]}.{entry[1]}" if entry else "nothing in this interpreter"
        self.emit(
            Rule.CODE_EXECUTION,
            Severity.HIGH,
            f"{opname} {code}: a global named only by a copyreg extension code, resolved at load "
            f"time from the loader's registry (here: {desc}); no checkpoint writer emits this",
            pos,
            {"opcode": opname, "code": code, "resolves_here_to": desc},
        )
        if entry:
            self._push(self._global(entry[0], entry[1], pos, opname))
        else:
            self._push(Obj(Lit(f"<extension {code}>"), None, pos))


ALLOCATION_LIMIT = 100_000_000
ALLOCATORS = frozenset(
    """builtins.list builtins.tuple builtins.set builtins.frozenset builtins.bytes
    builtins.bytearray builtins.dict builtins.str collections.deque collections.OrderedDict
    collections.Counter""".split()
)


def _largest_int(items: list[Val], depth: int = 3) -> int:
    """The largest integer literal among the arguments, looking a few calls deep
    (``list(range(10**12))``)."""
    best = 0
    for item in items:
        value = item.value if isinstance(item, Lit) else None
        if isinstance(value, int) and not isinstance(value, bool):
            best = max(best, value)
        elif depth and isinstance(item, Obj) and isinstance(item.args, Seq):
            best = max(best, _largest_int(item.args.items, depth - 1))
        elif depth and isinstance(item, Seq):
            best = max(best, _largest_int(item.items, depth - 1))
    return best


def _dict_items(state: Any) -> dict[str, Val]:
    if isinstance(state, Seq) and state.kind == "dict":
        it = state.items
        out: dict[str, Val] = {}
        for i in range(0, len(it) - 1, 2):
            k = it[i]
            if isinstance(k, Lit) and isinstance(k.value, str):
                out[k.value] = it[i + 1]
        return out
    if isinstance(state, Seq) and state.kind == "tuple" and len(state.items) == 2:
        merged = _dict_items(state.items[0])
        merged.update(_dict_items(state.items[1]))
        return merged
    return {}


def _int_items(v: Any) -> list[int] | None:
    if not isinstance(v, Seq) or v.count != len(v.items):
        return None
    out = []
    for i in v.items:
        if not (isinstance(i, Lit) and isinstance(i.value, int)) or i.value < 0:
            return None
        out.append(i.value)
    return out


def _dtype_info(dtype: Any) -> tuple[int | None, bool]:
    """(itemsize, has_object) from a symbolic ``numpy.dtype(str, ...)`` plus its BUILD state.

    The BUILD state's element size and object flag win where present (structured dtypes);
    otherwise the type string is parsed. Unknown means (None, True): never "no objects".
    """
    if not (isinstance(dtype, Obj) and isinstance(dtype.args, Seq) and dtype.args.items):
        return None, True
    spec = dtype.args.items[0]
    if not (isinstance(spec, Lit) and isinstance(spec.value, str)):
        return None, True
    size, has_object = parse_dtype(spec.value)
    state = dtype.state.items if isinstance(dtype.state, Seq) else []
    flags = state[7].value if len(state) > 7 and isinstance(state[7], Lit) else 0
    if isinstance(flags, int) and flags & 1:
        has_object = True
    elsize = state[5].value if len(state) > 5 and isinstance(state[5], Lit) else -1
    if isinstance(elsize, int) and elsize > 0:
        size = elsize
    return size, has_object


_CHECK_EVERY = 4096
"""Opcodes between checks of the op count, stack depth and time budget."""

_DISPATCH: dict[str, Callable[[PickleMachine, str, Any, int], None]] = {
    "MARK": PickleMachine._op_mark,
    **dict.fromkeys(("NONE", "NEWTRUE", "NEWFALSE"), PickleMachine._op_const),
    **dict.fromkeys(
        ("EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET", "EMPTY_TUPLE"), PickleMachine._op_empty
    ),
    **dict.fromkeys(("BINPUT", "PUT", "LONG_BINPUT", "MEMOIZE"), PickleMachine._op_put),
    **dict.fromkeys(("BINGET", "GET", "LONG_BINGET"), PickleMachine._op_get),
    "GLOBAL": PickleMachine._op_global,
    "STACK_GLOBAL": PickleMachine._op_stack_global,
    "REDUCE": PickleMachine._op_reduce,
    "BUILD": PickleMachine._op_build,
    **dict.fromkeys(("NEWOBJ", "NEWOBJ_EX"), PickleMachine._op_newobj),
    "INST": PickleMachine._op_inst,
    "OBJ": PickleMachine._op_obj,
    **dict.fromkeys(("TUPLE", "LIST", "FROZENSET", "DICT"), PickleMachine._op_collect),
    **dict.fromkeys(("TUPLE1", "TUPLE2", "TUPLE3"), PickleMachine._op_tuple_n),
    **dict.fromkeys(
        ("APPEND", "SETITEM", "ADDITEMS", "APPENDS", "SETITEMS"), PickleMachine._op_fill
    ),
    **dict.fromkeys(("POP", "POP_MARK"), PickleMachine._op_pop),
    "DUP": PickleMachine._op_dup,
    **dict.fromkeys(("PERSID", "BINPERSID"), PickleMachine._op_persid),
    **dict.fromkeys(("EXT1", "EXT2", "EXT4"), PickleMachine._op_ext),
    "PROTO": PickleMachine._op_proto,
    **dict.fromkeys(("FRAME", "READONLY_BUFFER"), PickleMachine._op_nothing),
    "NEXT_BUFFER": PickleMachine._op_next_buffer,
    "STOP": PickleMachine._op_stop,
}

_BY_OPCODE: dict[pickletools.OpcodeInfo, Callable[[PickleMachine, str, Any, int], None] | None] = {
    op: (None if op.name in _LIT_OPS else _DISPATCH[op.name]) for op in pickletools.opcodes
}
