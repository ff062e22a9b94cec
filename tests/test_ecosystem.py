"""The pre-commit hook and the example workflow are well-formed and call real commands."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from pk import system_call

yaml = pytest.importorskip("yaml")
REPO = Path(__file__).resolve().parents[1]


def test_pre_commit_hook_runs_the_scanner(tmp_path: Path):
    (hook,) = yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())
    assert hook["id"] == "trainguard-scan" and hook["language"] == "python"
    entry = shlex.split(hook["entry"])
    assert entry[0] == "trainguard"
    evil, png = tmp_path / "model.bin", tmp_path / "logo.png"
    evil.write_bytes(system_call(str(tmp_path / "PWNED")))
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    cmd = [sys.executable, "-m", "trainguard", *entry[1:]]
    assert subprocess.run([*cmd, str(png)], capture_output=True, check=False).returncode == 0
    assert subprocess.run([*cmd, str(evil)], capture_output=True, check=False).returncode == 1
    assert not (tmp_path / "PWNED").exists()


def test_example_workflow_uploads_sarif():
    wf = yaml.safe_load((REPO / "examples" / "ci" / "github-trainguard.yml").read_text())
    steps = wf["jobs"]["scan"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "trainguard scan --format sarif -o trainguard.sarif" in runs
    upload = next(s for s in steps if "upload-sarif" in s.get("uses", ""))
    assert upload["with"]["sarif_file"] == "trainguard.sarif"
    assert wf["permissions"]["security-events"] == "write"
