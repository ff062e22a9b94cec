"""A PEP 578 audit hook that watches loads which still run a full unpickler.

``sys.addaudithook`` cannot be undone, so one hook is installed for the life of the process
and does nothing unless a ``guarding()`` block is active in the current context (a context
variable, so threads and async tasks each have their own). Inside such a block, events that
a checkpoint load never needs (a shell, a new process, a signal, a socket, a native
library, code compiled from text) are recorded as ``runtime.suspicious_call`` findings with
the Python stack, and, when the block says so, stopped by raising ``SuspiciousCallBlocked``
from inside the audited call.

Imports are exempt: ``find_class`` imports modules and the import system compiles and
executes their code, which raises the same ``compile``/``exec`` events. Which modules may be
imported is the scanner's and the restricted unpickler's job, not this hook's.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from trainguard.errors import SuspiciousCallBlocked
from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["BLOCKED_EVENTS", "Watch", "guarding", "install"]

BLOCKED_EVENTS = frozenset(
    {
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.fork",
        "os.forkpty",
        "os.kill",
        "os.killpg",
        "os.startfile",
        "subprocess.Popen",
        "pty.spawn",
        "socket.connect",
        "socket.bind",
        "socket.getaddrinfo",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.call_function",
        "compile",
        "exec",
        "webbrowser.open",
        "sys.settrace",
        "sys.setprofile",
        "sys.addaudithook",
    }
)
_IMPORT_CODE = ("importlib._bootstrap", "<frozen importlib._bootstrap")


@dataclass
class Watch:
    """One guarded region: what it is loading, whether to block, what was seen."""

    path: str
    block: bool = True
    findings: list[Finding] = field(default_factory=list)
    on_finding: Callable[[Finding], None] | None = None


_current: contextvars.ContextVar[Watch | None] = contextvars.ContextVar(
    "trainguard_watch", default=None
)
_installed = False
_lock = threading.Lock()
_busy = threading.local()


def _harmless_compile(event: str) -> bool:
    """``compile`` to an AST only (``ast.parse``, ``ast.literal_eval``: numpy reads ``.npy``
    headers so) makes nothing that can run; anything run later raises its own event."""
    if event != "compile":
        return False
    try:
        caller = sys._getframe(2)  # 0: this function, 1: the hook, 2: who called compile()
    except ValueError:
        return False
    return caller.f_globals.get("__name__") == "ast"


def _from_import_system() -> bool:
    frame = sys._getframe(2)
    depth = 0
    while frame is not None and depth < 40:
        name = frame.f_code.co_filename
        if name.startswith(_IMPORT_CODE) or frame.f_globals.get("__name__", "").startswith(
            "importlib"
        ):
            return True
        frame = frame.f_back  # type: ignore[assignment]
        depth += 1
    return False


def _hook(event: str, args: tuple[Any, ...]) -> None:
    watch = _current.get()
    if watch is None or event not in BLOCKED_EVENTS or getattr(_busy, "on", False):
        return
    if event in ("compile", "exec") and (_harmless_compile(event) or _from_import_system()):
        return
    _busy.on = True  # the hook's own work (formatting a stack) must not re-enter it
    try:
        stack = "".join(traceback.format_stack(sys._getframe(1), limit=12))
        detail = repr(args)[:300]
        finding = Finding(
            Rule.SUSPICIOUS_CALL,
            Severity.CRITICAL,
            f"during the load of {watch.path}: {event}{detail}",
            Location(watch.path),
            {"event": event, "args": detail, "stack": stack, "blocked": watch.block},
        )
        watch.findings.append(finding)
        if watch.on_finding is not None:
            watch.on_finding(finding)
    finally:
        _busy.on = False
    if watch.block:
        raise SuspiciousCallBlocked(
            f"blocked {event} while loading {watch.path}", event=event, path=watch.path,
            finding=finding,
        )  # fmt: skip


def install() -> None:
    """Install the process-wide hook once (idempotent)."""
    global _installed
    with _lock:
        if not _installed:
            sys.addaudithook(_hook)
            _installed = True


@contextlib.contextmanager
def guarding(
    path: str, *, block: bool = True, on_finding: Callable[[Finding], None] | None = None
) -> Iterator[Watch]:
    """Watch (and by default block) suspicious calls made while loading ``path``."""
    install()
    watch = Watch(path, block, on_finding=on_finding)
    token = _current.set(watch)
    try:
        yield watch
    finally:
        _current.reset(token)
