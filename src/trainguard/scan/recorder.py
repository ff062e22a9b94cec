"""What one stream did with its globals, and the argument checks on every call.

The stand-ins (``standins.py``) report to a ``Recorder``: each global with how it was used
(``Use``: looked up, instantiated, called), where, and an example of its arguments; the
findings that need no policy (gadgets, argument tuples computed at load time, non-empty
backward hooks, huge allocations, nested pickles handed to a loader) are emitted as they
happen. ``arg_uses`` says which arguments of an allowed callable it calls or instantiates,
so a global passed there is judged for that use and a computed value there is a gadget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.scan.policy import canonical
from trainguard.scan.standins import (
    KEEP_ITEMS,
    Global,
    GlobalMeta,
    Made,
    Spread,
    describe,
)
from trainguard.scan.uses import Use

__all__ = ["ALLOCATION_LIMIT", "LITERAL_GETATTR", "Emit", "GlobalUse", "Nested", "Recorder"]

LITERAL_GETATTR = "getattr of a literal name"
"""How ``builtins.getattr(<global>, "name")`` is recorded: resolved as the global itself."""

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

    @classmethod
    def silent(cls) -> Recorder:
        """A recorder that only collects globals: no findings, no nested scans, no clock
        (for asking CPython whether bytes are a pickle, or where one ends)."""
        return cls(
            emit=lambda *_: None,
            nested=lambda *_: None,
            arg_uses={},
            loaders=frozenset(),
            where=lambda: None,
            check_time=lambda: None,
        )

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
            cls = GlobalMeta("Global", (Global,), ns)
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
            and isinstance(args[0], GlobalMeta)
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
            g.example_args = describe(args)
        self._check_args(cls._tg_key, args, kw)
        return Made(self, cls, args, kw)

    def computed_call(self, made: Made, args: tuple[Any, ...], kw: dict[str, Any]) -> Made:
        self._critical(
            f"calls a callable that was computed at load time (the result of "
            f"{describe(made.maker, 0)}), not named by a global: a gadget chain",
            {"callable": describe(made), "args": describe(args)},
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
            if isinstance(arg, Spread):
                self._critical(
                    f"{key} is called with an argument tuple computed at load time (by "
                    f"{describe(arg.made.maker, 0)}): what it really receives is hidden",
                    {"global": key, "position": i},
                )
        for idx, use in self.arg_uses.get(key, {}).items():
            if idx >= len(args):
                continue
            arg = args[idx]
            if isinstance(arg, GlobalMeta):
                self.record(arg, use, f"argument {idx} of {key}")
            elif isinstance(arg, Made) and use is not Use.REF and (key, idx) not in _MADE_OK:
                self._critical(
                    f"{key} {'calls' if use is Use.CALL else 'instantiates'} its argument "
                    f"{idx}, which was computed at load time ({describe(arg)})",
                    {"global": key, "position": idx},
                )
        hooks = _HOOK_ARGS.get(key)
        if hooks is not None and hooks < len(args) and _non_empty(args[hooks]):
            self._critical(
                f"{key} is given non-empty backward hooks: they run during backward()",
                {"global": key, "hooks": describe(args[hooks])},
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
