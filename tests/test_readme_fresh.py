"""The README's main command, as a newcomer runs it, from a fresh clone.

The README's first line installs ``.[drill]`` into a new venv and runs the drill. An extra
that forgets a package the drill or the scanner's demo needs only shows on a machine that
does not already have it, so this test makes such a machine: a clone of the repository (its
committed files only), a new venv without this one's site-packages, the README's own
``pip install``, then the essential parts: ``trainguard drill`` for a few attacks (whose
exit code says each was caught and the clean run was silent) and the scanner's demo. pip
is pointed at the same package index as the developer's (no constraints file: a
newcomer has none); torch comes pinned, as the README says."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def _clone(dest: Path) -> Path:
    """The committed tree (or, outside git, the working tree without caches)."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
        return dest
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(".venv*", "__pycache__", ".git"))
    return dest


def _install_command() -> list[str]:
    """The README's pip line for the main job (its first code line)."""
    first = next(line for line in README.splitlines() if line.startswith("    python3 -m venv"))
    pip = re.search(r"pip install ([^&]+)", first)
    assert pip, first
    return [arg.strip("'") for arg in pip.group(1).split()]


def test_readme_main_command_from_a_fresh_clone(tmp_path: Path) -> None:
    repo = _clone(tmp_path / "repo")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    done = subprocess.run(
        [*pip, *_install_command()], cwd=repo, env=env, capture_output=True, text=True,
        timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    drill = subprocess.run(
        [str(venv / "bin" / "trainguard"), "drill", "--format", "json",
         "--attack", "reseed", "--attack", "lr-change", "--attack", "poisoned-checkpoint"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert drill.returncode == 0, (drill.stdout[-3000:], drill.stderr[-3000:])
    assert "Failed to initialize NumPy" not in drill.stderr
    doc = json.loads(drill.stdout)
    assert {a["attack"]: a["detected"] for a in doc["attacks"]} == {
        "reseed": True, "lr-change": True, "poisoned-checkpoint": True,
    }  # fmt: skip
    assert doc["clean"]["alerts"] == 0 and doc["clean"]["steps"] > 0
    demo = subprocess.run(
        [str(venv / "bin" / "python"), "examples/scan_demo.py"],
        cwd=repo, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert demo.returncode == 0, (demo.stdout[-2000:], demo.stderr[-2000:])
    assert "Traceback" not in demo.stderr
