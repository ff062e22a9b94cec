"""The supervisor's parts, without a job: torchrun's report, the OOM counter, the rank
table and its checks (straggler, hang, guard.missing), metrics, options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from trainguard.errors import ConfigError
from trainguard.findings import Rule
from trainguard.launch import RunOptions
from trainguard.launch.exits import OomCounter, TorchrunLog, shell_code
from trainguard.launch.heartbeats import ProcTable
from trainguard.launch.preflight import job_python
from trainguard.launch.watch import Watch

TORCHRUN_STDERR = b"""\
W1127 03:59:10.002000 25563 torch/distributed/elastic/multiprocessing/api.py:1028] \
Sending process 25576 closing signal SIGTERM
E1127 03:59:10.018000 25563 torch/distributed/elastic/multiprocessing/api.py:1002] \
failed (exitcode: -9) local_rank: 1 (pid: 25577) of binary: /venv/bin/python
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
/tmp/tr2.py FAILED
-------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-27_03:59:10
  host      : localhost
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 25576)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 25576
-------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-27_03:59:10
  host      : localhost
  rank      : 3 (local_rank: 1)
  exitcode  : -9 (pid: 25577)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 25577
=======================================================
"""


def test_torchrun_report_is_read_across_chunk_boundaries():
    log = TorchrunLog()
    for i in range(0, len(TORCHRUN_STDERR), 7):  # torn lines, as a pipe delivers them
        log.feed(TORCHRUN_STDERR[i : i + 7])
    killed = log.verdict(25577)
    assert killed is not None
    assert (killed.exitcode, killed.rank, killed.closed_by_agent) == (-9, 3, None)
    closed = log.verdict(25576)
    assert closed is not None
    assert (closed.exitcode, closed.rank, closed.closed_by_agent) == (-15, 0, "SIGTERM")
    assert log.verdict(1) is None


def test_shell_codes():
    assert shell_code(0) == 0 and shell_code(3) == 3 and shell_code(-9) == 137


def test_oom_counter(tmp_path):
    events = tmp_path / "memory.events"
    events.write_text("low 0\nhigh 0\nmax 0\noom 1\noom_kill 2\n")
    counter = OomCounter(file=events)
    assert counter.baseline == 2 and counter.rose() is False
    events.write_text("low 0\nhigh 0\nmax 0\noom 2\noom_kill 3\n")
    assert counter.rose() is True
    assert OomCounter(file=tmp_path / "missing").rose() is None


# -- the rank table ---------------------------------------------------------------------


@pytest.fixture
def live_pids():
    """Real processes for the table to find alive."""
    children = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    yield [c.pid for c in children]
    for c in children:
        c.kill()
        c.wait()


def _boot(folder: Path, pid: int, rank: int | None, ppid: int = 1, **kw: object) -> None:
    body = {"pid": pid, "ppid": ppid, "rank": rank or 0, "rank_env": None, "time": time.time()}
    if rank is not None:
        body["rank_env"] = str(rank)
    (folder / f"{pid}.boot.json").write_text(json.dumps({**body, **kw}))


def _beat(folder: Path, pid: int, rank: int, step: int, times: list[float], **kw: object) -> None:
    body = {"pid": pid, "rank": rank, "step": step, "time": time.time(), "state": "attached"}
    body.update({"step_times": times, "busy_times": [], **kw})
    (folder / f"{pid}.json").write_text(json.dumps(body))


def test_ranks_exclude_the_agent_and_find_primaries(tmp_path, live_pids):
    from trainguard.launch import procs

    rank0 = subprocess.Popen(["sh", "-c", "sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 10
        while not (kids := procs.children_of(rank0.pid)) and time.monotonic() < deadline:
            time.sleep(0.01)
        (worker,) = kids  # a process rank 0 started (a spawned DataLoader worker, say)
        _boot(tmp_path, live_pids[0], None, orig_argv=["python", "-m", "torch.distributed.run"])
        _boot(tmp_path, rank0.pid, 0, ppid=live_pids[0])
        _boot(tmp_path, worker.pid, 0, ppid=rank0.pid)
        table = ProcTable(tmp_path)
        table.scan(time.time())
        views = table.ranks()
        assert list(views) == [0]
        assert [p.pid for p in views[0].primaries] == [rank0.pid]
        assert {p.pid for p in views[0].members} == {rank0.pid, worker.pid}
    finally:
        rank0.kill()
        rank0.wait()


def test_an_agent_is_never_a_rank_even_before_its_ranks_start(tmp_path, live_pids):
    table = ProcTable(tmp_path)
    watch = Watch(table, started=time.time() - 100, guard_timeout=1, hang_after=999)
    _boot(tmp_path, live_pids[0], None, orig_argv=["/venv/bin/python", "/venv/bin/torchrun"])
    table.scan(time.time())
    assert table.ranks() == {}
    # a rendezvous may keep the agent waiting for its peers for minutes: no rank, no alert
    assert watch.check(time.time() + 50, job_alive=True) == []


def test_straggler_needs_repeated_evidence_and_names_the_rank(tmp_path, live_pids):
    table = ProcTable(tmp_path)
    watch = Watch(table, started=time.time(), guard_timeout=999, hang_after=999)
    for rank, pid in enumerate(live_pids):
        _boot(tmp_path, pid, rank)
    raised = []
    for round_ in range(4):
        for rank, pid in enumerate(live_pids):
            slow = 0.5 if rank == 2 else 0.1
            _beat(tmp_path, pid, rank, 20 + round_, [slow + 0.001 * round_] * 10)
        table.scan(time.time())
        raised.append(watch.check(time.time(), job_alive=True))
        time.sleep(0.01)
    assert raised[0] == [] and raised[1] == []  # not on the first sightings
    (alert,) = raised[2]
    assert alert.rule is Rule.PROCESS_STRAGGLER and alert.rank == 2
    assert alert.evidence["median_s"] == pytest.approx(0.502)
    assert raised[3] == []  # once


def test_no_straggler_from_warm_up_or_small_gaps(tmp_path, live_pids):
    table = ProcTable(tmp_path)
    watch = Watch(table, started=time.time(), guard_timeout=999, hang_after=999)
    a, b, _ = live_pids
    _boot(tmp_path, a, 0)
    _boot(tmp_path, b, 1)
    for round_ in range(5):
        # rank 1: slow first steps (compilation) then like rank 0; tiny absolute gaps
        _beat(tmp_path, a, 0, 9 + round_, [0.01] * 9)
        _beat(tmp_path, b, 1, 9 + round_, [2.0, 2.0, 2.0] + [0.03] * 6)
        table.scan(time.time())
        assert watch.check(time.time(), job_alive=True) == []


def test_hang_fires_once_per_episode(tmp_path, live_pids):
    pid = live_pids[0]
    _boot(tmp_path, pid, None)
    table = ProcTable(tmp_path)
    watch = Watch(table, started=time.time(), guard_timeout=999, hang_after=5)
    _beat(tmp_path, pid, 0, 7, [0.1])
    now = time.time()
    table.scan(now)
    assert watch.check(now + 1, job_alive=True) == []
    (hang,) = watch.check(now + 6, job_alive=True)
    assert hang.rule is Rule.PROCESS_HANG and hang.step == 7
    assert watch.check(now + 9, job_alive=True) == []
    time.sleep(0.01)
    _beat(tmp_path, pid, 0, 8, [0.1])  # it moved again, then stopped again
    table.scan(time.time())
    (again,) = watch.check(time.time() + 6, job_alive=True)
    assert again.step == 8


def test_no_bootstrap_at_all_is_guard_missing(tmp_path):
    table = ProcTable(tmp_path)
    watch = Watch(table, started=time.time() - 10, guard_timeout=5, hang_after=999)
    table.scan(time.time())
    (alert,) = watch.check(time.time(), job_alive=True)
    assert alert.rule is Rule.GUARD_MISSING and alert.rank is None
    assert watch.check(time.time(), job_alive=True) == []


# -- metrics, options, interpreter ------------------------------------------------------


def test_metrics_are_served_on_loopback():
    pytest.importorskip("prometheus_client")
    from trainguard.launch.metrics import Metrics

    metrics = Metrics(0)
    try:
        metrics.alert("process.killed", "high")
        metrics.alert("process.killed", "high")
        metrics.ranks({0: (12, 0.25, True), 1: (11, None, False)})
        url = f"http://127.0.0.1:{metrics.port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        metrics.close()
    assert 'trainguard_alerts_total{rule="process.killed",severity="high"} 2.0' in text
    assert 'trainguard_last_step{rank="0"} 12.0' in text
    assert 'trainguard_step_seconds{rank="0"} 0.25' in text
    assert "trainguard_ranks_guarded 1.0" in text


def test_flags_make_options():
    import argparse

    from trainguard.findings import Severity
    from trainguard.launch.args import add_arguments, options_from

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--stop-on", "HIGH", "--resume", "a", "--resume", "b", "--no-env-verify"]
    opts = options_from(parser.parse_args([*argv, "--", "python", "t.py", "--stop-on", "x"]))
    assert opts.command == ("python", "t.py", "--stop-on", "x")  # the job's own flags
    assert opts.stop_on is Severity.HIGH and opts.env_verify == "off"
    assert opts.resume == (Path("a"), Path("b"))
    assert options_from(parser.parse_args(["python", "t.py"])).command == ("python", "t.py")
    with pytest.raises(ConfigError):
        options_from(parser.parse_args(["--stop-on", "loud", "--", "x"]))


def test_options_are_checked():
    with pytest.raises(ConfigError):
        RunOptions(command=())
    with pytest.raises(ConfigError):
        RunOptions(command=("x",), env_verify="sometimes")
    with pytest.raises(ConfigError):
        RunOptions(command=("x",), timeout=0)


def test_job_python_follows_the_command(tmp_path):
    assert job_python([sys.executable, "train.py"]) == sys.executable
    script = tmp_path / "torchrun"
    script.write_text(f"#!{sys.executable}\nprint()\n")
    os.chmod(script, 0o755)
    assert job_python([str(script), "train.py"]) == sys.executable
    assert job_python(["sh", "-c", "true"]) == sys.executable  # not Python: the launcher's
