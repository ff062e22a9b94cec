"""Who sent a signal, and how far that can be believed.

``sigwaitinfo`` hands the watcher a ``siginfo``: ``si_code`` says how the signal was sent
and ``si_pid``/``si_uid`` name the sender. This module turns it into a ``Received``.

What it trusts: the kernel's ``si_code``, and the sender fields only where the kernel
filled them in itself. From another process those are ``SI_USER`` (0: ``kill``),
``SI_TKILL`` (-6: ``tgkill``/``tkill``) and the kernel's own codes (> 0, ``SI_KERNEL`` for
a terminal's Ctrl-C): ``rt_sigqueueinfo``/``rt_tgsigqueueinfo``/``pidfd_send_signal`` let
the sender write the whole ``siginfo``, but the kernel refuses, from another process, a
``si_code`` >= 0 or ``SI_TKILL``. So for ``SI_QUEUE`` (-1, ``sigqueue``) and every other
negative code, the pid and uid are what the sender *claims*: ``Received.verified`` is
False, the claim is kept (``claimed_pid``, ``claimed_uid``) and nothing is read from
``/proc/<claimed pid>``, so a forged claim never blames an innocent process.

A process signalling *itself* may write any code, ``SI_USER`` with ``si_pid`` 1 included,
and the ``siginfo`` is then identical to a genuine one. Whether this process may have
done so is ``trainguard.guard.signals_forgery``'s ``doubt()``: when there is a doubt, a
kernel-filled code is believed only for a ``SI_USER``/``SI_TKILL`` that names this very
process (forged or not, it came from here); any other pid, and every kernel code, is kept
as a claim with the doubt as evidence (``Received.doubt``).

``threads_not_blocking`` reads ``/proc/self/task/*/status`` (trusted as the kernel's word)
to count the threads that would take a signal before the watcher could.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.findings import Severity
from trainguard.guard import signals_forgery as _forgery

__all__ = [
    "SI_KERNEL",
    "SI_QUEUE",
    "SI_TKILL",
    "SI_USER",
    "Received",
    "SignalAlert",
    "from_siginfo",
    "name",
    "signal_alert",
    "threads_not_blocking",
]

SI_USER = 0
SI_KERNEL = 0x80
SI_QUEUE = -1
SI_TKILL = -6
_CODE_NAMES = {
    SI_USER: "SI_USER",
    SI_KERNEL: "SI_KERNEL",
    SI_QUEUE: "SI_QUEUE",
    -2: "SI_TIMER",
    -3: "SI_MESGQ",
    -4: "SI_ASYNCIO",
    -5: "SI_SIGIO",
    SI_TKILL: "SI_TKILL",
    -7: "SI_DETHREAD",
    -60: "SI_ASYNCNL",
}
UNVERIFIED = "claimed by sender, not verified"


@dataclass(frozen=True, slots=True)
class Received:
    """One signal and what is known of its sender (``pid`` None: unknown or unverified;
    ``claimed_pid``: what an unverified sender wrote into the ``siginfo``)."""

    signal: str
    signum: int
    pid: int | None
    uid: int | None
    code: int | None
    cmdline: str
    exe: str | None
    via: str  # "sigwaitinfo" or "handler"
    time: float
    verified: bool = True
    claimed_pid: int | None = None
    claimed_uid: int | None = None
    doubt: str | None = None
    """Why a kernel-filled sender is kept as a claim: this process may have forged it."""

    @property
    def sender_known(self) -> bool:
        return self.pid is not None

    @property
    def code_name(self) -> str:
        return code_name(self.code)

    @property
    def from_self_or_terminal(self) -> bool:
        """Sent by this process, or by the kernel for a terminal (Ctrl-C); never true of
        an unverified claim."""
        return (
            self.verified
            and self.pid is not None
            and (self.pid in (0, os.getpid()) or self.code == SI_KERNEL)
        )


def trusted_code(code: int) -> bool:
    """Whether the kernel itself filled in the sender for this ``si_code``."""
    return code in (SI_USER, SI_TKILL) or code > 0


def code_name(code: int | None) -> str:
    if code is None:
        return "unknown"
    return _CODE_NAMES.get(code, "kernel" if code > 0 else f"si_code {code}")


def from_siginfo(
    info: Any,
    via: str = "sigwaitinfo",
    doubt: str | Callable[[], str | None] | None = _forgery.doubt,
) -> Received:
    """A ``Received`` from ``signal.sigtimedwait``'s ``struct_siginfo``. ``doubt``: why
    this process may have forged a kernel-filled sender (default: ``signals_forgery``'s
    answer now; None: no doubt)."""
    signum, code = int(info.si_signo), int(info.si_code)
    pid, uid = int(info.si_pid), int(info.si_uid)
    if callable(doubt):
        doubt = doubt()
    believed = trusted_code(code) and (
        doubt is None or (code in (SI_USER, SI_TKILL) and pid == os.getpid())
    )
    if believed:
        return Received(
            signal=name(signum),
            signum=signum,
            pid=pid,
            uid=uid,
            code=code,
            cmdline=cmdline(pid),
            exe=exe(pid),
            via=via,
            time=time.time(),
        )
    return Received(
        signal=name(signum),
        signum=signum,
        pid=None,
        uid=None,
        code=code,
        cmdline=f"sender {UNVERIFIED} ({code_name(code)})",
        exe=None,
        via=via,
        time=time.time(),
        verified=False,
        claimed_pid=pid,
        claimed_uid=uid,
        doubt=doubt if trusted_code(code) else None,
    )


def unknown(signum: int) -> Received:
    """A signal that reached a Python handler rather than the watcher: no sender."""
    return Received(
        signal=name(signum),
        signum=signum,
        pid=None,
        uid=None,
        code=None,
        cmdline="sender unknown (delivered to a handler, not to the watcher)",
        exe=None,
        via="handler",
        time=time.time(),
    )


def name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def cmdline(pid: int) -> str:
    if pid == 0:
        return "(the kernel: a terminal's Ctrl-C or a kernel event)"
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return f"(process {pid} exited before its command line could be read)"
    except OSError as exc:
        return f"(unreadable: {exc.strerror})"
    if not raw:
        return f"(process {pid} exited or is a kernel thread: no command line)"
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")[:500]


def exe(pid: int) -> str | None:
    if pid == 0:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def threads_not_blocking(signals: Iterable[int], skip: set[int]) -> int:
    """Threads of this process (but ``skip``, native ids) that would take the signals
    before a thread waiting for them (Linux only)."""
    wanted = 0
    for sig in signals:
        wanted |= 1 << (int(sig) - 1)
    count = 0
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        if task.name.isdigit() and int(task.name) in skip:
            continue
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("SigBlk:"):
                    if int(line.split()[1], 16) & wanted != wanted:
                        count += 1
                    break
        except (OSError, ValueError):
            continue
    return count


@dataclass(frozen=True, slots=True)
class SignalAlert:
    """What a ``process.signal`` alert says about one ``Received`` (the guard's process
    check and ``trainguard run``'s start-up hook say the same)."""

    severity: Severity
    message: str
    where: str
    evidence: dict[str, Any]


def signal_alert(received: Received) -> SignalAlert:
    """HIGH, but MEDIUM for a SIGINT from this process or a terminal (or of unknown
    origin: a handler-only watch). An unverified sender is never named in the message."""
    mild = received.signal == "SIGINT" and (
        received.from_self_or_terminal or (received.verified and not received.sender_known)
    )
    if not received.verified:
        sender, said = "unverified", f"a sender {UNVERIFIED} ({received.code_name})"
    elif received.sender_known:
        sender, said = str(received.pid), f"pid {received.pid} ({received.cmdline})"
    else:
        sender, said = "unknown", f"pid unknown ({received.cmdline})"
    return SignalAlert(
        Severity.MEDIUM if mild else Severity.HIGH,
        f"{received.signal} from {said}",
        f"signal:{received.signal}:from:{sender}",
        {
            "signal": received.signal,
            "pid": received.pid,
            "uid": received.uid,
            "cmdline": received.cmdline,
            "exe": received.exe,
            "code": received.code,
            "code_name": received.code_name,
            "via": received.via,
            "sender": "known"
            if received.sender_known
            else (UNVERIFIED if not received.verified else "sender unknown"),
            "verified": received.verified,
            "claimed_pid": received.claimed_pid,
            "claimed_uid": received.claimed_uid,
            "doubt": received.doubt,
        },
    )
