"""Who sent the job a signal: the sender's pid, uid and command line, recorded before the
signal is delivered as the job intended.

A Python signal handler never learns its sender; ``sigwaitinfo`` does. So the watched
signals (``WATCHED``) are blocked in the main thread (threads started later inherit the
mask) and a daemon thread takes them with ``sigtimedwait``, reports a ``Received``
(``/proc/<pid>/cmdline`` and ``exe``; a sender already gone is said so), has the guard
flushed, then delivers the signal:

* a Python handler (the default SIGINT one included) runs in the main thread
  (``_thread.interrupt_main``); a no-op SIGWINCH wakes the main thread from a blocking
  system call (``time.sleep``, a queue wait), as the real signal would have;
* ``SIG_IGN``: nothing; ``SIG_DFL``: unblocked in the watcher thread and raised again
  there, so the process dies of it (exit status: killed by that signal, as without us).

The kernel hands a process-wide signal to any thread that does not block it rather than
to the one waiting for it, and every ML job has such threads: OpenBLAS starts its pool
when numpy is imported, torch its OpenMP pool at the first parallel op. Blocking then
brings no sender and only delays Ctrl-C while the main thread sleeps, so with threads
like that (``threads_not_blocking``) nothing is blocked and only the handlers below run
(``mode == "handlers"``, as without ``sigwaitinfo`` on macOS). To know the senders, call
``watch_early()`` first thing in the training script, before importing numpy or torch;
a ``Guard`` attached later picks that watcher up and gets what it kept. Under
``trainguard run`` the start-up hook does this in every process of the job and binds a
fallback report to the ledger (``bind_fallback``), so a process that never makes a
``Guard`` still records who signalled it. How far the sender can be believed is
``trainguard.guard.signals_sender``'s business (``Received.verified``), and whether this
process may have forged a sender itself, ``trainguard.guard.signals_forgery``'s (whose
watch starts before the first signal is blocked).

Python handlers are wrapped (the backstop), so a signal that did not go through the
watcher is still recorded, with the sender unknown, before the job's handler runs. A
default disposition is never replaced: a Python-level handler would delay the death
until the main thread next runs Python code, and a job hung in native code (a stuck
collective) could no longer be stopped with SIGTERM. Such a signal kills at once,
unrecorded here (the ``trainguard run`` supervisor records how the job died).

A program the job starts would inherit the mask and ignore SIGTERM and Ctrl-C, so the
audit events that start programs unblock the signals in the calling thread until its
next audit event from outside ``subprocess``/``os``; ``maintain()`` (the guard's steps)
re-blocks if nothing did, and falls back to ``handlers`` if a thread was born unmasked
meanwhile. A forked child (a DataLoader worker) gets the original mask and handlers back.
Threads born during a watch keep its mask after ``stop()`` (only the main thread's can
be put back): the programs they start later get the signals unblocked all the same.

``stop()`` wakes the thread with ``SIGRTMAX`` (blocked in that thread only and sent to
it alone; the thread also polls its stop flag every second), puts back the handlers that
are still ours and unblocks what it blocked: mask and handlers are as they were.
Outside the main thread nothing can be installed (``mode == "off"``).
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

from trainguard.guard import signals_forgery as _forgery
from trainguard.guard.signals_sender import Received, from_siginfo, unknown
from trainguard.guard.signals_sender import name as _name
from trainguard.guard.signals_sender import threads_not_blocking as _threads_not_blocking
from trainguard.load import audithook

__all__ = ["WATCHED", "Received", "SignalWatcher", "current", "watch_early"]

_NAMES = ("SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2")
WATCHED: tuple[signal.Signals, ...] = tuple(
    getattr(signal, n) for n in _NAMES if hasattr(signal, n)
)
_POLL_S = 1.0
_WAKE = getattr(signal, "SIGRTMAX", None)
_KEEP_UNBOUND = 64
_CARRIER = getattr(signal, "SIGWINCH", None)

Report = Callable[["Received"], None]

_active: SignalWatcher | None = None
_fork_handler = False
_leftover: set[int] = set()
_leftover_recording: audithook.Recording | None = None


class SignalWatcher:
    """Watch ``signals`` of this process; hand each one to ``report`` (and then ``flush``)
    before it is delivered. Without a ``report`` (``watch_early``), signals are kept (the
    last 64) until ``bind``."""

    def __init__(
        self,
        report: Report | None = None,
        *,
        flush: Callable[[], None] | None = None,
        signals: Iterable[int] = WATCHED,
        block: bool | None = None,
    ) -> None:
        self.signals = tuple(signal.Signals(s) for s in signals)
        self.block = block
        self.mode = "off"
        self.reason = "not started"
        self.threads_not_blocking = 0
        self.errors: list[str] = []
        self._report = report
        self._flush = flush
        self._fallback: tuple[Report, Callable[[], None] | None] | None = None
        self._kept: list[Received] = []
        self._original: dict[int, Any] = {}
        self._installed: set[int] = set()
        self._blocked: set[int] = set()
        self._tokens: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._alive = False
        self._main_ident = 0
        self._carrier = False
        self._unblocked: dict[int, int] = {}  # thread ident -> native id
        self._recheck = False
        self._spawns: audithook.Recording | None = None
        self._handler = self._backstop  # one bound method: getsignal() returns this object

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        """Install the watch (from the main thread); ``mode`` and ``reason`` say what ran.
        ``block`` None blocks the signals only when no thread would take them first."""
        global _active
        if self.mode != "off":
            return
        if threading.current_thread() is not threading.main_thread():
            self.reason = "started outside the main thread: signal handlers cannot be set"
            return
        if _active is not None and _active is not self:
            self.reason = "another signal watcher is active in this process"
            return
        _install_fork_handler()
        self._main_ident = threading.get_ident()
        for sig in self.signals:
            original = signal.getsignal(sig)
            self._original[sig] = original
            self._tokens[sig] = 0
            if not callable(original):
                continue  # default, ignored, or set outside Python: left as it is
            signal.signal(sig, self._handler)
            self._installed.add(sig)
        _active = self
        self.mode = "handlers"
        if not all(hasattr(signal, n) for n in ("sigtimedwait", "pthread_sigmask", "pthread_kill")):
            self.reason = "no sigwaitinfo here: senders are unknown"
            return
        self.threads_not_blocking = _threads_not_blocking(self.signals, {threading.get_native_id()})
        if self.block is False or (self.block is None and self.threads_not_blocking):
            self.reason = (
                "asked not to block the signals: senders are unknown"
                if self.block is False
                else f"{self.threads_not_blocking} threads older than the watch (thread pools"
                " of numpy, torch) would take the signals before it: senders are unknown;"
                " call trainguard.guard.signals.watch_early() first thing in the script"
            )
            return
        if _CARRIER is not None and signal.getsignal(_CARRIER) == signal.SIG_DFL:
            signal.signal(_CARRIER, _wake_only)
            self._carrier = True
        _forgery.start()  # before any signal waits: a self-sent forgery is seen (or doubted)
        wake = [_WAKE] if _WAKE is not None and _WAKE not in self.signals else []
        before = signal.pthread_sigmask(signal.SIG_BLOCK, [*self.signals, *wake])
        self._blocked = {int(s) for s in self.signals} - {int(s) for s in before}
        self._alive = True
        self._thread = threading.Thread(target=self._loop, name="trainguard-signals", daemon=True)
        self._thread.start()  # it inherits the wake-up signal blocked: only it blocks that
        if wake and wake[0] not in before:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, wake)
        self._spawns = audithook.record(
            self._on_spawn, events=audithook.SPAWN_EVENTS, filtered=False
        )
        self.mode = "sigwaitinfo"
        self.reason = "senders are recorded"

    def bind(self, report: Report | None, flush: Callable[[], None] | None = None) -> None:
        """Report to ``report`` from now on (None: keep them); hands over what was kept."""
        with self._lock:
            self._report, self._flush = report, flush
            kept, self._kept = (self._kept, []) if report is not None else ([], self._kept)
        for received in kept:
            self._emit(received)

    def bind_fallback(self, report: Report | None, flush: Callable[[], None] | None = None) -> None:
        """Report to ``report`` whenever nothing is ``bind``-ed (``trainguard run``'s
        start-up binds the ledger here, so a process without a ``Guard`` still records its
        senders; a ``Guard`` binds over it and hands back on close). Hands over what was
        kept."""
        with self._lock:
            self._fallback = None if report is None else (report, flush)
            primary = self._report is not None
            kept, self._kept = ([], self._kept) if primary or report is None else (self._kept, [])
        for received in kept:
            self._emit(received)

    def stop(self) -> None:
        """Stop watching and put the mask and the handlers back (from the main thread)."""
        global _active
        if self.mode == "off":
            return
        if threading.get_ident() != self._main_ident:
            # The mask and handlers of the main thread can only be changed from it: keep
            # delivering signals as the job intended, without reporting them.
            self.bind(None)
            self.errors.append("stop() outside the main thread: the watch stays, silent")
            return
        self._stop_thread()
        for sig in self._installed:
            if signal.getsignal(sig) is self._handler:  # a handler set since then stays
                signal.signal(sig, self._original[sig])
        self._unblock_main()
        self.mode, self.reason = "off", "stopped"
        self._report = self._flush = self._fallback = None
        if _active is self:
            _active = None

    def _stop_thread(self) -> None:
        if self._spawns is not None:
            self._spawns.stop()
        self._stopping.set()
        with self._lock:
            thread = self._thread
            if self._alive and thread is not None and thread.ident is not None and _WAKE:
                with contextlib.suppress(OSError):
                    signal.pthread_kill(thread.ident, _WAKE)
        if thread is not None:
            thread.join(timeout=2 * _POLL_S + 1)

    def _unblock_main(self) -> None:
        if self._carrier and signal.getsignal(_CARRIER) is _wake_only:  # type: ignore[arg-type]
            signal.signal(_CARRIER, signal.SIG_DFL)  # type: ignore[arg-type]
        self._carrier = False
        if self._blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._blocked)
            _leave_behind(self._blocked)
        self._blocked = set()
        self._unblocked.clear()

    @property
    def running(self) -> bool:
        return self.mode != "off"

    @property
    def bound(self) -> bool:
        return self._report is not None

    # -- programs started by the job ---------------------------------------------------

    def _on_spawn(self, call: audithook.CallEvent) -> None:
        """About to start a program in this thread: unblock the signals, so that it does
        not inherit them blocked, until this thread's next audit event from outside
        ``subprocess``/``os`` (the program exists by then). Runs inside the audit hook."""
        blocked = self._blocked
        if not blocked or self.mode != "sigwaitinfo":
            return
        if blocked & {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, blocked)
            self._unblocked[threading.get_ident()] = threading.get_native_id()
            self._recheck = True
            audithook.call_at_next_event(self._reblock, outside=("subprocess", "os"))

    def _reblock(self) -> None:
        ident = threading.get_ident()
        if self._unblocked.pop(ident, None) is not None and self.mode == "sigwaitinfo":
            signal.pthread_sigmask(signal.SIG_BLOCK, self._blocked)

    def maintain(self) -> None:
        """From the main thread, between steps: block again what a program start left
        unblocked and, if a thread was born meanwhile without the mask (it would take the
        signals first), give up waiting for senders: the main thread takes the signals
        again, as without the watch (``mode`` becomes ``handlers``)."""
        if not self._recheck or threading.get_ident() != self._main_ident:
            return
        self._reblock()
        self._recheck = False
        thread = self._thread
        skip = {threading.get_native_id(), *self._unblocked.values()}  # those re-block
        if thread is not None and thread.native_id is not None:
            skip.add(thread.native_id)
        born = _threads_not_blocking(self.signals, skip)
        if born and self.mode == "sigwaitinfo":
            self.threads_not_blocking = born
            self._stop_thread()
            self._unblock_main()
            self._tokens = dict.fromkeys(self._tokens, 0)
            self.mode = "handlers"
            self.reason = (
                f"{born} threads started while a program was being started do not block the"
                " signals and would take them first: senders are unknown from now on"
            )

    # -- the watcher thread ------------------------------------------------------------

    def _loop(self) -> None:
        waited = {*self.signals, *([_WAKE] if _WAKE is not None else [])}
        try:
            while not self._stopping.is_set():
                try:
                    info = signal.sigtimedwait(waited, _POLL_S)
                except Exception as exc:  # noqa: BLE001 - said in errors; nothing else to do
                    self.errors.append(f"sigtimedwait failed: {type(exc).__name__}: {exc}")
                    return
                if info is None or info.si_signo == _WAKE:
                    continue  # a timeout, or stop()'s wake-up call: the loop test decides
                self._handle(info)
        finally:
            with self._lock:
                self._alive = False

    def _handle(self, info: Any) -> None:
        signum = int(info.si_signo)
        self._emit(from_siginfo(info))
        try:
            self._deliver(signum)
        except Exception as exc:  # noqa: BLE001 - the watcher must outlive a failed delivery
            self.errors.append(f"delivering {_name(signum)} failed: {type(exc).__name__}: {exc}")

    def _deliver(self, signum: int) -> None:
        """In the watcher thread: do what the job's disposition says."""
        current = signal.getsignal(signum)
        ours = current is self._handler
        target = self._original.get(signum) if ours else current
        if target == signal.SIG_IGN:
            return
        if target is None or target == signal.SIG_DFL:
            self._raise_here(signum)  # the default kills the process, from this thread
            return
        self._to_main(signum)

    def _to_main(self, signum: int) -> None:
        with self._lock:  # the backstop (ours, or chained to by a later handler) then
            self._tokens[signum] = self._tokens.get(signum, 0) + 1  # skips a 2nd report
        _thread.interrupt_main(signal.Signals(signum))
        if self._carrier and self._main_ident:
            with contextlib.suppress(OSError):
                signal.pthread_kill(self._main_ident, _CARRIER)  # type: ignore[arg-type]

    def _raise_here(self, signum: int) -> None:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        try:
            signal.raise_signal(signum)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, [signum])

    # -- the backstop handler (main thread) ----------------------------------------------

    def _backstop(self, signum: int, frame: FrameType | None) -> Any:
        target = self._original.get(signum)
        if self.mode == "off":  # called after stop() by a handler that chained to us
            return target(signum, frame) if callable(target) else None
        with self._lock:
            delivering = self._tokens.get(signum, 0) > 0
            if delivering:
                self._tokens[signum] -= 1
        if not delivering:  # reached a thread that does not block it: sender unknown
            self._emit(unknown(signum))
        return target(signum, frame) if callable(target) else None

    def _emit(self, received: Received) -> None:
        with self._lock:
            report, flush = self._report, self._flush
            if report is None and self._fallback is not None:
                report, flush = self._fallback
            if report is None:
                self._kept = [*self._kept[-(_KEEP_UNBOUND - 1) :], received]
                return
        try:
            report(received)
            if flush is not None:
                flush()
        except Exception as exc:  # noqa: BLE001 - the signal must still be delivered
            self.errors.append(f"reporting {received.signal} failed: {type(exc).__name__}: {exc}")

    def _after_fork_child(self) -> None:
        """In a forked child: no watcher thread there, so the original mask and handlers."""
        for sig in self._installed:
            if signal.getsignal(sig) is self._handler:
                signal.signal(sig, self._original[sig])
        if self._carrier and signal.getsignal(_CARRIER) is _wake_only:  # type: ignore[arg-type]
            signal.signal(_CARRIER, signal.SIG_DFL)  # type: ignore[arg-type]
        if self._blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._blocked)
        self.mode, self.reason, self._report = "off", "forked child", None
        self._fallback = None


def current() -> SignalWatcher | None:
    """The watcher running in this process, if any."""
    return _active


def watch_early(signals: Iterable[int] = WATCHED) -> SignalWatcher:
    """Start watching now, before torch starts its threads, so that every later thread
    blocks the signals and each sender is known; a ``Guard`` attached later picks the
    watcher up and receives what was kept. Call it first thing in the training script."""
    if _active is not None:
        return _active
    watcher = SignalWatcher(signals=signals)
    watcher.start()
    return watcher


# -- helpers -------------------------------------------------------------------------------


def _wake_only(signum: int, frame: FrameType | None) -> None:
    """The SIGWINCH carrier: its only job is to interrupt the main thread's system call."""
    return None


def _install_fork_handler() -> None:
    global _fork_handler
    if not _fork_handler and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_child)
        _fork_handler = True


def _after_fork_child() -> None:
    global _active
    watcher, _active = _active, None
    if watcher is not None:
        with contextlib.suppress(Exception):
            watcher._after_fork_child()
    if _leftover:
        with contextlib.suppress(Exception):
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _leftover)


def _leave_behind(blocked: set[int]) -> None:
    """Threads started during a watch keep its mask after it (only the main thread's can
    be put back). Should one of them start a program or fork later, unblock the signals
    in it first, so that the child does not inherit them blocked."""
    global _leftover_recording
    _leftover.update(blocked)
    if _leftover_recording is None:
        _leftover_recording = audithook.record(
            _unblock_leftover, events=audithook.SPAWN_EVENTS, filtered=False
        )


def _unblock_leftover(call: audithook.CallEvent) -> None:
    if _active is not None and _active.mode == "sigwaitinfo":
        return  # the running watch handles it (and blocks them again afterwards)
    if _leftover & {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _leftover)
