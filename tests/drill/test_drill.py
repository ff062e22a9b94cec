"""The whole system, end to end: ``trainguard drill`` runs the tiny job clean and under
every attack of THREATS.md (each job under ``trainguard run``, real processes, torchrun
for the two-rank cases), and the report renders its real ledgers.

One drill run (about a minute here) feeds every test in this module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trainguard.drill.scenarios import SCENARIOS

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "report_screenshot.sh"


@pytest.fixture(scope="module")
def drill(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path, int]:
    work = tmp_path_factory.mktemp("drill")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    proc = subprocess.run(
        [sys.executable, "-m", "trainguard", "drill", "--format", "json", "--ledger", str(work)],
        capture_output=True, text=True, timeout=900, env=env,
    )  # fmt: skip
    assert proc.stdout, proc.stderr[-4000:]
    return json.loads(proc.stdout), work, proc.returncode


def test_every_attack_is_caught_and_the_clean_run_is_silent(
    drill: tuple[dict[str, Any], Path, int],
) -> None:
    report, _, code = drill
    missed = [a for a in report["attacks"] if not a["detected"]]
    assert missed == [], json.dumps(missed, indent=1)
    assert report["clean"] == {**report["clean"], "steps": 16, "alerts": 0}
    assert report["ok"] is True and code == 0
    assert [a["attack"] for a in report["attacks"]] == [s.name for s in SCENARIOS]
    for row in report["attacks"]:
        assert set(row) >= {"attack", "expected", "detected", "alerts", "latency_steps",
                            "latency_s"}  # fmt: skip
        assert any(alert in row["expected"] for alert in row["alerts"])


def test_attribution_and_latency(drill: tuple[dict[str, Any], Path, int]) -> None:
    rows = {a["attack"]: a for a in drill[0]["attacks"]}
    # in-job attacks are caught at the step they happen, on the rank they happen
    for name in ("reseed", "lr-change", "monkeypatched-optimizer", "sampler-tampering"):
        assert rows[name]["latency_steps"] == 0, rows[name]
    assert rows["weight-edit-one-rank"]["attribution"]["rank"] == 1
    assert rows["weight-edit-one-rank"]["latency_steps"] == 0
    assert rows["sigkill-rank"]["attribution"]["rank"] == 1
    assert rows["straggler"]["attribution"]["rank"] == 1
    # a rank that drops its guard breaks the guard's per-step collective: the job fails,
    # and which rank's death torchrun reports first is a race (see scenarios.py)
    assert rows["guard-removed"]["attribution"]["rank"] in (0, 1)
    # the payloads of the poisoned files never ran
    assert rows["poisoned-checkpoint"]["note"] == "payload never ran"
    assert rows["poisoned-hf-resume"]["note"] == "payload never ran"
    assert rows["edited-torch-source"]["attribution"]["where"].endswith("torch/optim/adamw.py")


def test_sigterm_names_the_sender(drill: tuple[dict[str, Any], Path, int]) -> None:
    from trainguard.ledger import read_records

    _, work, _ = drill
    signals = [r for r in read_records(work / "sigterm" / "ledger") if r.alert == "process.signal"]
    assert signals, "no process.signal in the sigterm run"
    evidence = signals[0].evidence
    assert evidence["signal"] == "SIGTERM"
    assert "kill" in str(evidence.get("cmdline"))
    assert evidence["pid"] != signals[0].pid  # another process sent it


def test_report_renders_real_drill_ledgers(drill: tuple[dict[str, Any], Path, int]) -> None:
    from trainguard.report import build, render_html

    _, work, _ = drill
    clean = build(work / "clean" / "ledger")
    html = render_html(clean)
    assert "http://" not in html and "https://" not in html
    assert "<polyline" in html  # loss curves from the guard's metrics
    attacked = render_html(build(work / "insider-weights" / "ledger"))
    assert "runtime.weight_tamper" in attacked and "runtime.replica_divergence" in attacked


def test_report_of_a_drill_ledger_in_chromium(
    drill: tuple[dict[str, Any], Path, int], tmp_path: Path
) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("Chromium is needed: apt-get update && apt-get install -y chromium")
    _, work, _ = drill
    env = {**os.environ, "PYTHON": sys.executable, "CHROMIUM": browser}
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(work / "insider-weights" / "ledger"), str(tmp_path / "shot")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "shot" / "report.png").read_bytes().startswith(b"\x89PNG")
