"""The judge's stand-ins: what CPython's unpickler gets instead of every global it asks for.

A global becomes a fresh *type* (``NEWOBJ`` needs a type) whose metaclass records a call,
whose ``__new__`` records an instantiation, and whose mutating methods (looked up by
``BUILD``, ``APPEND``, ``ADDITEMS``, ``SETITEM`` on the global itself) record monkeypatching.
What a call or instantiation returns is a ``Made``: it records its ``BUILD`` states and the
items put into it, and calling it is a gadget (a callable computed at load time). Nothing in
here imports, calls or looks up anything the pickle named.

What this trusts: that ``_pickle.c`` reaches these objects only through ``find_class``,
``persistent_load`` and the special methods defined here (``__call__``, ``__new__``,
``__setstate__``, ``extend``/``append``/``add``, ``__setitem__``, ``__hash__``/``__eq__``);
``tests/scan/test_judge.py`` attacks each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from trainguard.scan.uses import Use

if TYPE_CHECKING:
    from trainguard.scan.recorder import Recorder

__all__ = [
    "KEEP_ITEMS",
    "Global",
    "GlobalMeta",
    "Made",
    "Persisted",
    "Spread",
    "describe",
    "global_key",
    "made_class",
]

KEEP_ITEMS = 64
"""Items of a made object remembered for argument checks; the rest are only counted."""


class GlobalMeta(type):
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


class Global(metaclass=GlobalMeta):
    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # NEWOBJ, INST/OBJ without args
        return cls._tg_rec.made(cls, args, kwargs, Use.NEW, "new")

    __setstate__ = _Mutator("BUILD")
    extend = _Mutator("APPENDS")
    append = _Mutator("APPEND")
    add = _Mutator("ADDITEMS")


class Spread:
    """What a ``Made`` holds as its only tuple item: a callee that receives one of these as
    an argument was handed an argument *tuple* computed at load time."""

    __slots__ = ("made",)

    def __init__(self, made: Made) -> None:
        self.made = made


class Made(tuple):  # type: ignore[type-arg]
    """The result of calling or instantiating something, as the judge sees it.

    A ``tuple`` subclass so that CPython accepts it where it needs an argument tuple, as it
    would accept the real result of ``builtins.tuple(...)``; it spreads into one ``Spread``.
    """

    maker: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    states: list[Any]
    items: list[Any]
    n_items: int
    rec: Recorder

    def __new__(cls, rec: Recorder, maker: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> Made:
        token = Spread.__new__(Spread)
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
        return f"<result of {describe(self.maker)}>"


class Persisted(Made):
    """What ``persistent_load`` returned (a storage in torch's formats)."""


def global_key(obj: Any) -> str | None:
    """``module.name`` of a stand-in global, else None."""
    return obj._tg_key if isinstance(obj, GlobalMeta) else None


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


def describe(obj: Any, depth: int = 2) -> str:
    """A bounded description of an untrusted value: never a full ``repr`` (8^depth)."""
    if isinstance(obj, GlobalMeta):
        return obj._tg_key[:200]
    if isinstance(obj, Made):
        return f"{describe(obj.maker, 0)}(...)"
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
            f"{describe(k, depth - 1)}: {describe(v, depth - 1)}"
            if isinstance(obj, dict)
            else describe(k, depth - 1)
            for k, v in ((x if isinstance(obj, dict) else (x, None)) for x in seq)
        )
        more = ", ..." if len(obj) > 6 else ""
        return f"{type(obj).__name__}({inner}{more})"[:300]
    return f"<{type(obj).__name__}>"
