"""The scanner's demo (examples/scan_demo.py): builds its files, scans them, and is right."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_scan_demo_exits_zero_and_runs_no_payload(tmp_path: Path):
    pytest.importorskip("torch")
    proc = subprocess.run(
        [sys.executable, str(REPO / "examples" / "scan_demo.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verdicts as expected" in proc.stderr
    assert "UNSAFE" in proc.stdout and "SAFE" in proc.stdout
    assert not list(tmp_path.glob("PWNED-*"))
