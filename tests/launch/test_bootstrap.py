"""The start-up hook in the job's processes, and the checks before the job starts."""

from __future__ import annotations

import json
import subprocess
import sys

from trainguard.launch import GUARD_STOPPED

PROBE = """
import json, os, sys
import trainguard.load as p
print(json.dumps({"protected": p.is_protected(), "torch": "torch" in sys.modules,
                  "run_dir": os.environ.get("TRAINGUARD_RUN_DIR"),
                  "key": len(os.environ.get("TRAINGUARD_RUN_KEY", ""))}))
"""


def test_every_python_process_boots_protected_without_torch(launch):
    run = launch(PROBE, "--guard-timeout", "60")
    assert run.code == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen == {"protected": True, "torch": False, "run_dir": seen["run_dir"], "key": 64}
    boots = list((run.ledger / "runs").glob("*/heartbeats/*.boot.json"))
    (boot_file,) = boots
    boot = json.loads(boot_file.read_text())
    assert boot["rank"] == 0 and boot["rank_env"] is None
    assert boot["argv"][0].endswith("job.py")
    assert boot["errors"] == [] and boot["protected"] is True
    assert boot["exit"] == "normal"
    assert str(boot_file.parent.parent) == seen["run_dir"]


def test_no_protect_leaves_loaders_alone(launch):
    run = launch(PROBE, "--no-protect", "--guard-timeout", "60")
    assert json.loads(run.stdout)["protected"] is False


def test_existing_sitecustomize_is_chained(launch, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text(
        "import os\nos.environ['THEIRS_RAN'] = 'yes'\nopen('chained-marker', 'w').close()\n"
    )
    job = "import os; print(os.environ.get('THEIRS_RAN'))"
    run = launch(job, "--guard-timeout", "60", env={"PYTHONPATH": str(theirs)})
    assert run.code == 0, run.stderr
    assert run.stdout.strip() == "yes"
    assert (tmp_path / "chained-marker").exists()
    (boot_file,) = (run.ledger / "runs").glob("*/heartbeats/*.boot.json")
    boot = json.loads(boot_file.read_text())
    assert boot["chained"] == str(theirs / "sitecustomize.py")


def test_broken_sitecustomize_does_not_break_the_job(launch, tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("raise RuntimeError('broken on purpose')\n")
    run = launch("print('still here')", "--guard-timeout", "60", env={"PYTHONPATH": str(theirs)})
    assert run.code == 0 and run.stdout.strip() == "still here"
    assert "Error in sitecustomize" in run.stderr  # as Python itself would say
    (boot_file,) = (run.ledger / "runs").glob("*/heartbeats/*.boot.json")
    assert "broken on purpose" in json.loads(boot_file.read_text())["errors"][0]


def test_startup_pth_in_the_job_environment_refuses_to_start(launch, tmp_path):
    """The one test that runs the environment verify: on a tiny venv (fast), with an
    executable .pth line planted in it (a harmless marker)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    (site,) = venv.glob("lib/python*/site-packages")
    marker = tmp_path / "pth-ran"
    (site / "evil.pth").write_text(f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n")
    job_ran = tmp_path / "job-ran"
    command = [str(venv / "bin" / "python"), "-c", f"open({str(job_ran)!r}, 'w')"]
    run = launch(command, "--stop-on", "high", "--env-ignore", "PYTHONPATH", env_verify=True)
    assert run.code == GUARD_STOPPED, run.stderr
    assert not job_ran.exists() and not marker.exists()  # nothing of the job ever ran
    (verified,) = run.events("env.verified")
    assert verified.evidence["ok"] is False
    assert verified.evidence["python"] == str(venv / "bin" / "python")
    hooks = run.alerts("env.startup_hook")
    assert hooks and "evil.pth" in hooks[0].evidence.get("path", "") + str(hooks[0].evidence)
    assert run.events("run.started") == []
    assert run.events("run.exited")[0].evidence["refused_by"] == ["env"]
    assert "ALERT env.startup_hook" in run.stderr


def test_unsafe_resume_checkpoint_refuses_to_start(launch, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    # a pickle that would call os.system: built here, never loaded
    (ckpt / "rng_state.pth").write_bytes(b"cos\nsystem\n(S'touch pwned'\ntR.")
    run = launch("open('job-ran', 'w')", "--resume", str(ckpt), "--stop-on", "high")
    assert run.code == GUARD_STOPPED, run.stderr
    assert not (tmp_path / "job-ran").exists() and not (tmp_path / "pwned").exists()
    (scan,) = run.events("scan")
    assert scan.evidence["verdict"] == "unsafe"
    assert run.alerts("scan.code_execution")


def test_safe_resume_checkpoint_starts(launch, tmp_path):
    import pickle

    ckpt = tmp_path / "state.pkl"
    ckpt.write_bytes(pickle.dumps({"step": 3, "lr": [0.1, 0.01]}))
    run = launch("print('ok')", "--resume", str(ckpt), "--stop-on", "high")
    assert run.code == 0, run.stderr
    assert run.events("scan")[0].evidence["verdict"] == "safe"
    assert run.alerts() == []
