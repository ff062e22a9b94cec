"""``trainguard run``'s default environment check, end to end (the launcher as a process):
first use seals, later runs are checked against the seal, and the seal is refused when
someone else could have written it. Each job only touches a marker file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from envkit import Env, rewrite_with_record

from trainguard.env import verify
from trainguard.env.tofu import first_use_path
from trainguard.exit_codes import GUARD_STOPPED
from trainguard.ledger import Record, read_records

EVIL = b"def step(lr):\n    return lr * 9.9\n"


def launch(env: Env, tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``trainguard run --stop-on high -- PY -c 'touch marker'``; returns the process
    and its ledger. The state folder comes from $TRAINGUARD_STATE_DIR (fixture ``state``)."""
    ledger = tmp_path / f"ledger-{name}"
    marker = tmp_path / f"ran-{name}"
    seal_env = "__import__('os').environ.get('TRAINGUARD_ENV_SEAL')"
    job = [env.python, "-c", f"open({str(marker)!r}, 'w').write(repr({seal_env}))"]
    argv = [sys.executable, "-m", "trainguard.launch", "--ledger", str(ledger)]
    argv += ["--stop-on", "high", "--env-ignore", "PYTHONPATH", "--guard-timeout", "60"]
    environ = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_LEDGER"}
    proc = subprocess.run(
        [*argv, "--", *job], env=environ, capture_output=True, text=True, timeout=300
    )
    return proc, ledger


def verified(ledger: Path) -> Record:
    (event,) = [r for r in read_records(ledger) if r.message == "env.verified"]
    return event


def alerts(ledger: Path, rule: str) -> list[Record]:
    return [r for r in read_records(ledger) if r.kind == "alert" and r.alert == rule]


def test_record_rewrite_is_caught_by_the_second_run(env, state, tmp_path, clean_environ):
    first, ledger = launch(env, tmp_path, "first")
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "ran-first").exists()
    assert "trust on first use" in first.stderr  # said plainly, on the run's output
    event = verified(ledger)
    assert event.evidence["anchor"] == "first-use-sealed-now" and event.evidence["ok"] is True
    assert "as it is now" in event.evidence["trust"] and event.evidence["seal_root"]
    checked = event.evidence["checked"]  # the stdlib's verdicts came from the warm cache
    assert checked["pyc_cached"] > 1000 and checked["pyc"] < 50, checked
    seal = first_use_path(env.python, state)
    assert event.evidence["seal"] == str(seal) and seal.exists()
    # the job's guard gets that seal for its run-time "trusted origin"
    assert (tmp_path / "ran-first").read_text() == repr(str(seal))

    target = rewrite_with_record(env, "tinypkg/optim.py", EVIL)
    blind = verify(python=env.python, environment=clean_environ)
    assert blind.findings == ()  # RECORD alone is blind to it: the first complaint

    second, ledger = launch(env, tmp_path, "second")
    assert second.returncode == GUARD_STOPPED, second.stderr
    assert not (tmp_path / "ran-second").exists()
    assert verified(ledger).evidence["anchor"] == "first-use"
    found = {r.evidence["location"]["path"]: r for r in alerts(ledger, "env.file_modified")}
    assert found[str(target)].evidence["source"] == "seal"
    assert found[str(target)].severity == "critical"
    assert "env seal --first-use" in second.stderr  # how to accept a deliberate change


def test_a_first_use_seal_someone_else_owns_is_refused(env, state, tmp_path, clean_environ):
    """The insider who cannot beat the seal swaps in his own: a seal of the tampered
    environment (root recomputed, so it verifies) at the first-use path, owned by him.
    The ownership check refuses it before it is read, and says so as a critical alert."""
    from trainguard.env import seal as make_seal

    target = rewrite_with_record(env, "tinypkg/optim.py", EVIL)
    path = first_use_path(env.python, state)
    path.parent.mkdir(mode=0o700)
    make_seal(path, python=env.python, stdlib_pyc=False)
    os.chown(path, 4242, 4242)  # his uid (the tests run as root, so they can say so)
    run, ledger = launch(env, tmp_path, "swapped")
    assert run.returncode == GUARD_STOPPED, run.stderr
    assert not (tmp_path / "ran-swapped").exists()
    (refused,) = alerts(ledger, "env.seal_invalid")
    assert refused.evidence["location"]["path"] == str(path)
    assert "belongs to uid 4242" in refused.message
    assert verified(ledger).evidence["anchor"] == "record"
    assert path.exists()  # refused, not replaced: it is evidence
    assert target.read_bytes() == EVIL


def test_foreign_finder_at_start_up_stops_the_run_and_is_not_sealed(env, state, tmp_path):
    """A first run on an environment whose files pass but whose start-up installs a
    meta path finder from outside it: reported, the job refused, and the fresh first-use
    seal withdrawn (it would bless the finder module's rewrite)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    finder = "class Finder:\n    def find_spec(self, name, path=None, target=None):\n"
    (outside / "_evil_finder.py").write_text(finder + "        return None\n")
    body = (
        f"import sys\nsys.path.append({str(outside)!r})\nimport _evil_finder\n\n"
        "def install():\n    sys.meta_path.insert(0, _evil_finder.Finder())\n"
    )
    rewrite_with_record(env, "__editable___proj_1_0_finder.py", body.encode())
    run, ledger = launch(env, tmp_path, "finder")
    assert run.returncode == GUARD_STOPPED, run.stderr
    assert not (tmp_path / "ran-finder").exists()
    hooks = alerts(ledger, "env.startup_hook")
    assert hooks and {r.evidence["hook"] for r in hooks} == {"_evil_finder.Finder"}
    assert "withdrawn" in run.stderr
    assert not first_use_path(env.python, state).exists()


def test_preflight_hands_the_seal_on(env, state, tmp_path):
    """``verify_env`` names the seal it used, for the job's run-time trusted origins."""
    from trainguard.launch.preflight import verify_env
    from trainguard.ledger import Ledger

    said: list[str] = []
    with Ledger(tmp_path / "ledger") as ledger:
        kw = {"python": env.python, "seal": None, "seal_key": None, "full": False}
        first = verify_env(ledger, **kw, ignore=["PYTHONPATH"], say=said.append, state=state)
        again = verify_env(ledger, **kw, ignore=["PYTHONPATH"], state=state)
    assert first.ok and again.ok and first.seal == again.seal == first_use_path(env.python, state)
    assert any("trust on first use" in line for line in said)
