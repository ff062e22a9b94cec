"""Could this process have forged the sender of a signal it received?

Linux lets a process send *itself* a signal with ``rt_sigqueueinfo`` (or
``rt_tgsigqueueinfo``, ``pidfd_send_signal``) and write the whole ``siginfo``: any
``si_code``, ``SI_USER`` and the kernel's own codes included, and any ``si_pid`` and
``si_uid``. The kernel refuses that only when the target is another process. Nothing in the
``siginfo`` a forger writes differs from what ``kill`` from that pid would leave (the
kernel zeroes the rest of a ``SI_USER`` ``siginfo`` and refuses non-zero bytes there from
user space), so no kernel-level field tells a self-sent forgery from a genuine signal; only
a seccomp filter could refuse the self-send, at the price of ``no_new_privs`` for the job
and every program it starts (not done).

So the watch looks at the way Python code reaches those calls: ``ctypes`` (``os.kill``
and ``signal.pthread_kill`` cannot forge: the kernel fills the sender in). ``start()``
(the signal watcher calls it before blocking any signal) records the native lookups and
calls that name a dangerous symbol (``trainguard.load._auditnative``). ``doubt()`` is
then None, and a ``SI_USER``/``SI_TKILL``/kernel sender is believed, only while:

* the watch is running in this process (a forked child starts without it);
* it started before ``ctypes`` was loaded (``_ctypes`` not in ``sys.modules``): a function
  looked up earlier stays cached on its library object and is called later without any
  event (``trainguard run`` and ``watch_early()`` start it first thing);
* no code but trainguard's has looked up or called a signal sender, the raw ``syscall``
  or a native resolver through ``ctypes`` since (an installed library's lookup counts
  too: the function object it keeps can be called by any code in the process).

*What it trusts:* that the job reaches native code through ``ctypes`` lookups by name
(``_auditnative`` lists what is not seen: an address computed from another symbol's, a
native extension such as ``cffi``) and the audit hook's view of the caller (trainguard's
own lookups are the only ones ignored). Once the doubt is raised it stays for the life of
the process.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass

from trainguard.load import audithook
from trainguard.load._auditnative import NATIVE_EVENTS

__all__ = ["Taint", "doubt", "start", "taint"]


@dataclass(frozen=True, slots=True)
class Taint:
    """The first dangerous native lookup or call seen in this process."""

    symbol: str
    event: str
    site: str
    module: str
    thread: str
    time: float


class _Watch:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.recording: audithook.Recording | None = None
        self.pid = 0
        self.clean_start = False
        self.taint: Taint | None = None


_watch = _Watch()


def start() -> None:
    """Watch this process's native lookups from now on (idempotent; restarts in a forked
    child, whose recordings are gone)."""
    with _watch.lock:
        if _watch.recording is not None and _watch.pid == os.getpid():
            return
        _watch.clean_start = "_ctypes" not in sys.modules and _watch.pid == 0
        _watch.pid = os.getpid()
        _watch.recording = audithook.record(_on_native, events=NATIVE_EVENTS, filtered=False)


def taint() -> Taint | None:
    return _watch.taint


def doubt() -> str | None:
    """Why a sender the kernel would have filled in may be this process's own forgery;
    None when it cannot be (see the module docstring)."""
    found = _watch.taint
    if found is not None:
        return (
            f"{found.event} of {found.symbol} by {found.module} at {found.site}: this process"
            " can send itself a signal with any sender written in"
        )
    if _watch.recording is None or _watch.pid != os.getpid():
        return "native signal sends by this process are not watched here"
    if not _watch.clean_start:
        return (
            "ctypes was loaded before the watch of native signal sends started: a function"
            " looked up then can send this process a signal with any sender written in"
        )
    return None


def _on_native(call: audithook.CallEvent) -> None:
    """In the audit hook: keep the first dangerous lookup or call (never raises)."""
    if call.own or call.symbol is None or _watch.taint is not None:
        return
    _watch.taint = Taint(
        symbol=call.symbol,
        event=call.event,
        site=call.site,
        module=call.module,
        thread=call.thread,
        time=time.time(),
    )
