"""``trainguard run`` on plain (single-process) jobs: exit codes, and what it records."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from launchkit import PY, guard_job, heartbeat_job

from trainguard.launch import GUARD_STOPPED, TIMED_OUT


def test_clean_guarded_job_exits_0_with_no_alert(launch):
    run = launch(guard_job(steps=6, after_close="print('trained')"), "--guard-timeout", "60")
    assert run.code == 0, run.stderr
    assert "trained" in run.stdout
    assert run.alerts() == []
    messages = [r.message for r in run.records]
    assert messages[:2] == ["run.origin", "run.started"]  # the run's origin comes first
    assert messages[-1] == "run.exited"
    assert {"guard.started", "guard.stopped", "process.exit"} <= set(messages)
    (started,) = run.events("run.started")
    assert started.evidence["command"][-1].endswith("job.py")
    (ended,) = run.events("process.exit")
    assert ended.rank == 0 and ended.evidence["how"] == "exit" and ended.evidence["exit_code"] == 0
    (exited,) = run.events("run.exited")
    assert exited.evidence["exit_code"] == 0 and exited.evidence["stopped_by_guard"] is False


def test_job_without_guard_is_guard_missing(launch):
    run = launch("import time; time.sleep(2.5)", "--guard-timeout", "0.5")
    assert run.code == 0, run.stderr
    (alert,) = run.alerts()
    assert alert.alert == "guard.missing" and alert.severity == "high" and alert.rank == 0
    assert alert.evidence["reason"] == "never_attached"
    assert "ALERT guard.missing (high) [rank 0]" in run.stderr


def test_guard_closed_while_process_keeps_running(launch):
    run = launch(heartbeat_job(steps=3, after_close="time.sleep(4)"), "--guard-timeout", "1.5")
    assert run.code == 0, run.stderr
    (alert,) = run.alerts()
    assert alert.alert == "guard.missing"
    assert alert.evidence["reason"] == "closed_while_running"
    assert alert.severity == "medium"  # honest jobs evaluate after training, unguarded
    assert alert.rank == 0 and alert.step == 3


def test_sigkill_is_process_killed_and_uncatchable(launch):
    run = launch("import os; os.kill(os.getpid(), 9)")
    assert run.code == 128 + 9
    (alert,) = run.alerts()
    assert alert.alert == "process.killed" and alert.severity == "high" and alert.rank == 0
    assert alert.evidence["signal"] == 9
    assert alert.evidence["uncatchable"] is True
    assert alert.evidence["oom"] in (False, None)
    (exited,) = run.events("run.exited")
    assert exited.evidence["signal"] == 9


def test_job_exit_code_is_passed_through(launch):
    run = launch("import sys; sys.exit(3)")
    assert run.code == 3
    assert run.alerts() == []
    (exited,) = run.events("run.exited")
    assert exited.evidence["exit_code"] == 3


def test_command_not_found_is_127(launch):
    run = launch(["trainguard-no-such-command"])
    assert run.code == 127
    assert run.events("run.exited")[0].evidence["exit_code"] == 127


def test_hang_is_reported_and_stop_on_stops_the_job(launch):
    job = heartbeat_job(steps=4, after_steps="time.sleep(60)")
    started = time.monotonic()
    run = launch(job, "--hang-after", "2", "--stop-on", "medium", "--stop-grace", "2")
    assert time.monotonic() - started < 50
    assert run.code == GUARD_STOPPED, run.stderr
    (hang,) = run.alerts("process.hang")
    assert hang.rank == 0 and hang.step == 4
    assert run.alerts("process.killed") == []  # trainguard's own SIGTERM is no attack
    (stopping,) = run.events("run.stopping")
    assert "process.hang" in stopping.evidence["reason"]
    (ended,) = run.events("process.exit")
    assert ended.evidence["stopped_by"] == "trainguard"
    assert run.events("run.exited")[0].evidence["stopped_by_guard"] is True


def test_timeout_stops_the_job(launch):
    run = launch("import time; time.sleep(60)", "--timeout", "1", "--guard-timeout", "60")
    assert run.code == TIMED_OUT
    assert run.alerts() == []
    assert run.events("run.exited")[0].evidence["timed_out"] is True


def test_sigterm_to_the_launcher_is_forwarded_to_the_job(tmp_path):
    script = tmp_path / "job.py"
    script.write_text("import time, pathlib\npathlib.Path('up').touch()\ntime.sleep(60)\n")
    ledger = tmp_path / "ledger"
    cmd = [PY, "-m", "trainguard.launch", "--ledger", str(ledger), "--no-env-verify"]
    proc = subprocess.Popen(
        [*cmd, "--guard-timeout", "60", "--", PY, str(script)], cwd=tmp_path, stderr=sys.stderr
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "up").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    from trainguard.ledger import read_records

    records = read_records(ledger)
    assert not [r for r in records if r.kind == "alert"]
    (ended,) = [r for r in records if r.message == "process.exit"]
    assert ended.evidence["signal"] == signal.SIGTERM
    assert ended.evidence["stopped_by"] == "trainguard"


def test_leftover_processes_are_recorded_and_ended(launch, tmp_path):
    run = launch(["sh", "-c", "sleep 30 & echo started"])
    assert run.code == 0
    (left,) = run.events("process.leftover")
    (pid,) = left.evidence["pids"]
    assert not (tmp_path / f"/proc/{pid}").exists() or _zombie_or_gone(pid)


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in "ZX"
    except OSError:
        return True


STRAGGLER_RANK = """
import os, time
from trainguard.guard.heartbeat import Heartbeat
rank = int(os.environ["RANK"])
busy = 0.25 if rank == 1 else 0.02  # rank 1 computes 12x longer: someone slowed it
beat = Heartbeat.from_env(rank)
times = []
for step in range(1, 16):
    time.sleep(0.3)  # the step period is the same on every rank (they wait for each other)
    times.append(busy)
    beat.beat(step, 0.3, times)
beat.close(15)
"""


def test_straggler_rank_is_named(launch, tmp_path):
    (tmp_path / "rank.py").write_text(STRAGGLER_RANK)
    ranks = f"RANK=0 {PY} rank.py & RANK=1 {PY} rank.py & RANK=2 {PY} rank.py & wait"
    run = launch(["sh", "-c", ranks], "--guard-timeout", "60")
    assert run.code == 0, run.stderr
    (alert,) = run.alerts()
    assert alert.alert == "process.straggler" and alert.rank == 1
    assert alert.evidence["median_s"] == 0.25
    assert alert.evidence["ranks_compared"] == [0, 1, 2]
    exits = run.events("process.exit")
    assert {r.rank for r in exits if r.evidence["role"] == "rank"} == {0, 1, 2}
