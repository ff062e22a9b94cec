"""The runtime guard's side of the audit hook: process-wide recording of calls a job has no
business making (see ``trainguard.load.audithook``, which installs the one hook).

``record()`` starts a recording (any thread, any context) of ``RECORDED_EVENTS``, handed to a
callback as ``CallEvent``; it never blocks and never raises. What a recording leaves out, and
why:

* ``compile``/``exec``/``import``, ``os.fork`` and ``socket.getaddrinfo``: honest training
  does them all the time (imports, ``torch.compile``, DataLoader workers, DNS).
* ``ctypes.dlsym``/``ctypes.dlsym/handle``/``ctypes.call_function`` unless they name a
  native signal sender, the raw ``syscall`` or a native resolver (``_auditnative``):
  ctypes looks up many symbols honestly (torch, triton, wandb), and only those can send
  the job a signal without ``os.kill``'s audit event. Loading a library
  (``ctypes.dlopen``) is recorded as before.
* ``socket.sendmsg`` without an address (a connected socket, already seen at connect)
  and ``os.kill``/``signal.pthread_kill`` with signal 0 (a liveness probe; sends nothing).
* trainguard's own calls: the innermost frame outside the standard library is
  trainguard's, or trainguard is reached through third-party frames only, before any
  frame of the user's code (its ledger's witness command, its signal watcher).
* machinery of honest jobs (``HONEST``): ``multiprocessing`` talking to its own children
  over Unix sockets and signalling them, and the compilers of ``torch.compile``
  (inductor, triton, cpp_extension) running the C compiler and loading what it built.
* an installed package's top-level code, while it is imported, loading a native library
  or running a program (torch's submodules, imported lazily, do): whether installed
  packages are what they should be is ``trainguard env``'s question, not this hook's.
* what the recording's ``allow`` names: an event, a module prefix, or ``EVENT@MODULE``.

How a call is described (``CallEvent``: site, modules, stack) is ``_auditcall``'s
business; which native lookups name a dangerous symbol, ``_auditnative``'s.

These exemptions are the recording's only: they decide what is *reported* to the guard,
never what a load window lets through. Recording is per process: a forked child (a
DataLoader worker) starts with no recorders, so a worker never writes into the parent's
ledger.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from trainguard.load._auditcall import SOCKET_EVENTS, CallEvent, Frame, describe, module_of
from trainguard.load._auditnative import NATIVE_EVENTS
from trainguard.load._auditnative import symbol as native_symbol

__all__ = [
    "HONEST",
    "NATIVE_EVENTS",
    "RECORDED_EVENTS",
    "SPAWN_EVENTS",
    "CallEvent",
    "Recording",
    "call_at_next_event",
    "record",
]

SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.forkpty",
     "pty.spawn"}
)  # fmt: skip
"""Events that start another program (the signal watcher unblocks its signals for them)."""

RECORDED_EVENTS = SPAWN_EVENTS | frozenset(
    {"os.kill", "os.killpg", "signal.pthread_kill", "socket.connect", "socket.bind",
     "socket.sendto", "socket.sendmsg", "ctypes.dlopen", "os.startfile", "webbrowser.open"}
) | NATIVE_EVENTS  # fmt: skip
"""What a training job has no business doing: start programs, signal processes, open
network connections, load native libraries, look up or call a native signal sender or the
raw system call (see the module docstring for what is left out)."""

HONEST: tuple[tuple[frozenset[str], tuple[str, ...]], ...] = (
    (
        frozenset({"subprocess.Popen", "os.posix_spawn", "ctypes.dlopen"}),
        ("torch._inductor", "torch._dynamo", "torch.utils.cpp_extension", "triton"),
    ),
)
"""(events, module prefixes): the compilers of ``torch.compile`` run the C compiler and load
what it built. Matched against the modules between the call and the user's own code."""

_SIGNAL_EVENTS = frozenset({"os.kill", "os.killpg", "signal.pthread_kill"})
_AT_IMPORT = frozenset({"ctypes.dlopen", "subprocess.Popen", "os.posix_spawn"})
MAX_DEPTH = 64
"""How many frames, innermost first, the hook hands to ``on_event``."""

_lock = threading.Lock()
_busy = threading.local()


class Recording:
    """An active recording; ``stop()`` ends it. ``errors`` counts callbacks that raised
    (the hook swallows them: an audit hook that raises breaks the audited call)."""

    def __init__(
        self,
        callback: Callable[[CallEvent], None],
        events: frozenset[str],
        allow: Iterable[str],
        filtered: bool,
    ) -> None:
        self.callback = callback
        self.events = events
        self.filtered = filtered
        self.errors = 0
        self.last_error: str | None = None
        self._allow_events: set[str] = set()
        self._allow_modules: list[str] = []
        self._allow_pairs: list[tuple[str, str]] = []
        for item in allow:
            name = item.strip()
            if "@" in name:
                event, _, module = name.partition("@")
                self._allow_pairs.append((event.strip(), module.strip()))
            elif name in RECORDED_EVENTS:
                self._allow_events.add(name)
            elif name:
                self._allow_modules.append(name)

    def allows(self, call: CallEvent) -> bool:
        """True when the user's ``allow`` exempts this call."""
        if call.event in self._allow_events:
            return True
        names = (*call.modules, call.origin)
        if any(_under(n, p) for p in self._allow_modules for n in names):
            return True
        return any(
            call.event == e and any(_under(n, p) for n in names) for e, p in self._allow_pairs
        )

    def stop(self) -> None:
        """End the recording (idempotent)."""
        global _recorders, _recordable
        with _lock:
            _recorders = tuple(r for r in _recorders if r is not self)
            _recordable = frozenset().union(*(r.events for r in _recorders))


_recorders: tuple[Recording, ...] = ()
_recordable: frozenset[str] = frozenset()
_fork_handler = False
_next: dict[int, tuple[tuple[str, ...], Callable[[], None]]] = {}


def record(
    callback: Callable[[CallEvent], None],
    *,
    events: Iterable[str] = RECORDED_EVENTS,
    allow: Iterable[str] = (),
    filtered: bool = True,
) -> Recording:
    """Call ``callback`` for each of ``events`` raised by any thread of this process until
    ``stop()``. The call goes ahead; the callback runs synchronously in the calling thread
    (keep it short, and thread-safe). ``allow`` exempts events (``"socket.connect"``),
    module prefixes (``"wandb"``: the modules between the call and the user's own code)
    or pairs (``"subprocess.Popen@mypkg.tools"``). ``filtered=False`` also reports what
    trainguard, ``HONEST`` machinery and ``allow`` would exempt."""
    global _recorders, _recordable
    _install()
    recording = Recording(callback, frozenset(events), allow, filtered)
    with _lock:
        _ensure_fork_handler()
        _recorders = (*_recorders, recording)
        _recordable = _recordable | recording.events
    return recording


def call_at_next_event(callback: Callable[[], None], *, outside: tuple[str, ...] = ()) -> None:
    """Run ``callback`` in this thread at its next audit event raised by code outside the
    modules ``outside``: the way to act right after a call that raises no event when it is
    done (``subprocess.Popen`` is announced, never finished). Never raises from the hook."""
    _install()
    with _lock:
        _ensure_fork_handler()
        _next[threading.get_ident()] = (outside, callback)


def _fire_next(frames: Sequence[Frame]) -> None:
    """Run this thread's ``call_at_next_event`` callback; ``frames[0]`` is the audited
    caller's."""
    ident = threading.get_ident()
    entry = _next.get(ident)
    if entry is None:
        return
    outside, callback = entry
    if outside:
        name = module_of(frames[0]) if frames else ""
        if any(_under(name, m) for m in outside):
            return
    _next.pop(ident, None)
    with contextlib.suppress(Exception):
        callback()


def _install() -> None:
    from trainguard.load.audithook import install

    install()


def wants(event: str) -> bool:
    """Whether ``event`` is for a recording or a pending ``call_at_next_event``."""
    return bool(_next) or (bool(_recorders) and event in _recordable)


def on_event(event: str, args: tuple[Any, ...], frames: Sequence[Frame]) -> None:
    """The hook's call for every event ``wants`` (never raises).

    ``frames`` is the stack, innermost first, as plain data the hook read before calling:
    the recording itself must never touch a frame. Reading ``f_code`` (or reaching a frame
    through ``sys._getframe``, ``tb_frame``, ``traceback``) is an audit event, and a load
    window refuses it like any other: raised from here inside a window, it would lose the
    recording and give the window a finding of trainguard's own. The hook reads the frames under
    its own exemption, which covers only that C-level read (no Python code of anyone's runs
    inside it), so nothing here, nor a recording or callback a payload registers, gets a way
    past the window: whatever they do raises its events with this thread's window open."""
    if _next and event != "sys._getframe":
        _fire_next(frames)
    if _recorders and event in _recordable:
        _record(event, args, frames)


def _ensure_fork_handler() -> None:
    global _fork_handler
    if not _fork_handler:
        os.register_at_fork(after_in_child=_forget_recorders)
        _fork_handler = True


def _forget_recorders() -> None:
    """A forked child is not the guarded process: it must not report into the parent's
    guard (nor its ledger)."""
    global _recorders, _recordable
    _recorders = ()
    _recordable = frozenset()
    _next.clear()


def _record(event: str, args: tuple[Any, ...], frames: Sequence[Frame]) -> None:
    if getattr(_busy, "on", False) or _probe_or_unaddressed(event, args):
        return
    _busy.on = True  # the callbacks may raise recorded events of their own
    try:
        call = describe(event, args, frames)
        for recording in _recorders:
            if event not in recording.events:
                continue
            if recording.filtered and (call.own or _honest(call, args) or recording.allows(call)):
                continue
            try:
                recording.callback(call)
            except Exception as exc:  # noqa: BLE001 - an audit hook must never raise
                recording.errors += 1
                recording.last_error = f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - never break the audited call; nothing to tell
        pass
    finally:
        _busy.on = False


def _probe_or_unaddressed(event: str, args: tuple[Any, ...]) -> bool:
    """Calls that send nothing anywhere new: signal 0 only asks whether a process
    exists; ``sendmsg`` without an address writes to a socket already connected; a native
    lookup or call of anything but a dangerous symbol."""
    if event in NATIVE_EVENTS:
        return native_symbol(event, args) is None
    if event in _SIGNAL_EVENTS:
        return len(args) > 1 and args[1] == 0
    if event == "socket.sendmsg":
        return len(args) < 2 or args[1] is None
    return False


def _honest(call: CallEvent, args: tuple[Any, ...]) -> bool:
    """Machinery of honest jobs (see ``HONEST`` and the module docstring)."""
    top = call.origin.partition(".")[0]
    if call.event in ("os.kill", "os.killpg") and top in ("multiprocessing", "subprocess"):
        return True  # a pool or Popen signalling the child it started
    if call.event in SOCKET_EVENTS and top == "multiprocessing":
        family = getattr(args[0], "family", None) if args else None
        if family == getattr(socket, "AF_UNIX", None):
            return True  # DataLoader workers hand tensors over Unix sockets
    if call.importing and call.event in _AT_IMPORT:
        return True  # an installed package's top-level code (the env check's business)
    names = (*call.modules, call.origin)
    return any(
        call.event in events and any(_under(n, p) for p in prefixes for n in names)
        for events, prefixes in HONEST
    )


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
