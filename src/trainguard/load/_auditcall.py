"""How the recording describes one audited call (``CallEvent``): the call site, the
modules between it and the user's code, whose doing it is, a short stack and the
arguments (split from ``trainguard.load._auditrecord``, which decides what to record).

*What it trusts:* the frames as the hook read them (plain data, ``audithook``) and each
frame's ``__name__`` global for the module it runs in; a file is "third party" when it
lives under ``site-packages``/``dist-packages``, "trainguard" when its module is.
"""

from __future__ import annotations

import linecache
import socket
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trainguard.load._auditnative import NATIVE_EVENTS
from trainguard.load._auditnative import symbol as native_symbol

__all__ = ["SOCKET_EVENTS", "CallEvent", "Frame", "args_text", "describe", "module_of"]

SOCKET_EVENTS = frozenset({"socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg"})
_ENV_ARG = {"subprocess.Popen": 3, "os.exec": 2, "os.posix_spawn": 2, "os.spawn": 3}
_STACK_SHOWN = 8
_kinds: dict[str, str] = {}

Frame = tuple[str, int | None, str, dict[str, Any], Any]
"""One frame as the hook hands it over: file, line, function, the frame's globals, its
code object (never read here: the guard judges who started a program with it)."""


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One audited call, as a recording's callback receives it.

    ``site`` is the ``file:line`` responsible: the innermost frame outside the standard
    library (``subprocess.run`` is not the culprit, its caller is). ``modules`` are the
    non-standard-library modules from there outwards up to the first frame of the user's
    own code (what ``allow`` and ``HONEST`` match); ``origin`` is the innermost module.
    ``own``: trainguard's doing; ``importing``: an installed package's import-time code.
    """

    event: str
    args: str
    site: str
    module: str
    origin: str
    modules: tuple[str, ...]
    own: bool
    importing: bool
    thread: str
    stack: str
    site_code: Any = field(default=None, compare=False, repr=False)
    """The code object running at ``site`` (judged by the guard's process check)."""
    site_globals: Any = field(default=None, compare=False, repr=False)
    unix_socket: bool = False
    """A socket event on a Unix socket (a local service, never the network)."""
    symbol: str | None = None
    """For a native lookup or call (``_auditnative``): the dangerous symbol it names."""
    target: Any = field(default=None, compare=False, repr=False)
    """For ``object.__setattr__``: (the object, the attribute name) set (a function whose
    ``__code__`` is swapped), for the guard's code check; never read here."""


def describe(event: str, args: tuple[Any, ...], frames: Sequence[Frame]) -> CallEvent:
    origin = (module_of(frames[0]) or "?") if frames else "?"
    site_at: Frame | None = None
    modules: list[str] = []
    kinds: list[str] = []
    own = importing = False
    for at in frames:
        name = module_of(at) or "?"
        kind = _kind(name, at[0])
        if kind == "stdlib" and modules and not importing and name.startswith("importlib"):
            importing = all(k == "third_party" for k in kinds)
        if kind != "stdlib":
            if site_at is None:
                site_at = at
            modules.append(name)
            kinds.append(kind)
            if kind == "trainguard":
                own = True
                break
            if kind == "user":
                break
    where = site_at if site_at is not None else (frames[0] if frames else None)
    site = f"{where[0]}:{where[1]}" if where is not None else "?"
    module = (module_of(where) or "?") if where is not None else "?"
    return CallEvent(
        event=event,
        args=args_text(event, args),
        site=site,
        module=module,
        origin=origin,
        modules=tuple(modules),
        own=own,
        importing=importing,
        thread=threading.current_thread().name,
        stack=_stack_text(frames),
        site_code=where[4] if where is not None and len(where) > 4 else None,
        site_globals=where[3] if where is not None else None,
        unix_socket=event in SOCKET_EVENTS
        and bool(args)
        and getattr(args[0], "family", None) == getattr(socket, "AF_UNIX", None),
        symbol=native_symbol(event, args) if event in NATIVE_EVENTS else None,
        target=tuple(args[:2]) if event == "object.__setattr__" else None,
    )


def module_of(frame: Frame) -> str:
    name = frame[3].get("__name__")
    return name if isinstance(name, str) else ""


def _stack_text(frames: Sequence[Frame]) -> str:
    """What ``traceback.format_stack`` shows (innermost frames, outermost first), from the
    hook's plain data: source lines come from ``linecache``, which only reads files."""
    shown = frames[:_STACK_SHOWN]
    for filename, _, _, module_globals, _ in shown:
        linecache.lazycache(filename, module_globals)
    summary = traceback.StackSummary.from_list(
        [traceback.FrameSummary(f, n, name, lookup_line=False) for f, n, name, _, _ in shown[::-1]]
    )
    return "".join(summary.format())


def _kind(module: str, filename: str) -> str:
    """``trainguard``, ``stdlib``, ``third_party`` (installed packages) or ``user``."""
    kind = _kinds.get(filename)
    if kind is None:
        top = module.partition(".")[0]
        if top == "trainguard":
            kind = "trainguard"
        elif top in sys.stdlib_module_names or filename.startswith("<frozen "):
            kind = "stdlib"
        elif "site-packages" in filename or "dist-packages" in filename:
            kind = "third_party"
        else:
            kind = "user"
        if len(_kinds) < 4096:
            _kinds[filename] = kind
    return kind


def args_text(event: str, args: tuple[Any, ...]) -> str:
    """The call's arguments, short; an environment passed to a new program is left out
    (it holds secrets more often than evidence)."""
    at = _ENV_ARG.get(event)
    if at is not None and len(args) > at and args[at] is not None:
        args = (*args[:at], "<environment left out>", *args[at + 1 :])
    try:
        text = repr(args)
    except Exception:  # noqa: BLE001 - a broken __repr__ must not lose the event
        text = f"<{len(args)} arguments>"
    return text[:300]
