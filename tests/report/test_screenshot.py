"""The HTML report in a real browser: headless Chromium loads it with its Content-
Security-Policy in force, must log nothing to the console (no script error, no blocked
load, no CSP violation) and must run the page's own script.

Needs Chromium (``apt-get install -y chromium`` on Debian/Ubuntu). Without it this test
fails rather than skips: a report nobody has opened in a browser is not tested.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import write_demo_ledger

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "report_screenshot.sh"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            "Chromium is needed for the browser check of the HTML report: "
            "apt-get update && apt-get install -y chromium",
            pytrace=False,
        )
    return found


def test_report_loads_cleanly_in_chromium(tmp_path: Path) -> None:
    browser = _chromium()
    ledger = write_demo_ledger(tmp_path / "ledger")
    out = tmp_path / "shot"
    env = {**os.environ, "PYTHON": sys.executable, "CHROMIUM": browser}
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(ledger), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    png = (out / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    dom = (out / "dom.html").read_text(encoding="utf-8")
    assert 'data-js="ok"' in dom
    # the hostile message reached the DOM as text only: no element was made of it
    assert "&lt;script&gt;alert(" in dom and "<img" not in dom and dom.count("<script") == 1
    assert "[bold red]markup[/]" in dom and "\\x1b[2J" in dom and "\\u202eevil" in dom


def test_script_reports_console_errors(tmp_path: Path) -> None:
    """The check itself can fail: a page whose script is blocked is caught."""
    browser = _chromium()
    page = tmp_path / "bad.html"
    page.write_text(
        "<!DOCTYPE html><meta http-equiv='Content-Security-Policy' content=\"default-src "
        "'none'\"><p>x</p><script>document.documentElement.dataset.js='ok'</script>",
        encoding="utf-8",
    )
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert ":CONSOLE" in proc.stderr and "Content Security Policy" in proc.stderr
    assert 'data-js="ok"' not in proc.stdout
