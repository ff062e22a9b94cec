"""The second layer of every load: a PEP 578 audit hook that lets a load window do nothing.

A *window* is the time an unpickler runs (``guarding()``; trainguard opens one around every
restricted unpickler's ``load()``). Inside it the thread may raise only the audit events in
``WINDOW_ALLOWED``, ``open`` without a write/append/create/truncate flag, and ``mmap`` for
reading; every other event (a shell, a new process or thread, a signal, a socket, a native
library, compiled or executed code, an import, a file written, removed, renamed, chmod-ed or
linked, a frame or the garbage collector inspected, ...) is refused by raising
``SuspiciousCallBlocked`` from inside the audited call, and recorded as a
``runtime.suspicious_call`` finding with the stack. Nothing is exempt by call site: imports,
the standard library and trainguard get the same answer. The modules that the allowed globals
need are imported *before* the window opens (``trainguard.load._restricted.Allowed``).

What this layer trusts: CPython's audit events (what raises which event, PEP 578) and the
table above; nothing in Python code running inside the window can change either:

* ``sys.addaudithook`` cannot be undone. The hook is a closure made once by ``install()`` and
  referenced by nothing but the interpreter's hook list: no module attribute holds it, its
  state or an on/off flag. Its decision uses only objects captured when it was made (no
  module global, no builtin looked up at call time).
* Windows are opened and closed through ``sys.audit("trainguard.window", ...)``, which the
  hook alone reads. Opening one needs nothing (it can only block more); closing one needs
  the token object that opened it, held only in the local variables of ``guarding()``'s
  frame. The ways to reach a frame or the closure (``sys._getframe``, ``tb_frame``,
  ``gi_frame``, ``f_code``, ``__code__``, ``gc.get_referrers``, ``ctypes``) are events,
  refused inside a window.
* A refused event taints the window: leaving it raises ``SuspiciousCallBlocked`` even when
  the code that ran caught the first one.

Left to the first layer (the restricted unpickler) and out of this one's sight: code that
runs after the window (in objects handed back to the caller), threads that already exist,
and Python-level rebinding of module attributes (not an audit event; the loader's seal,
``trainguard.load._seal``, checks trainguard's own namespaces after every window).

The same hook serves the runtime guard's process-wide recording (``record()``, see
``trainguard.load._auditrecord``); that part never blocks. The hook's only exemption is its
own C-level reads (the frames, the threads): the recording is handed the stack as plain data
read there (``f_code`` is an audited read a window refuses), and runs after the window has
recorded the event and with no exemption, so a recording or callback registered from inside
a load is refused like any other code in the window.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainguard.errors import SuspiciousCallBlocked
from trainguard.findings import Finding, Location, Rule, Severity
from trainguard.load import _auditrecord
from trainguard.load._auditrecord import (
    HONEST,
    RECORDED_EVENTS,
    SPAWN_EVENTS,
    CallEvent,
    Recording,
    call_at_next_event,
    record,
)

__all__ = [
    "HONEST",
    "RECORDED_EVENTS",
    "SPAWN_EVENTS",
    "WINDOW_ALLOWED",
    "CallEvent",
    "Recording",
    "Watch",
    "call_at_next_event",
    "guarding",
    "install",
    "record",
    "refusal",
]

WINDOW_ALLOWED = frozenset({"builtins.id", "os.listdir", "os.scandir", "glob.glob", "glob.glob/2"})
"""Events a window allows as they are (besides read-only ``open`` and ``mmap``): they read."""

_WRITE_FLAGS = (
    os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC | getattr(os, "O_TMPFILE", 0)
)
_MMAP_READ = frozenset({1, 3})  # mmap.ACCESS_READ, ACCESS_COPY: the file is never written
_CHANNEL = "trainguard.window"
_audit = sys.audit
_install_lock = threading.Lock()
_installed: list[bool] = []


@dataclass
class Watch:
    """One window: what it loads, whether it blocks, and (once left) what was refused."""

    path: str
    block: bool = True
    findings: list[Finding] = field(default_factory=list)
    on_finding: Callable[[Finding], None] | None = None


def _make_hook() -> Callable[[str, tuple[Any, ...]], None]:
    """The hook, with everything its decision needs captured now, out of reach later."""
    get_ident = _thread.get_ident
    getframe = sys._getframe
    no_frame = ValueError
    kind = type
    text = repr
    size = len
    indices = range
    blocked = SuspiciousCallBlocked
    allowed = WINDOW_ALLOWED
    write_flags = _WRITE_FLAGS
    mmap_read = _MMAP_READ
    channel = _CHANNEL
    recorder = _auditrecord
    plain = (str, bytes, int, float, bool, kind(None))
    name_of = type.__dict__["__name__"].__get__
    current_frames = sys._current_frames
    traced = 12  # frames in a window's finding
    deepest = _auditrecord.MAX_DEPTH  # frames handed to the recording
    windows: dict[int, list[tuple[object, bool, str, list[tuple[str, str, str]], Any]]] = {}
    own: set[int] = set()  # threads in the hook's own C-level work (a frame, its code)

    def describe(args: Any, depth: int) -> str:
        tp = kind(args)
        if tp is tuple and depth < 3:
            out = "("
            for item in args:
                out = out + describe(item, depth + 1) + ", "
            return out + ")"
        for p in plain:
            if tp is p:
                return text(args)[:200]
        named: str = name_of(tp)
        return "<" + named + ">"

    def text_of(value: Any) -> str:
        return value if kind(value) is str else "?"  # a str subclass never runs in the hook

    def frames_of(frame: Any, limit: int) -> list[tuple[str, Any, str, Any, Any]]:
        """The stack as plain data: taken here, inside ``own``, because ``f_code`` is itself
        an audited read; what is kept (str, int, the globals dict, the code object, for
        judging who started a program) runs no code to take."""
        out: list[tuple[str, Any, str, Any, Any]] = []
        while frame is not None and size(out) < limit:
            code = frame.f_code
            out.append((text_of(code.co_filename), frame.f_lineno, text_of(code.co_name),
                        frame.f_globals, code))  # fmt: skip
            frame = frame.f_back
        return out

    def stack_of(frames: list[tuple[str, Any, str, Any, Any]]) -> str:
        out = ""
        for filename, line, name, _, _ in frames[:traced]:
            lineno = text(line) if kind(line) is int else "?"
            out = out + "  " + filename + ":" + lineno + " in " + name + "\n"
        return out

    def on_channel(args: tuple[Any, ...], ident: int) -> None:
        if size(args) == 5 and args[0] == "open":
            _, token, block, path, found = args
            if kind(block) is bool and kind(path) is str and kind(found) is list:
                own.add(ident)
                try:  # the threads that exist now; any other one is started by the load
                    known = current_frames().keys()
                finally:
                    own.discard(ident)
                windows.setdefault(ident, []).append((token, block, path, found, known))
        elif size(args) == 2 and args[0] == "close":
            stack = windows.get(ident)
            if stack is None:
                return
            for i in indices(size(stack)):
                if stack[i][0] is args[1]:  # this window and every one opened inside it
                    del stack[i:]
                    break
            if not stack:
                del windows[ident]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        ident = get_ident()
        if ident in own:
            return
        if event == channel:
            on_channel(args, ident)
            return
        stack = windows.get(ident)
        if not stack and windows:  # a thread the load started is inside its window too
            for opened in windows.values():
                for window in opened:
                    if ident not in window[4]:
                        stack = opened
        refused = False
        if stack:
            refused = not (
                event in allowed
                or (
                    event == "open"
                    and size(args) > 2
                    and kind(args[2]) is int
                    and not args[2] & write_flags
                )
                or (event == "mmap.__new__" and size(args) > 2 and args[2] in mmap_read)
            )
        wanted = recorder.wants(event)
        if not refused and not wanted:
            return
        frames: list[tuple[str, Any, str, Any, Any]] = []
        caller: Any = None
        trace = detail = ""
        own.add(ident)
        try:  # the frames are read here, once, for the window and the recording alike
            try:
                caller = getframe(1)
            except no_frame:  # raised from C with no Python caller
                caller = None
            frames = frames_of(caller, deepest if wanted else traced)
            if refused:
                trace = stack_of(frames)
                detail = describe(args, 0)[:300]
        finally:
            own.discard(ident)
        block = False
        if refused and stack:  # the window's record first: the recording's events come after
            for window in stack:
                window[3].append((event, detail, trace))
                if window[1]:
                    block = True
        if wanted:
            try:  # noqa: SIM105 - no module global (contextlib) is looked up in the hook
                recorder.on_event(event, args, frames)
            except BaseException:  # noqa: BLE001 - the recording never breaks a call
                pass
        if block and stack:
            path = stack[-1][2]
            raise blocked("blocked " + event + " while loading " + path, event=event, path=path)

    return hook


def install() -> None:
    """Install the process-wide hook once (idempotent)."""
    with _install_lock:
        if not _installed:
            sys.addaudithook(_make_hook())
            _installed.append(True)


def _finding(watch: Watch, event: str, detail: str, trace: str) -> Finding:
    return Finding(
        Rule.SUSPICIOUS_CALL,
        Severity.CRITICAL,
        f"during the load of {watch.path}: {event}{detail}",
        Location(watch.path),
        {"event": event, "args": detail, "stack": trace, "blocked": watch.block},
    )


@contextlib.contextmanager
def guarding(
    path: str, *, block: bool = True, on_finding: Callable[[Finding], None] | None = None
) -> Iterator[Watch]:
    """A load window on this thread: refuse (or, ``block=False``, only record) every effect.

    Findings reach ``watch.findings`` and ``on_finding`` once the window is closed, so a
    sink that writes (the ledger) is never itself inside the window. Code inside may catch
    the refusal; ``refusal(watch)`` is what the loader raises then (``_restricted.window``).
    """
    install()
    watch = Watch(str(path), bool(block), on_finding=on_finding)
    token = object()
    raw: list[tuple[str, str, str]] = []
    _audit(_CHANNEL, "open", token, watch.block, watch.path, raw)
    try:
        yield watch
    except SuspiciousCallBlocked as exc:
        _audit(_CHANNEL, "close", token)
        _deliver(watch, raw)
        if exc.finding is None and watch.findings:
            exc.finding = watch.findings[0]
        raise
    finally:
        _audit(_CHANNEL, "close", token)  # a second close of the same token does nothing
        _deliver(watch, raw)


def refusal(watch: Watch) -> SuspiciousCallBlocked | None:
    """The error for a blocking window in which something was refused, else None."""
    if not watch.block or not watch.findings:
        return None
    first = watch.findings[0]
    event = str(first.evidence["event"])
    return SuspiciousCallBlocked(
        f"blocked {event} while loading {watch.path}", event=event, path=watch.path, finding=first
    )


def _deliver(watch: Watch, raw: list[tuple[str, str, str]]) -> None:
    while raw:
        event, detail, trace = raw.pop(0)
        finding = _finding(watch, event, detail, trace)
        watch.findings.append(finding)
        if watch.on_finding is not None:
            watch.on_finding(finding)


def __getattr__(name: str) -> Any:
    """The recording's state, for tests and the guard (``audithook._recorders``)."""
    if name in ("_recorders", "_recordable", "_next"):
        return getattr(_auditrecord, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
