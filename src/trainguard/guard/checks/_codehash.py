"""Code identity shared by the code and rng checks: what code a value runs, its digest,
the comparison with the source on disk, and the registry of trainguard's own wrappers.

A snapshot of live objects cannot tell a patch made before the guard started from the
real thing: both are simply "what is there". The source file on disk can: a function's
code object must be what compiling its own file produces (same qualified name, same
first line, same bytecode and constants). A patched ``.pyc`` or a ``__code__`` swapped
early fails that comparison even though no identity ever changes under the guard.

Checks that wrap library functions themselves (the rng check wraps the seeding
functions) say so here, so that the code check does not report its own colleagues.
"""

from __future__ import annotations

import _imp
import functools
import hashlib
import importlib.util
import inspect
import marshal
import os
import sys
import sysconfig
import threading
import types
from collections.abc import Iterator
from typing import Any, ClassVar

__all__ = [
    "SourceIndex",
    "code_digest",
    "code_file",
    "describe",
    "functions_of",
    "is_library",
    "is_own_wrapper",
    "iter_code",
    "own_original",
    "reachable_functions",
    "register_own_wrapper",
    "torch_dir",
    "unregister_own_wrapper",
]

_OWN: dict[int, tuple[Any, Any]] = {}  # id(wrapper) -> (wrapper, original)
_OWN_LOCK = threading.Lock()


def register_own_wrapper(original: Any, wrapper: Any) -> None:
    """Declare ``wrapper`` (installed where ``original`` was) as trainguard's own."""
    with _OWN_LOCK:
        _OWN[id(wrapper)] = (wrapper, original)


def unregister_own_wrapper(wrapper: Any) -> None:
    with _OWN_LOCK:
        entry = _OWN.get(id(wrapper))
        if entry is not None and entry[0] is wrapper:
            del _OWN[id(wrapper)]


def own_original(value: Any) -> Any | None:
    """The function ``value`` wraps when it is a registered trainguard wrapper, else None."""
    entry = _OWN.get(id(value))
    if entry is None or entry[0] is not value:
        return None
    return entry[1]


def is_own_wrapper(value: Any) -> bool:
    return own_original(value) is not None


def iter_code(code: types.CodeType) -> Iterator[types.CodeType]:
    """``code`` and every code object nested in its constants (inner functions, lambdas,
    comprehensions, class bodies), depth first."""
    stack = [code]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(c for c in current.co_consts if isinstance(c, types.CodeType))


def code_digest(code: types.CodeType) -> str:
    """sha256 of the marshalled code: bytecode, constants, names and nested code.

    Marshal format 2 has no back-references, whose use depends on reference counts, so
    the same code always gives the same digest."""
    return hashlib.sha256(marshal.dumps(code, 2)).hexdigest()


def reachable_functions(value: Any, limit: int = 64) -> Iterator[types.FunctionType]:
    """The Python functions that calling ``value`` may run directly: the function itself
    (unwrapping methods, static/class methods, properties, partials) and, recursively,
    the functions held in its closure cells or ``__wrapped__``: a decorator's wrapper
    runs the function it closes over, so a patched inner function is a patched outer one.
    """
    seen: set[int] = set()
    stack = [value]
    while stack and len(seen) < limit:
        item = stack.pop()
        for fn in functions_of(item):
            if id(fn) in seen:
                continue
            seen.add(id(fn))
            yield fn
            for cell in fn.__closure__ or ():
                try:
                    stack.append(cell.cell_contents)
                except ValueError:  # an empty cell (a name assigned later)
                    continue
            wrapped = fn.__dict__.get("__wrapped__")
            if wrapped is not None:
                stack.append(wrapped)


def functions_of(item: Any) -> list[types.FunctionType]:
    """The Python functions behind a callable attribute (methods, static and class
    methods, the three functions of a property, a partial's function)."""
    if isinstance(item, types.FunctionType):
        return [item]
    if isinstance(item, types.MethodType | staticmethod | classmethod):
        return functions_of(item.__func__)
    if isinstance(item, property):
        return [f for part in (item.fget, item.fset, item.fdel) for f in functions_of(part)]
    if isinstance(item, functools.partial):
        return functions_of(item.func)
    return []


def describe(value: Any) -> dict[str, Any]:
    """Where ``value``'s code lives, for evidence: module, qualname, file:line, digest."""
    fns = functions_of(value)
    if fns:
        code = fns[0].__code__
        return {
            "module": getattr(fns[0], "__module__", None),
            "qualname": code.co_qualname,
            "file": f"{code.co_filename}:{code.co_firstlineno}",
            "sha256": code_digest(code),
        }
    if value is None:
        return {"value": None}
    return {
        "module": getattr(value, "__module__", None),
        "qualname": getattr(value, "__qualname__", type(value).__qualname__),
        "type": type(value).__qualname__,
        "id": id(value),
    }


class SourceIndex:
    """Code objects compiled fresh from source files, looked up by (qualname, first line).

    Compiling uses the running interpreter's own compiler and optimisation level, with
    ``dont_inherit`` so that the caller's ``from __future__`` flags do not leak in; the
    result is exactly what an honest ``.pyc`` of that file holds.

    Verdicts are remembered for the process, keyed by the file's identity (path, size,
    mtime) and the digest of the code in memory, so a second guard (or a test suite)
    does not compile the library again; any change to either side misses the memo.
    """

    _memo: ClassVar[dict[tuple[str, int, int, str, int, str], str]] = {}
    _memo_lock: ClassVar[threading.Lock] = threading.Lock()
    _MEMO_MAX: ClassVar[int] = 200_000

    def __init__(self) -> None:
        self._files: dict[str, dict[tuple[str, int], types.CodeType] | None] = {}
        self._stats: dict[str, tuple[int, int] | None] = {}
        self._names: dict[str, frozenset[str]] = {}
        self.compiled = 0

    def verify(self, code: types.CodeType) -> str:
        """``"ok"``, ``"mismatch"`` (the file defines it differently), ``"missing"`` (no
        such function at that line of that file) or ``"unverifiable"`` (no source file:
        code made by ``exec``, a deleted file). A frozen standard-library module
        (``<frozen os>``) is compared with the interpreter's own frozen code object."""
        filename = code.co_filename
        stat = self._stat(filename)
        if stat is None:
            return "unverifiable"
        key = (filename, *stat, code.co_qualname, code.co_firstlineno, code_digest(code))
        verdict = self._memo.get(key)
        if verdict is None:
            verdict = self._compare(code)
            with self._memo_lock:
                if len(self._memo) > self._MEMO_MAX:
                    self._memo.clear()
                self._memo[key] = verdict
        return verdict

    def _compare(self, code: types.CodeType) -> str:
        table = self._table(code.co_filename)
        if table is None:
            return "unverifiable"
        disk = table.get((code.co_qualname, code.co_firstlineno))
        if disk is None:
            return "missing"
        return "ok" if disk == code else "mismatch"

    def names(self, filename: str) -> frozenset[str]:
        """Every name the file's code stores or loads: is ``name`` one the source defines
        (or at least mentions), or one added to its module or class from outside?"""
        names = self._names.get(filename)
        if names is None:
            table = self._table(filename) if self._stat(filename) is not None else None
            codes = table.values() if table is not None else ()
            names = self._names[filename] = frozenset(n for c in codes for n in c.co_names)
        return names

    def _stat(self, filename: str) -> tuple[int, int] | None:
        if filename not in self._stats:
            stat = None
            if _frozen_name(filename) is not None:
                stat = (-1, -1)
            elif filename.endswith(".py"):
                try:
                    st = os.stat(filename)
                except OSError:
                    stat = None
                else:
                    stat = (st.st_size, st.st_mtime_ns)
            self._stats[filename] = stat
        return self._stats[filename]

    def _table(self, filename: str) -> dict[tuple[str, int], types.CodeType] | None:
        if filename in self._files:
            return self._files[filename]
        table: dict[tuple[str, int], types.CodeType] | None = None
        frozen = _frozen_name(filename)
        if frozen is not None:
            module = _imp.get_frozen_object(frozen)
            table = {(c.co_qualname, c.co_firstlineno): c for c in iter_code(module)}
            self._files[filename] = table
            return table
        try:
            with open(filename, "rb") as fh:
                source = importlib.util.decode_source(fh.read())
            module = compile(source, filename, "exec", dont_inherit=True, optimize=-1)
        except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
            table = None
        else:
            self.compiled += 1
            table = {(c.co_qualname, c.co_firstlineno): c for c in iter_code(module)}
        self._files[filename] = table
        return table


def _frozen_name(filename: str) -> str | None:
    """``os`` for ``<frozen os>`` when the interpreter holds that module frozen: its code
    object is then the reference, as a source file is for the others."""
    if not (filename.startswith("<frozen ") and filename.endswith(">")):
        return None
    name = filename[8:-1]
    return name if _imp.is_frozen(name) else None


def torch_dir() -> str:
    """torch's package folder, with a trailing separator (never matches when no torch)."""
    torch = sys.modules.get("torch")
    file = getattr(torch, "__file__", None)
    return os.path.dirname(file) + os.sep if isinstance(file, str) else "\0"


def own_dir() -> str:
    """The trainguard package: its wrappers are library code like any other."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


@functools.cache
def library_dirs() -> tuple[str, ...]:
    """Where installed code lives (the standard library, site-packages, trainguard)."""
    paths = sysconfig.get_paths()
    dirs = {paths.get("stdlib", ""), paths.get("purelib", ""), paths.get("platlib", "")}
    found = {d.rstrip(os.sep) + os.sep for d in dirs if d}
    return tuple(sorted({*found, own_dir()}))


def is_library(filename: str) -> bool:
    """Installed code: its source on disk is what must run. A project's own files are
    not held to that, since import hooks (pytest's assertion rewriting, jaxtyping) may
    legitimately compile them differently."""
    return filename.startswith(library_dirs()) or any(
        part in ("site-packages", "dist-packages") for part in filename.split(os.sep)
    )


def code_file(value: Any) -> str | None:
    """The source file of the code that calling ``value`` runs first."""
    call = inspect.getattr_static(type(value), "__call__", None)
    for candidate in (value, call):
        fns = functions_of(candidate)
        if fns:
            return fns[0].__code__.co_filename
    return None
