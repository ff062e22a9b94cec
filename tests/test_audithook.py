"""The PEP 578 hook: silent outside guarded loads, blocking inside, imports exempt."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainguard import SuspiciousCallBlocked, audithook


def test_blocks_shell_inside_and_not_outside(tmp_path: Path):
    marker = tmp_path / "PWNED"
    with audithook.guarding("x.pt") as watch, pytest.raises(SuspiciousCallBlocked):
        os.system(f"touch {marker}")
    assert not marker.exists()
    assert watch.findings[0].evidence["event"] == "os.system"
    ok = tmp_path / "fine"
    os.system(f"touch {ok}")  # outside any guarded load: untouched
    assert ok.exists()


def test_record_only_mode_lets_the_call_through(tmp_path: Path):
    with audithook.guarding("x.pt", block=False) as watch:
        subprocess.run(["true"], check=True)
    assert watch.findings and watch.findings[0].evidence["event"] == "subprocess.Popen"
    assert watch.findings[0].evidence["blocked"] is False


def test_exec_of_new_code_is_blocked_but_imports_are_not():
    sys.modules.pop("colorsys", None)
    with audithook.guarding("x.pt"):
        importlib.import_module("colorsys")
        with pytest.raises(SuspiciousCallBlocked):
            exec("1 + 1")
