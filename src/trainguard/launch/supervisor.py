"""``trainguard run``: verify, start the job with the guard bootstrap, watch it, record
how it ended.

The job runs in its own session (process group), so a signal meant for it reaches all of
its processes and nothing else; SIGINT/SIGTERM/SIGHUP sent to the launcher are forwarded
to that group. The launcher becomes the subreaper of the job's processes (Linux), so a
rank whose agent died is still collected here with its exit status. The job's stderr is
passed through the launcher (torchrun reports its workers' exit codes there); stdout and
stdin are the job's own.

The ledger's signing key is the supervisor's alone (``signer``): the job appends records
with no key, and the supervisor signs heads over them and sends each to the witness.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from trainguard.env.state import state_dir
from trainguard.findings import Rule, Severity
from trainguard.guard.checks.code.origin import SEAL_ENV
from trainguard.launch import procs
from trainguard.launch.bootstrap import LEDGER_KEY_ENV, Bootstrap, make_bootstrap
from trainguard.launch.control import JobControl
from trainguard.launch.endings import Ending, Endings
from trainguard.launch.exits import (
    CANNOT_EXECUTE,
    GUARD_STOPPED,
    NOT_FOUND,
    TIMED_OUT,
    OomCounter,
    TorchrunLog,
    shell_code,
)
from trainguard.launch.heartbeats import Proc, ProcTable
from trainguard.launch.jobio import Console, StderrTee
from trainguard.launch.options import RunOptions
from trainguard.launch.preflight import Preflight, preflight
from trainguard.launch.signer import RunSigner
from trainguard.launch.tail import LedgerTail
from trainguard.launch.watch import Raised, Watch
from trainguard.ledger import default_path
from trainguard.ledger.anchor import WITNESS_COMMAND_ENV, WITNESS_DIR_ENV
from trainguard.ledger.store import describe

__all__ = ["Supervisor", "run_command"]

POLL_S = 0.2
REAP_S = 1.0
"""Orphans are looked for once a second: it is a pass over /proc."""
PREFLIGHT_SHOWN = 20
"""A tampered environment can have hundreds of findings: the ledger has them all."""
_NEVER_STOP = {Rule.TRAINING_ANOMALY.value}


def run_command(opts: RunOptions) -> int:
    """Run ``opts.command`` under trainguard; returns the exit code ``trainguard run``
    exits with (see ``trainguard.launch.exits``)."""
    return Supervisor(opts).run()


class Supervisor:
    def __init__(self, opts: RunOptions, *, err: TextIO | None = None) -> None:
        self.opts = opts
        self.console = Console(err or sys.stderr)
        where = default_path(opts.ledger)
        self.ledger_path: Path | str = where if isinstance(where, str) else where.absolute()
        # run folders (boot files, heartbeats) sit beside a ledger folder; a database ledger
        # keeps them in the user's state folder
        self.runs_base = where.absolute() if isinstance(where, Path) else state_dir()
        key = opts.ledger_key or os.environ.get(LEDGER_KEY_ENV) or None
        self.ledger_key = Path(key).absolute() if key else None
        self.torchrun = TorchrunLog()
        self.control: JobControl | None = None
        self.stop_reason: str | None = None
        self.stop_deadline: float | None = None
        self.timed_out = False
        self.alerts = 0
        self.metrics: Any = None
        self.faults: set[str] = set()

    # -- the run ------------------------------------------------------------------------

    def run(self) -> int:
        environ = dict(os.environ)
        if self.opts.witness_dir is not None:
            environ[WITNESS_DIR_ENV] = self.opts.witness_dir
        if self.opts.witness_command is not None:
            environ[WITNESS_COMMAND_ENV] = self.opts.witness_command
        self.signer = RunSigner(
            self.ledger_path,
            self.opts.command,
            fixed_key=self.ledger_key,
            say=self.console.say,
            environ=environ,
        )
        self.ledger = self.signer.open()
        try:
            boot = make_bootstrap(self.runs_base)
        except BaseException:
            self.signer.close()
            raise
        self.table = ProcTable(boot.heartbeats)
        self.tail = LedgerTail(self.ledger_path, known=lambda pid: pid in self.table.procs)
        try:
            self.tail.start()
            checks = preflight(self.ledger, self.opts, self.console.say)
            self._show_new()
            refused = [c for c in checks if self._stops(c.worst)]
            if refused:
                return self._refuse(refused)
            return self._supervise(boot, checks)
        finally:
            boot.cleanup()
            if self.metrics is not None:
                self.metrics.close()
            self.tail.close()
            self.signer.close()

    def _refuse(self, refused: list[Preflight]) -> int:
        names = ", ".join(c.name for c in refused)
        self.console.say(f"not starting the job: the {names} check raised --stop-on alerts")
        self.ledger.append_event(
            "run.exited",
            evidence={
                "event": "run.exited",
                "exit_code": GUARD_STOPPED,
                "started": False,
                "stopped_by_guard": True,
                "refused_by": [c.name for c in refused],
            },
        )
        return GUARD_STOPPED

    def _supervise(self, boot: Bootstrap, checks: list[Preflight]) -> int:
        opts = self.opts
        env_check = next((c for c in checks if c.name == "env"), None)
        self.ledger.append_event(
            "run.started",
            evidence={
                "event": "run.started",
                "command": list(opts.command),
                "cwd": os.getcwd(),
                "env_verified": env_check.ok if env_check else None,
                "run_dir": str(boot.run_dir),
                "launcher_pid": os.getpid(),
                "stop_on": opts.stop_on.label if opts.stop_on else None,
                "guard_timeout": opts.guard_timeout,
                "hang_after": opts.hang_after,
            },
        )
        if opts.metrics_port is not None:
            from trainguard.launch.metrics import Metrics

            self.metrics = Metrics(opts.metrics_port)
            self.console.say(f"metrics on http://127.0.0.1:{self.metrics.port}/metrics")
        # no key for the job, ever: its processes append, the supervisor signs
        env = boot.child_env(
            os.environ, ledger=self.ledger_path, ledger_key=None, protect=opts.protect
        )
        # the seal the environment was just verified against: the guard's code check takes
        # "library code" to mean a file in it whose bytes still match (checks/code/origin.py)
        env.pop(SEAL_ENV, None)
        if env_check is not None and env_check.ok and env_check.seal is not None:
            env[SEAL_ENV] = str(env_check.seal)
        self.signer.tick(urgent=True)  # pre-flight results pinned before the job runs
        oom = OomCounter()
        before = {p.pid for p in procs.children_of(os.getpid())}
        subreaper = procs.set_subreaper(True)  # before the job can leave orphans
        started = time.time()
        try:
            child = subprocess.Popen(
                list(opts.command), env=env, start_new_session=True, stderr=subprocess.PIPE
            )
        except OSError as exc:
            if subreaper is False:
                procs.set_subreaper(False)
            code = NOT_FOUND if isinstance(exc, FileNotFoundError) else CANNOT_EXECUTE
            self.console.say(f"cannot run {opts.command[0]}: {exc.strerror or exc}")
            self._exited(code, None, error=str(exc))
            return code
        control = self.control = JobControl(child, self.table, before)
        self.endings = Endings(
            self.torchrun, oom, control.statuses, lambda sig: sig in control.signalled
        )
        self.watch = Watch(
            self.table,
            started=started,
            guard_timeout=opts.guard_timeout,
            hang_after=opts.hang_after,
            closed_after=opts.closed_after,
        )
        assert child.stderr is not None
        tee = StderrTee(child.stderr, self.console, self.torchrun.feed)
        tee.start()
        control.forward_signals()
        try:
            returncode = self._loop(control, started)
            tee.join(timeout=0.5)  # the job's last words (torchrun's report), if no one lingers
            try:
                self._finish(control, returncode, tee)
            except Exception as exc:  # noqa: BLE001  still exit with the job's code
                self._fault(exc)
        finally:
            control.restore_signals()
            if subreaper is False:
                procs.set_subreaper(False)
        return self._final(shell_code(returncode))

    def _loop(self, control: JobControl, started: float) -> int:
        next_reap = 0.0
        while True:
            returncode = control.child.poll()
            now = time.time()
            try:
                self.table.scan(now)
                if now >= next_reap:
                    control.reap()
                    next_reap = now + REAP_S
                self._record(self.watch.check(now, job_alive=returncode is None))
                self._judge_exits(final=False, job_failed=False)
                self._show_new()
                if self.metrics is not None:
                    self.metrics.ranks(self._rank_status())
                self.signer.tick()
            except Exception as exc:  # noqa: BLE001  the job must outlive a supervisor fault
                self._fault(exc)
            if returncode is not None:
                return returncode
            timeout = self.opts.timeout
            if timeout is not None and self.stop_reason is None and now - started >= timeout:
                self.timed_out = True
                self._stop(f"--timeout {timeout:g} s ran out")
            if self.stop_deadline is not None and now >= self.stop_deadline:
                self.stop_deadline = None
                control.signal_job(signal.SIGKILL)
            time.sleep(POLL_S)

    def _finish(self, control: JobControl, returncode: int, tee: StderrTee) -> None:
        self.table.scan(time.time())
        left = control.end_leftovers()
        if left:
            self.ledger.append_event(
                "process.leftover",
                evidence={
                    "event": "process.leftover",
                    "pids": [int(p) for p in left],
                    "argv": left,
                },
            )
        tee.join(timeout=2.0)
        self.table.scan(time.time())
        failed = returncode != 0 and self.stop_reason is None
        self._judge_exits(final=True, job_failed=failed)
        pid = control.child.pid
        if pid not in self.endings.done:
            control.statuses[pid] = returncode
            ending = self.endings.judge(Proc(pid, alive=False), None, final=True)
            assert ending is not None
            self._ended(ending, role="command", job_failed=failed)
        self._record(self.watch.check(time.time(), job_alive=False))
        self._show_new()
        self._exited(shell_code(returncode), returncode)

    # -- exits --------------------------------------------------------------------------

    def _judge_exits(self, *, final: bool, job_failed: bool) -> None:
        assert self.control is not None
        for ending in self.endings.sweep(self.table, self.control.child, final=final):
            self._ended(ending, role="rank", job_failed=job_failed)

    def _ended(self, ending: Ending, *, role: str, job_failed: bool) -> None:
        self.endings.done.add(ending.pid)
        self.ledger.append_event(
            "process.exit", rank=ending.rank, evidence={**ending.evidence(), "role": role}
        )
        raised = self.endings.alert(ending, role=role, job_failed=job_failed)
        if raised is not None:
            self._record([raised])

    # -- alerts, stopping ---------------------------------------------------------------

    def _record(self, raised: list[Raised]) -> None:
        for r in raised:
            self.ledger.append_alert(
                r.rule,
                message=r.message,
                severity=r.severity,
                step=r.step,
                rank=r.rank,
                evidence=dict(r.evidence),
            )
        if raised:
            self._show_new()

    def _show_new(self) -> None:
        """Print this run's new alerts; stop the job on one at ``--stop-on``."""
        for record in self.tail.poll():
            if record.kind != "alert":
                continue
            self.alerts += 1
            self.signer.alerted()
            if self.control is not None or self.alerts <= PREFLIGHT_SHOWN:
                self.console.alert(record)
            elif self.alerts == PREFLIGHT_SHOWN + 1:
                self.console.say("... more pre-flight alerts: see the ledger")
            if self.metrics is not None:
                self.metrics.alert(record.alert or "", record.severity)
            if record.alert in _NEVER_STOP or self.stop_reason is not None:
                continue
            try:
                severity = Severity.parse(record.severity)
            except ValueError:
                severity = Severity.CRITICAL
            running = self.control is not None and self.control.child.poll() is None
            if running and self._stops(severity):
                self._stop(f"{record.alert} ({record.severity}) at ledger seq {record.seq}")

    def _stops(self, severity: Severity | None) -> bool:
        stop_on = self.opts.stop_on
        return stop_on is not None and severity is not None and severity >= stop_on

    def _stop(self, reason: str) -> None:
        """SIGTERM now, SIGKILL after ``stop_grace`` (the loop sends it)."""
        assert self.control is not None
        self.stop_reason = reason
        self.console.say(f"stopping the job: {reason}")
        self.ledger.append_event(
            "run.stopping",
            evidence={"event": "run.stopping", "reason": reason, "timeout": self.timed_out},
        )
        self.control.signal_job(signal.SIGTERM)
        self.stop_deadline = time.time() + self.opts.stop_grace

    # -- the end ------------------------------------------------------------------------

    def _final(self, job_code: int) -> int:
        if self.timed_out:
            return TIMED_OUT
        if self.stop_reason is not None:
            return GUARD_STOPPED
        return job_code

    def _exited(self, code: int, returncode: int | None, *, error: str | None = None) -> None:
        final = self._final(code)
        evidence: dict[str, Any] = {
            "event": "run.exited",
            "exit_code": final,
            "job_exit_code": code,
            "signal": -returncode if returncode is not None and returncode < 0 else None,
            "stopped_by_guard": self.stop_reason is not None and not self.timed_out,
            "timed_out": self.timed_out,
            "stop_reason": self.stop_reason,
            "alerts": self.alerts,
        }
        if error is not None:
            evidence["error"] = error
        self.ledger.append_event("run.exited", evidence=evidence)
        self.console.say(
            f"job exited with code {code}; trainguard exits {final}; {self.alerts} alert(s); "
            f"ledger {describe(self.ledger_path)}"
        )

    def _fault(self, exc: Exception) -> None:
        """A fault of the supervisor itself (the ledger's disk is full, say): said once
        per kind, and the job goes on; killing a training run for it would be worse."""
        kind = f"{type(exc).__name__}: {exc}"
        if kind not in self.faults:
            self.faults.add(kind)
            self.console.say(f"supervisor error (the job goes on): {kind}")

    def _rank_status(self) -> dict[int, tuple[int | None, float | None, bool]]:
        return {r: (v.step(), v.median_step(), v.attached) for r, v in self.table.ranks().items()}
