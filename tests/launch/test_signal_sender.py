"""Under ``trainguard run`` every Python process of the job records who signalled it, with
or without a ``Guard``: the start-up hook binds its signal watch to the ledger. What this
trusts is the kernel's sender fields (``trainguard.guard.signals_sender``) and the
supervisor's pid given in the job's environment; the tests attack the unguarded case and
check the supervisor's own signals stay events."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launchkit import PY

from trainguard.ledger import read_records

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "sigtimedwait"), reason="needs sigwaitinfo (Linux)"
)

JOB = """
import os, pathlib, time
pathlib.Path("job.token").write_text(repr(os.environ.get("TRAINGUARD_AUTHORITY")))
pathlib.Path("job.pid").write_text(str(os.getpid()))
time.sleep(30)
"""


def _start(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    (tmp_path / "job.py").write_text(JOB)
    ledger = tmp_path / "ledger"
    cmd = [PY, "-m", "trainguard.launch", "--ledger", str(ledger), "--no-env-verify"]
    proc = subprocess.Popen(
        [*cmd, "--guard-timeout", "60", "--", PY, "job.py"], cwd=tmp_path, stderr=sys.stderr
    )
    deadline = time.monotonic() + 60
    pid_file = tmp_path / "job.pid"
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)  # the pid is written once the start-up hook has run
    return proc, int(pid_file.read_text()), ledger


def test_a_sigterm_to_an_unguarded_job_names_its_sender(tmp_path: Path):
    proc, job, ledger = _start(tmp_path)
    sender = subprocess.Popen(["sh", "-c", f"kill -TERM {job}; sleep 5"])
    try:
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        sender.kill()
        sender.wait()
        if proc.poll() is None:
            proc.kill()
    records = read_records(ledger)
    (signalled,) = [r for r in records if r.kind == "alert" and r.alert == "process.signal"]
    assert signalled.severity == "high"
    assert signalled.evidence["pid"] == sender.pid and signalled.evidence["guard"] is False
    assert "kill" in signalled.evidence["cmdline"] and signalled.pid == job
    assert f"pid {sender.pid}" in signalled.message
    (killed,) = [r for r in records if r.alert == "process.killed"]  # how it died
    assert f"sent by pid {sender.pid}" in killed.message
    boot = json.loads(next((ledger / "runs").glob(f"*/heartbeats/{job}.boot.json")).read_text())
    assert boot["signalled_by"] == [{"signal": "SIGTERM", "pid": sender.pid, "verified": True}]
    assert boot["authority"] is True  # the token was there, and taken out of os.environ
    assert (tmp_path / "job.token").read_text() == "None"


def test_the_supervisors_own_signal_is_an_event(tmp_path: Path):
    proc, _, ledger = _start(tmp_path)
    proc.send_signal(signal.SIGTERM)  # forwarded by the supervisor to the job
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    records = read_records(ledger)
    assert not [r for r in records if r.kind == "alert"]
    (event,) = [r for r in records if r.kind == "event" and r.message == "process.signal"]
    assert event.evidence["from_supervisor"] is True and event.evidence["pid"] == proc.pid
