"""Who may open a ``guard.authorized()`` window.

Inside the window the checks take every change as the user's own, so the window is worth
having to any code in the job: it can find the guard (``gc``, the integration's
attribute) as easily as the user can. The window is therefore honoured only for:

* the job's entry script: the calling frame runs in ``sys.modules["__main__"]`` (its
  globals are that module's dict, by identity) and its code object is found, equal
  (``==``: bytecode, constants, names, line table), among the code objects compiled from
  the file that ``__main__.__file__`` names, read from disk now. A
  ``compile(src, "/path/to/train.py", "exec")`` of other source is not among them;
* trainguard's own callers (``trainguard.integrations.*``, ``trainguard.drill.*``: the
  HF callback's resume window), verified the same way against their own module file;
* modules the operator names in ``TRAINGUARD_AUTHORIZE`` (comma-separated ``fnmatch``
  patterns of module names, read once when this module is imported): the frame's globals
  must be that module's dict and its code reachable, by identity, from the module's
  functions and classes as they were the first time the module was asked about (for
  modules whose code is rewritten at import, as pytest rewrites test modules);
* a caller presenting ``trainguard run``'s per-run token: the supervisor puts it in the
  job's environment (``TRAINGUARD_AUTHORITY``); this module, imported by trainguard's
  start-up hook before the job's own code runs, removes it from ``os.environ`` and keeps
  only its SHA-256. Whoever the operator hands the token to may present it
  (``guard.authorized(token=...)``); there is no other channel into the job.

What it trusts: the frame stack (``sys._getframe``) and ``sys.modules`` as they are when
the window opens, the entry script's and trainguard's files on disk (the environment
verify and the user own those), and that the job's code goes through ``authorized()``
rather than the guard's private state (``_authorized``, a check's ``rebaseline``): code
in the process can reach those too, and only the code check sees it doing so. Code the
trusted caller calls inside the window is not judged here.

``verified_origin`` answers the same question for the process check (who started a
program): the entry script as above, or installed library code, whose code object must
be what its own file compiles to (``_codehash.SourceIndex``) and whose module must be
loaded from that file. Code made by ``exec``, a temp file, or a module whose file does
not hold its code is unverified.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import os
import sys
import threading
import types
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AUTHORIZE_ENV",
    "TOKEN_ENV",
    "Verdict",
    "judge",
    "take_token",
    "verified_origin",
]

TOKEN_ENV = "TRAINGUARD_AUTHORITY"
AUTHORIZE_ENV = "TRAINGUARD_AUTHORIZE"
_OWN_PACKAGES = ("trainguard.integrations", "trainguard.drill")

_lock = threading.Lock()
_token_digest: bytes | None = None
_configured: tuple[str, ...] = ()
_snapshots: dict[str, frozenset[int]] = {}
_snapshot_keep: dict[str, list[types.CodeType]] = {}
_index: Any = None
_compiled: dict[tuple[str, int, int], dict[tuple[str, int], list[types.CodeType]]] = {}


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a window may be honoured, and who asked (``by``: ``entry script``,
    ``trainguard``, ``configured``, ``supervisor token`` or ``foreign code``)."""

    trusted: bool
    by: str
    module: str
    file: str
    line: int
    reason: str


def take_token(environ: MutableMapping[str, str] | None = None) -> bool:
    """Remove the supervisor's token from ``environ`` (default ``os.environ``) and keep
    its digest; False when there was none. Called once at import."""
    global _token_digest
    env = os.environ if environ is None else environ
    token = env.pop(TOKEN_ENV, None)
    if not token:
        return False
    _token_digest = hashlib.sha256(token.encode()).digest()
    return True


def _read_configured(environ: MutableMapping[str, str] | None = None) -> tuple[str, ...]:
    env = os.environ if environ is None else environ
    raw = env.get(AUTHORIZE_ENV, "")
    return tuple(p.strip() for p in raw.split(",") if p.strip())


def judge(
    frame: types.FrameType, token: str | None = None, *, main: types.ModuleType | None = None
) -> Verdict:
    """May the code running in ``frame`` open a window? ``main`` stands in for
    ``sys.modules["__main__"]`` (tests)."""
    code = frame.f_code
    name = str(frame.f_globals.get("__name__", "?"))
    where = (code.co_filename, frame.f_lineno or code.co_firstlineno)

    def verdict(trusted: bool, by: str, reason: str) -> Verdict:
        return Verdict(trusted, by, name, where[0], where[1], reason)

    if token is not None:
        if _token_digest is not None and hmac.compare_digest(
            hashlib.sha256(token.encode()).digest(), _token_digest
        ):
            return verdict(True, "supervisor token", "the run's token was presented")
        return verdict(False, "foreign code", "a token was presented and it is not the run's")
    module = main if name == "__main__" and main is not None else sys.modules.get(name)
    if module is None or module.__dict__ is not frame.f_globals:
        return verdict(False, "foreign code", f"its globals are not those of module {name!r}")
    if name == "__main__" or name.startswith(tuple(p + "." for p in _OWN_PACKAGES)):
        by = "entry script" if name == "__main__" else "trainguard"
        if _on_disk(code, module):
            return verdict(True, by, f"its code is in {module.__file__} as it is on disk")
        return verdict(
            False, "foreign code", f"its code is not in the file of module {name!r} on disk"
        )
    if any(fnmatch.fnmatchcase(name, p) for p in _configured):
        if id(code) in _snapshot(module):
            return verdict(True, "configured", f"module {name!r} is named in {AUTHORIZE_ENV}")
        return verdict(False, "foreign code", f"its code is not one of module {name!r}'s")
    return verdict(False, "foreign code", f"module {name!r} may not open windows")


def verified_origin(
    code: object, f_globals: object, *, main: types.ModuleType | None = None
) -> str | None:
    """``"entry script"``, ``"library"`` or None (unverified) for the code running in a
    frame with these globals."""
    if not isinstance(code, types.CodeType) or not isinstance(f_globals, dict):
        return None
    name = f_globals.get("__name__")
    module = main if name == "__main__" and main is not None else sys.modules.get(str(name))
    if module is None or module.__dict__ is not f_globals:
        return None
    if name == "__main__":
        return "entry script" if _on_disk(code, module) else None
    from trainguard.guard.checks._codehash import SourceIndex, is_library

    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not is_library(code.co_filename):
        return None
    try:
        same = os.path.realpath(path) == os.path.realpath(code.co_filename)
    except (OSError, ValueError):
        return None
    if not same:
        return None
    global _index
    if _index is None:
        _index = SourceIndex()
    return "library" if _index.verify(code) == "ok" else None


def _on_disk(code: types.CodeType, module: types.ModuleType) -> bool:
    path = getattr(module, "__file__", None)
    if not isinstance(path, str):
        return False
    try:
        real = os.path.realpath(path)
        if os.path.realpath(code.co_filename) != real:
            return False
        st = os.stat(real)
        key = (real, st.st_mtime_ns, st.st_size)
        with _lock:
            table = _compiled.get(key)
        if table is None:
            with open(real, "rb") as f:
                source = f.read()
            top = compile(source, code.co_filename, "exec", dont_inherit=True)
            table = {}
            for each in _walk(top):
                table.setdefault((each.co_qualname, each.co_firstlineno), []).append(each)
            with _lock:
                _compiled[key] = table
    except (OSError, SyntaxError, ValueError):
        return False
    return any(c == code for c in table.get((code.co_qualname, code.co_firstlineno), ()))


def _snapshot(module: types.ModuleType) -> frozenset[int]:
    """The code objects of ``module``'s functions and classes, first time asked (kept
    alive, so their ids stay theirs)."""
    name = module.__name__
    with _lock:
        known = _snapshots.get(name)
        if known is None:
            codes = list(_module_codes(module))
            _snapshot_keep[name] = codes
            known = _snapshots[name] = frozenset(id(c) for c in codes)
    return known


def _module_codes(module: types.ModuleType) -> Iterator[types.CodeType]:
    name = module.__name__
    seen: set[int] = set()
    stack: list[object] = list(vars(module).values())
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, type) and obj.__module__ == name:
            stack.extend(vars(obj).values())
        elif isinstance(obj, (staticmethod, classmethod, property)):
            stack.extend(
                f for f in (getattr(obj, a, None) for a in ("__func__", "fget", "fset")) if f
            )
        else:
            func = getattr(obj, "__wrapped__", obj)
            code = getattr(func, "__code__", None)
            if isinstance(code, types.CodeType) and getattr(func, "__module__", None) == name:
                yield from _walk(code)


def _walk(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _walk(const)


take_token()
_configured = _read_configured()
