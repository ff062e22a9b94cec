"""ProcessCheck, signal side: a signal is recorded with its sender, flushed, then delivered
as the job intended; the guard leaves the mask and the handlers as it found them.

Guarded jobs that get killed run in child processes (``sys.executable -c``), started
together so that their imports overlap. The sender is ``sh -c 'kill -SIG PID; sleep 5'``:
a different process, still alive when the watcher reads its command line.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from trainguard.findings import Rule, Severity
from trainguard.guard import signals, signals_sender
from trainguard.guard.checks.process import ProcessCheck
from trainguard.guard.core import Guard
from trainguard.guard.signals_sender import signal_alert
from trainguard.ledger import read_records

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "sigtimedwait"), reason="needs sigwaitinfo (Linux)"
)

WATCHED = signals.WATCHED

CHILD = textwrap.dedent(
    """
    import signal, sys, threading, time
    ledger, marker, early, handler, nap, flavour = sys.argv[1:7]
    if early == "early":
        from trainguard.guard.signals import watch_early
        watch_early()  # before numpy/torch start their thread pools
    if flavour == "torch":
        import torch
        if early != "early":
            x = torch.randn(256, 256)
            (x @ x).sum()  # the thread pools exist before the guard
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    else:  # a job without torch (fast to start); a thread stands in for the pools
        sys.modules["torch"] = None
        if early != "early":
            threading.Thread(target=threading.Event().wait, daemon=True).start()

        class Opt:
            param_groups = []
            id = 0  # a hook handle's id: the guard orders its hooks by it
            _optimizer_step_pre_hooks = _optimizer_step_post_hooks = {}

            def register_step_pre_hook(self, hook):
                return self

            register_step_post_hook = register_step_pre_hook

            def remove(self):
                pass

            def step(self):
                pass

        model, opt = None, Opt()
    from trainguard.guard.checks.process import ProcessCheck
    from trainguard.guard.core import Guard

    if handler == "handler":
        def on_term(signum, frame):
            with open(marker, "a") as f:
                f.write(f"handler {signum} {threading.current_thread().name}\\n")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
    guard = Guard(model, opt, checks=[ProcessCheck()], ledger=ledger)
    print("ready", flush=True)
    while True:
        try:
            while True:
                if flavour == "torch":
                    loss = model(torch.randn(8, 4)).pow(2).mean()
                    opt.zero_grad()
                    loss.backward()
                opt.step()
                guard.step()
                time.sleep(float(nap))  # the main thread waits in a system call
        except KeyboardInterrupt:
            with open(marker, "a") as f:
                f.write(f"KeyboardInterrupt {threading.current_thread().name}\\n")
            print("interrupted", flush=True)
    """
)


class Child:
    def __init__(
        self, tmp: Path, *, early: bool, handler: bool, nap: float = 0.01, torch: bool = False
    ) -> None:
        self.ledger, self.marker = tmp / "ledger", tmp / "marker"
        args = [str(self.ledger), str(self.marker), "early" if early else "late"]
        args += ["handler" if handler else "none", str(nap), "torch" if torch else "light"]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE, text=True
        )
        self.senders: list[subprocess.Popen[bytes]] = []

    def expect(self, line: str) -> None:
        assert self.proc.stdout is not None
        got = self.proc.stdout.readline().strip()
        assert got == line, f"child said {got!r}, expected {line!r}"

    def kill(self, sig: str) -> int:
        sender = subprocess.Popen(["sh", "-c", f"kill -{sig} {self.proc.pid}; sleep 5"])
        self.senders.append(sender)
        return sender.pid

    def finish(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self.proc.kill()
            for s in self.senders:
                s.kill()
                s.wait()

    def signals(self) -> list:
        return read_records(self.ledger, Rule.PROCESS_SIGNAL)

    def setup_event(self) -> dict:
        (rec,) = [r for r in read_records(self.ledger) if r.message == "guard.signals"]
        return dict(rec.evidence)


def test_signals_in_guarded_child_processes(tmp_path: Path):
    plain = Child(tmp_path / "plain", early=True, handler=False, torch=True)
    own = Child(tmp_path / "own", early=True, handler=True, nap=30)
    late = Child(tmp_path / "late", early=False, handler=False, nap=30)
    try:
        for child in (plain, own, late):
            child.expect("ready")

        # SIGTERM, no handler: recorded with the sender, then the job dies of it
        killer = plain.kill("TERM")
        assert plain.finish() == -signal.SIGTERM
        (rec,) = plain.signals()
        assert rec.severity == "high"
        assert rec.evidence["signal"] == "SIGTERM"
        assert rec.evidence["pid"] == killer
        assert rec.evidence["uid"] == os.getuid()
        assert "kill" in rec.evidence["cmdline"]
        assert plain.setup_event()["threads_not_blocking"] == 0

        # SIGINT: KeyboardInterrupt in the main thread, promptly although it sleeps 30 s
        started = time.monotonic()
        int_killer = own.kill("INT")
        own.expect("interrupted")
        # the job's own SIGTERM handler runs, in the main thread
        term_killer = own.kill("TERM")
        assert own.finish() == 0
        assert time.monotonic() - started < 15
        assert own.marker.read_text().splitlines() == [
            "KeyboardInterrupt MainThread",
            f"handler {int(signal.SIGTERM)} MainThread",
        ]
        got = {r.evidence["signal"]: r for r in own.signals()}
        assert got["SIGINT"].evidence["pid"] == int_killer
        assert got["SIGINT"].severity == "high"  # another process, not a terminal
        assert got["SIGTERM"].evidence["pid"] == term_killer
        assert "kill" in got["SIGTERM"].evidence["cmdline"]

        # attached after the thread pools started: nothing blocked, senders unknown, and
        # the job's own handling is untouched (Ctrl-C interrupts a sleep, SIGTERM kills)
        setup = late.setup_event()
        assert setup["mode"] == "handlers" and setup["threads_not_blocking"] > 0
        started = time.monotonic()
        late.kill("INT")
        late.expect("interrupted")
        assert time.monotonic() - started < 10
        late.kill("TERM")
        assert late.finish() == -signal.SIGTERM
        assert late.marker.read_text() == "KeyboardInterrupt MainThread\n"
        (intr,) = late.signals()  # SIGTERM kept its default: it kills, unrecorded here
        assert intr.evidence["signal"] == "SIGINT" and intr.severity == "medium"
        assert intr.evidence["pid"] is None and intr.evidence["sender"] == "sender unknown"
    finally:
        for child in (plain, own, late):
            if child.proc.poll() is None:
                child.proc.kill()
            for s in child.senders:
                s.kill()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_ctrl_c_on_a_terminal_is_recorded_as_medium(tmp_path: Path):
    """The kernel sends a terminal's Ctrl-C (sender pid 0): MEDIUM, not an attack."""
    import pty
    import select

    ledger, marker = tmp_path / "ledger", tmp_path / "marker"
    argv = [sys.executable, "-c", CHILD, str(ledger), str(marker), "early", "none", "30", "light"]
    pid, master = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        try:
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    seen = b""

    def wait_for(word: bytes) -> None:
        nonlocal seen
        end = time.monotonic() + 20
        while word not in seen and time.monotonic() < end:
            if select.select([master], [], [], 0.5)[0]:
                seen += os.read(master, 1024)
        assert word in seen, seen

    try:
        wait_for(b"ready")
        os.write(master, b"\x03")  # Ctrl-C
        wait_for(b"interrupted")
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(master)
    (rec,) = [
        r for r in read_records(ledger, Rule.PROCESS_SIGNAL) if r.evidence["signal"] == "SIGINT"
    ]
    assert rec.severity == "medium"
    assert rec.evidence["pid"] == 0 and "terminal" in rec.evidence["cmdline"]
    assert marker.read_text() == "KeyboardInterrupt MainThread\n"


# -- in this process ---------------------------------------------------------------------


def _state() -> tuple[dict[int, object], set[int]]:
    handlers = {int(s): signal.getsignal(s) for s in (*WATCHED, signal.SIGWINCH)}
    return handlers, {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}


def _guard(**kw) -> tuple[Guard, torch.optim.Optimizer, torch.nn.Module]:
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Guard(model, opt, checks=[ProcessCheck(**kw)], ledger=False), opt, model


def _step(guard: Guard, opt: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    loss = model(torch.randn(2, 4)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    guard.step(loss)


def _wait_for(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def usr1_handler():
    seen: list[int] = []
    old = signal.signal(signal.SIGUSR1, lambda s, f: seen.append(s))
    try:
        yield seen
    finally:
        signal.signal(signal.SIGUSR1, old)


@pytest.fixture
def older_thread():
    """A thread started before the watch, so not blocking the signals (the stand-in for
    numpy's and torch's thread pools, present or not depending on the machine)."""
    done = threading.Event()
    t = threading.Thread(target=done.wait, name="older")
    t.start()
    yield t
    done.set()
    t.join()


@pytest.fixture
def blocking_watcher(older_thread):
    """A watcher told to block even so, picked up by the guard like an early one."""
    before = _state()
    watcher = signals.SignalWatcher(block=True)
    watcher.start()
    assert watcher.mode == "sigwaitinfo" and watcher.threads_not_blocking >= 1
    yield watcher
    watcher.stop()
    assert _state() == before


def test_close_restores_handlers_and_mask():
    before = _state()
    guard, _, _ = _guard(audit=False)
    watcher = signals.current()
    assert watcher is not None and watcher.running
    try:
        handlers, _ = _state()
        assert handlers[int(signal.SIGINT)] is not before[0][int(signal.SIGINT)]  # wrapped
        assert handlers[int(signal.SIGTERM)] == signal.SIG_DFL  # the default is left alone
    finally:
        guard.close()
    assert _state() == before
    assert signals.current() is None


def test_a_blocking_watch_restores_the_mask_and_stops_its_thread_promptly(older_thread):
    before = _state()
    watcher = signals.SignalWatcher(block=True)
    watcher.start()
    thread = watcher._thread
    try:
        assert {int(s) for s in WATCHED} <= _state()[1]
        assert thread is not None and thread.is_alive()
    finally:
        started = time.monotonic()
        watcher.stop()
    assert time.monotonic() - started < 0.9  # woken, not waiting for its 1 s poll
    assert not thread.is_alive()
    assert _state() == before


def test_a_watch_started_after_other_threads_blocks_nothing(older_thread):
    before = _state()
    guard, _, _ = _guard(audit=False)
    try:
        watcher = signals.current()
        assert watcher is not None and watcher.mode == "handlers"
        assert "watch_early" in watcher.reason
        assert _state()[1] == before[1]
    finally:
        guard.close()


def test_a_users_handler_runs_and_the_signal_is_recorded(usr1_handler):
    guard, _, _ = _guard(audit=False)
    try:
        sender = subprocess.run(["kill", "-USR1", str(os.getpid())], check=True)
        assert sender.returncode == 0
        assert _wait_for(lambda: usr1_handler == [signal.SIGUSR1])
    finally:
        guard.close()
    (alert,) = [a for a in guard.alerts if a.rule == Rule.PROCESS_SIGNAL]
    assert alert.severity == Severity.HIGH
    assert alert.finding.evidence["signal"] == "SIGUSR1"
    # this test process has thread pools older than the guard: the sender may be unknown;
    # and it loaded ctypes before any watch: a kernel-filled sender is only a claim here
    ev = alert.finding.evidence
    assert ev["sender"] in ("known", "sender unknown", signals_sender.UNVERIFIED)
    if ev["sender"] == signals_sender.UNVERIFIED:
        assert ev["claimed_pid"] not in (None, os.getpid()) and "ctypes" in ev["doubt"]


def test_without_sigwaitinfo_handlers_record_without_the_sender(monkeypatch, usr1_handler):
    monkeypatch.delattr(signal, "sigtimedwait")
    before = _state()
    guard, _, _ = _guard(audit=False)
    try:
        assert signals.current() is not None and signals.current().mode == "handlers"
        assert _state()[1] == before[1]  # nothing blocked
        os.kill(os.getpid(), signal.SIGUSR1)
        assert _wait_for(lambda: usr1_handler == [signal.SIGUSR1])
    finally:
        guard.close()
    assert _state() == before
    (alert,) = [a for a in guard.alerts if a.rule == Rule.PROCESS_SIGNAL]
    ev = alert.finding.evidence
    assert ev["pid"] is None and ev["sender"] == "sender unknown"
    assert alert.finding.location.path == "signal:SIGUSR1:from:unknown"


def test_outside_the_main_thread_nothing_is_installed():
    before = _state()
    box: list[signals.SignalWatcher] = []

    def start() -> None:
        watcher = signals.SignalWatcher()
        watcher.start()
        box.append(watcher)

    t = threading.Thread(target=start)
    t.start()
    t.join()
    assert box[0].mode == "off" and "main thread" in box[0].reason
    assert _state() == before


def test_a_program_started_by_the_job_does_not_inherit_the_blocked_signals(blocking_watcher):
    watched = {int(s) for s in WATCHED}
    guard, _, _ = _guard(audit=False)
    assert signals.current() is blocking_watcher and blocking_watcher.bound
    try:
        out = subprocess.run(
            ["grep", "SigBlk", "/proc/self/status"], capture_output=True, text=True, check=True
        ).stdout
        open(os.devnull).close()  # the next audited call blocks them again
        blocked_after = {int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])}
    finally:
        guard.close()
    child_mask = int(out.split()[1], 16)
    assert not any(child_mask & (1 << (s - 1)) for s in watched)
    assert watched <= blocked_after


def test_a_thread_born_unmasked_after_a_program_start_ends_the_blocking(
    blocking_watcher, tmp_path: Path
):

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = Guard(model, opt, checks=[ProcessCheck(audit=False)], ledger=tmp_path / "ledger")
    try:
        subprocess.run(["true"], check=True)
        _step(guard, opt, model)  # maintain(): the older thread still takes the signals
        guard.flush()
        assert blocking_watcher.mode == "handlers"
        assert not {int(s) for s in WATCHED} & _state()[1]
        assert blocking_watcher._thread is not None
        assert not blocking_watcher._thread.is_alive()
    finally:
        guard.close()
    records = read_records(tmp_path / "ledger")
    modes = [r.evidence["mode"] for r in records if r.message == "guard.signals"]
    assert modes[-2:] == ["sigwaitinfo", "handlers"]


def test_a_thread_started_during_the_watch_starts_programs_unmasked_after_it(older_thread):
    """Only the main thread's mask can be put back; a thread born during the watch keeps
    the signals blocked, but a program it starts later must not inherit that."""
    watched = {int(s) for s in WATCHED}
    watcher = signals.SignalWatcher(block=True)
    watcher.start()
    go, out = threading.Event(), []

    def later() -> None:
        go.wait()
        out.append(subprocess.run(["grep", "SigBlk", "/proc/self/status"], capture_output=True))

    t = threading.Thread(target=later)
    t.start()  # inherits the mask
    watcher.stop()
    go.set()
    t.join()
    child_mask = int(out[0].stdout.split()[1], 16)
    assert not any(child_mask & (1 << (s - 1)) for s in watched)


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_gets_the_original_mask_and_handlers_back(blocking_watcher):
    before = blocking_watcher._original, signal.pthread_sigmask(signal.SIG_BLOCK, [])
    pid = os.fork()
    if pid == 0:
        handlers, mask = _state()
        ok = all(handlers[int(s)] == before[0][s] for s in WATCHED)
        ok = ok and not {int(s) for s in WATCHED} & mask and signals.current() is None
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert {int(s) for s in WATCHED} <= {int(s) for s in before[1]}
    assert os.waitstatus_to_exitcode(status) == 0


def test_an_early_watcher_is_picked_up_and_hands_over_what_it_kept(usr1_handler):
    before = _state()
    watcher = signals.watch_early()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # before any guard: kept
        assert _wait_for(lambda: usr1_handler == [signal.SIGUSR1])
        guard, _, _ = _guard(audit=False)
        assert signals.current() is watcher and watcher.bound
        guard.close()
        assert watcher.running and not watcher.bound  # the early watch outlives the guard
    finally:
        watcher.stop()
    assert _state() == before
    (alert,) = [a for a in guard.alerts if a.rule == Rule.PROCESS_SIGNAL]
    assert alert.finding.evidence["signal"] == "SIGUSR1"


# -- a sender that writes its own siginfo --------------------------------------------------

_RT_SIGQUEUEINFO = {"x86_64": 129, "aarch64": 138}


def _sigqueue_forged(pid: int, sig: int, *, claimed_pid: int, claimed_uid: int) -> None:
    """``rt_sigqueueinfo`` with a ``siginfo`` of our making: SI_QUEUE, any pid and uid."""
    import ctypes
    import struct

    number = _RT_SIGQUEUEINFO[os.uname().machine]
    info = bytearray(128)  # si_signo, si_errno, si_code, padding, then si_pid, si_uid
    struct.pack_into("iii", info, 0, sig, 0, -1)  # -1: SI_QUEUE
    struct.pack_into("iI", info, 16, claimed_pid, claimed_uid)
    buf = ctypes.create_string_buffer(bytes(info), 128)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(ctypes.c_long(number), pid, sig, buf) != 0:
        raise OSError(ctypes.get_errno(), "rt_sigqueueinfo failed")


@pytest.mark.skipif(
    os.uname().machine not in _RT_SIGQUEUEINFO, reason="rt_sigqueueinfo number unknown here"
)
def test_a_sender_that_forges_its_pid_is_recorded_as_unverified(tmp_path: Path):
    """The attack: sigqueue a signal claiming to come from init (pid 1). The alert keeps
    the claim as evidence and says it is not verified; the message never blames pid 1."""
    child = Child(tmp_path, early=True, handler=False, nap=30)
    try:
        child.expect("ready")
        _sigqueue_forged(child.proc.pid, signal.SIGUSR1, claimed_pid=1, claimed_uid=0)
        assert child.finish() == -signal.SIGUSR1  # still delivered as the job intended
    finally:
        if child.proc.poll() is None:
            child.proc.kill()
    (rec,) = child.signals()
    ev = rec.evidence
    assert rec.severity == "high"
    assert ev["verified"] is False and ev["pid"] is None
    assert ev["claimed_pid"] == 1 and ev["claimed_uid"] == 0
    assert ev["code_name"] == "SI_QUEUE"
    assert "claimed by sender, not verified" in rec.message
    assert "pid 1" not in rec.message and "init" not in ev["cmdline"]


def test_a_forged_sigint_from_pid_0_is_not_taken_for_a_terminal():
    """SI_QUEUE with si_pid 0 would pass for the kernel's Ctrl-C (MEDIUM) if believed."""
    from trainguard.guard.signals_sender import from_siginfo, signal_alert

    class Info:
        si_signo, si_code, si_pid, si_uid = int(signal.SIGINT), -1, 0, 0

    received = from_siginfo(Info())
    alert = signal_alert(received)
    assert not received.verified and not received.from_self_or_terminal
    assert alert.severity is Severity.HIGH and alert.where == "signal:SIGINT:from:unverified"
    for code in (0, -6, 0x80):  # kill, tgkill, the kernel: filled in by the kernel
        Info.si_code = code
        assert from_siginfo(Info(), doubt=None).verified


def test_with_a_doubt_only_a_sender_naming_this_process_is_believed():
    """The attack on the trust in kernel-filled codes: this process sends itself SI_USER
    claiming pid 1. With a doubt (it looked up ``syscall``), pid 1 is a claim; a sender
    naming this process is this process either way; a kernel code is a claim too."""
    from trainguard.guard.signals_sender import SI_KERNEL, SI_TKILL, SI_USER, from_siginfo

    class Info:
        si_signo, si_code, si_pid, si_uid = int(signal.SIGTERM), SI_USER, 1, 0

    why = "ctypes.dlsym of syscall by evil at evil.py:1"
    forged = from_siginfo(Info(), doubt=why)
    alert = signal_alert(forged)
    assert not forged.verified and forged.pid is None and forged.claimed_pid == 1
    assert forged.doubt == why and alert.evidence["doubt"] == why
    assert alert.severity is Severity.HIGH and "not verified" in alert.message
    assert "pid 1" not in alert.message
    for code in (SI_USER, SI_TKILL):
        Info.si_code, Info.si_pid = code, os.getpid()
        own = from_siginfo(Info(), doubt=why)
        assert own.verified and own.pid == os.getpid() and own.doubt is None
    Info.si_code, Info.si_pid, Info.si_signo = SI_KERNEL, 0, int(signal.SIGINT)
    kernel = from_siginfo(Info(), doubt=why)
    assert not kernel.verified and not kernel.from_self_or_terminal
    assert signal_alert(kernel).severity is Severity.HIGH  # not a terminal's MEDIUM


FORGER = textwrap.dedent(
    """
    import json, os, signal, struct, sys, time
    from trainguard.guard.signals import watch_early  # first thing: ctypes not loaded yet
    from trainguard.guard.signals_sender import signal_alert
    got = []
    signal.signal(signal.SIGUSR1, lambda s, f: None)
    signal.signal(signal.SIGUSR2, lambda s, f: None)
    watcher = watch_early()
    watcher.bind(lambda received: got.append(signal_alert(received).evidence))

    def wait_for(n):
        end = time.monotonic() + 20
        while len(got) < n and time.monotonic() < end:
            time.sleep(0.01)

    print(watcher.mode, flush=True)
    sys.stdin.readline()  # the parent has sent a genuine SIGUSR2
    wait_for(1)
    import ctypes  # the attack: SI_USER "from pid 1" sent to ourselves
    info = ctypes.create_string_buffer(128)
    struct.pack_into("iii", info, 0, signal.SIGUSR1, 0, 0)  # si_code 0: SI_USER
    struct.pack_into("ii", info, 16, 1, 0)  # si_pid 1, si_uid 0
    number = int(sys.argv[1])
    assert ctypes.pythonapi.syscall(number, os.getpid(), signal.SIGUSR1, info) == 0
    wait_for(2)
    print("forged", flush=True)
    sys.stdin.readline()  # a genuine SIGUSR2 again, after the lookup
    wait_for(3)
    print(json.dumps(got), flush=True)
    """
)


@pytest.mark.skipif(
    os.uname().machine not in _RT_SIGQUEUEINFO, reason="rt_sigqueueinfo number unknown here"
)
def test_a_self_sent_si_user_forgery_is_not_believed():
    """The attack: the job sends itself SIGUSR1 as SI_USER from pid 1 through
    ``ctypes.pythonapi.syscall`` (no ``dlopen``). A genuine ``kill`` before it keeps its
    verified sender; the forgery, and every kernel-filled claim after the lookup, are
    claims with the lookup as the doubt."""
    number = str(_RT_SIGQUEUEINFO[os.uname().machine])
    proc = subprocess.Popen(
        [sys.executable, "-c", FORGER, number],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        assert proc.stdout.readline().strip() == "sigwaitinfo"
        os.kill(proc.pid, signal.SIGUSR2)
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "forged"
        os.kill(proc.pid, signal.SIGUSR2)
        proc.stdin.write("\n")
        proc.stdin.flush()
        genuine, forged, after = json.loads(proc.stdout.readline())
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert genuine["verified"] is True and genuine["pid"] == os.getpid()
    assert genuine["doubt"] is None
    assert forged["signal"] == "SIGUSR1" and forged["code_name"] == "SI_USER"
    assert forged["verified"] is False and forged["pid"] is None
    assert forged["claimed_pid"] == 1
    assert "syscall" in forged["doubt"] and "ctypes.dlsym" in forged["doubt"]
    assert after["verified"] is False and after["claimed_pid"] == os.getpid()
