"""The process check: calls a training job never needs, and signals with their sender.

Two watches, both process-wide and running while the guard is attached:

* a PEP 578 audit recording (``trainguard.load.audithook.record``): a process signalled,
  a network connection, a native library loaded, a program started by unverified code,
  from any thread, becomes ``runtime.suspicious_call`` (HIGH) with the call site, the
  arguments, a short stack and the thread. Repeats from the same call site are counted,
  not re-recorded (``where`` names the event and the site). Nothing is blocked: a training job's own
  legitimate calls belong in ``allow`` (event names, module prefixes, ``EVENT@MODULE``);
  trainguard's own calls, DataLoader workers' plumbing and ``torch.compile``'s compilers
  are never reported (see ``trainguard.load._auditrecord``). A program started, or a
  Unix socket connected, by verified code is the event ``process.spawned`` /
  ``process.connected``: the code at the call site is the entry script's as on disk, or
  an installed library's that its own file compiles to (this trusts the library files on
  disk: ``trainguard env`` verifies those). Code built by ``exec`` or from a temp file,
  or under a module whose file does not hold it, is not verified: still an alert.
  A ``ctypes`` lookup (or ``_ctypes.call_function`` call) of a native signal sender, the
  raw ``syscall`` or a native resolver (``dlsym``, ``dlopen``) is ``runtime.suspicious_call``
  HIGH with the stack too: it sends signals past ``os.kill``'s audit event and lets the
  job forge the sender of a signal it sends itself. Made by verified installed-library
  code (``filelock`` looks up ``syscall`` for ``renameat2``) it is the event
  ``process.native_symbol``; torch, triton and wandb look up other symbols, never
  reported.
* a signal watcher (``trainguard.guard.signals``): SIGTERM, SIGINT, SIGHUP, SIGUSR1,
  SIGUSR2 become ``process.signal`` with the sender's pid, uid and command line (HIGH;
  MEDIUM for a SIGINT from this process or a terminal), flushed to the ledger before the
  signal is delivered as the job intended. The sender is believed only where the kernel
  filled it in (``kill``, ``tgkill``, the kernel's own codes); a ``sigqueue``-style sender
  writes its own pid and uid, so those are kept as a claim ("claimed by sender, not
  verified") and never named in the message (``trainguard.guard.signals_sender``). A
  process can forge even a kernel-filled sender in a signal it sends itself: once it
  has looked up such a symbol through ``ctypes``, or when the watch of those lookups did
  not start before ``ctypes`` was loaded, only a sender naming this very process is
  believed (``trainguard.guard.signals_forgery``; the reason is the evidence's ``doubt``).

Alerts carry the step in progress: an event in the loop body before ``optimizer.step()``
belongs to the step being computed, not to the one before it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from trainguard.findings import Rule, Severity
from trainguard.guard import authority as _authority
from trainguard.guard import signals as _signals
from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.signals_sender import signal_alert
from trainguard.load import audithook

__all__ = ["ProcessCheck"]


class ProcessCheck(Check):
    """Record suspicious calls (``audit``) and signals with their sender (``signals``).
    ``allow`` exempts the job's own legitimate calls (see ``audithook.record``)."""

    name: ClassVar[str] = "process"

    def __init__(self, *, signals: bool = True, audit: bool = True, allow: Iterable[str] = ()):
        self.signals = signals
        self.audit = audit
        self.allow = tuple(allow)
        self._pending = 1  # 1 between guard.step() and the next optimizer step
        self._recording: audithook.Recording | None = None
        self._mode = "off"
        self._watcher: _signals.SignalWatcher | None = None
        self._own_watcher = False
        self._audit_errors = 0
        self._signal_errors = 0

    # -- hooks ---------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        self._pending = 1
        if self.audit:
            self._recording = audithook.record(
                lambda call: self._on_call(ctx, call), allow=self.allow
            )
        if self.signals:
            self._attach_signals(ctx)

    def before_step(self, ctx: GuardContext) -> None:
        self._pending = 0
        self._maintain(ctx)

    def after_step(self, ctx: GuardContext) -> None:
        self._pending = 0

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        self._pending = 1
        self._maintain(ctx)
        self._tell_errors(ctx)

    def close(self, ctx: GuardContext) -> None:
        self._tell_errors(ctx)
        if self._recording is not None:
            self._recording.stop()
            self._recording = None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            if self._own_watcher:
                watcher.stop()
            else:
                watcher.bind(None)  # an early watcher outlives the guard, silent again

    # -- signals -------------------------------------------------------------------------

    def _attach_signals(self, ctx: GuardContext) -> None:
        report = lambda received: self._on_signal(ctx, received)  # noqa: E731
        flush = getattr(ctx, "flush", None)
        early = _signals.current()
        if early is not None and early.running and not early.bound:
            watcher, self._own_watcher = early, False
        else:
            watcher, self._own_watcher = _signals.SignalWatcher(), True
            watcher.start()
        self._watcher = watcher
        self._tell_mode(ctx, watcher)
        watcher.bind(report, flush if callable(flush) else None)

    def _maintain(self, ctx: GuardContext) -> None:
        watcher = self._watcher
        if watcher is not None:
            watcher.maintain()
            if watcher.mode != self._mode:
                self._tell_mode(ctx, watcher)

    def _tell_mode(self, ctx: GuardContext, watcher: _signals.SignalWatcher) -> None:
        """How signals are watched, as evidence (a watch without senders is no alert)."""
        self._mode = watcher.mode
        ctx.event(
            "guard.signals",
            {
                "mode": watcher.mode,
                "reason": watcher.reason,
                "signals": [s.name for s in watcher.signals],
                "threads_not_blocking": watcher.threads_not_blocking,
                "early": not self._own_watcher,
            },
        )

    def _on_signal(self, ctx: GuardContext, received: _signals.Received) -> None:
        alert = signal_alert(received)
        ctx.emit(
            Rule.PROCESS_SIGNAL,
            alert.severity,
            alert.message,
            where=alert.where,
            evidence=alert.evidence,
            step=self._step(ctx),
        )

    # -- audited calls -------------------------------------------------------------------

    def _on_call(self, ctx: GuardContext, call: audithook.CallEvent) -> None:
        if call.symbol is not None:
            self._on_native(ctx, call)
            return
        origin = _honest_origin(call)
        if origin is not None:
            ctx.event(
                "process.spawned" if call.event in audithook.SPAWN_EVENTS else "process.connected",
                {"event": call.event, "args": call.args, "site": call.site, "origin": origin},
            )
            return
        ctx.emit(
            Rule.SUSPICIOUS_CALL,
            Severity.HIGH,
            f"{call.event} from {call.site} (thread {call.thread}): {call.args}",
            where=f"event:{call.event}@{call.site}",
            evidence=_unverified(ctx, call),
            step=self._step(ctx),
        )

    def _on_native(self, ctx: GuardContext, call: audithook.CallEvent) -> None:
        """A native signal sender, ``syscall`` or resolver looked up (or called) through
        ``ctypes``: an event from verified installed-library code, an alert otherwise."""
        if _authority.verified_origin(call.site_code, call.site_globals) == "library":
            ctx.event(
                "process.native_symbol",
                {"event": call.event, "symbol": call.symbol, "site": call.site},
            )
            return
        what = "call of" if call.event == "ctypes.call_function" else "lookup of"
        ctx.emit(
            Rule.SUSPICIOUS_CALL,
            Severity.HIGH,
            f"ctypes {what} native {call.symbol} from {call.site} (thread {call.thread}):"
            " it sends signals unseen by os.kill's audit, and can forge the sender of a"
            " signal this process sends itself",
            where=f"event:{call.event}:{call.symbol}@{call.site}",
            evidence={"symbol": call.symbol, **_unverified(ctx, call)},
            step=self._step(ctx),
        )

    # -- plumbing ------------------------------------------------------------------------

    def _step(self, ctx: GuardContext) -> int:
        return int(ctx.current_step) + self._pending

    def _tell_errors(self, ctx: GuardContext) -> None:
        """Failures inside the audit hook or the watcher thread cannot raise there: they
        surface here as ``guard.error``."""
        recording, watcher = self._recording, self._watcher
        if recording is not None and recording.errors > self._audit_errors:
            self._audit_errors = recording.errors
            ctx.emit(
                Rule.GUARD_ERROR,
                Severity.MEDIUM,
                f"check process: the audit recording failed: {recording.last_error}",
                where="check:process:audit",
                evidence={"error": recording.last_error, "count": recording.errors},
            )
        if watcher is not None and len(watcher.errors) > self._signal_errors:
            fresh = watcher.errors[self._signal_errors :]
            self._signal_errors = len(watcher.errors)
            ctx.emit(
                Rule.GUARD_ERROR,
                Severity.MEDIUM,
                f"check process: the signal watcher failed: {fresh[-1]}",
                where="check:process:signals",
                evidence={"errors": fresh},
            )


def _honest_origin(call: audithook.CallEvent) -> str | None:
    """A program started, or a Unix socket connected (a library talking to the service it
    started: wandb), by verified code: the entry script, or installed library code that
    is what its file on disk compiles to (``trainguard.guard.authority.verified_origin``).
    Signals, network connections and everything else stay alerts."""
    local = call.event == "socket.connect" and call.unix_socket
    if call.event not in audithook.SPAWN_EVENTS and not local:
        return None
    return _authority.verified_origin(call.site_code, call.site_globals)


def _unverified(ctx: GuardContext, call: audithook.CallEvent) -> dict[str, object]:
    """The evidence of a call whose calling code is not verified."""
    return {
        "event": call.event,
        "args": call.args,
        "site": call.site,
        "module": call.module,
        "stack": call.stack,
        "thread": call.thread,
        "authorized": ctx.is_authorized,
        "verified": False,
    }
