"""``env verify --wheels``: the wheels an environment was installed from, fetched again.

Without a seal, RECORD is each distribution's only witness, and whoever rewrites
``torch/optim/adamw.py`` can rewrite its RECORD row too. The wheel on the package index
still carries the original RECORD, so this module asks pip for the wheel of every
installed distribution, by exact name and version, and keeps them in a wheelhouse in the
user's state folder; ``verify(wheelhouse=...)`` then compares every installed file and
the installed RECORD with the wheel's (``probe/wheels.py``).

What it trusts: the package index pip is configured with (``pip.conf``, ``PIP_INDEX_URL``,
``PIP_FIND_LINKS``) and pip's own cache, to serve the wheels that were published, and the
state folder (private to the user, checked by ``state.ensure_private_dir``) to keep what
was fetched. It never trusts the environment being checked: pip runs from *this*
interpreter (``pip --python TARGET`` only asks the target for its platform tags), and the
names and versions it asks for are only used to look wheels up: a name the index does
not have is reported as not compared, never as clean. Distributions installed from a
local build or in editable mode have no wheel on an index; they are named in a note.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from trainguard.env.probe.records import normalize
from trainguard.env.probe.wheels import index
from trainguard.env.state import ensure_private_dir, state_dir
from trainguard.errors import ConfigError

__all__ = ["Fetched", "fetch_wheels", "installed", "wheel_cache"]

PIP_TIMEOUT_S = 600
_LIST = (
    "import importlib.metadata as m, json, sys\n"
    "seen = sorted({(d.metadata['Name'] or '', d.version or '') for d in m.distributions()})\n"
    "json.dump([[n, v] for n, v in seen if n and v], sys.stdout)\n"
)


@dataclass(frozen=True, slots=True)
class Fetched:
    """What ``fetch_wheels`` found: the wheelhouse, and the distributions it has no
    wheel for (``name==version``, with pip's last words when it said something)."""

    wheelhouse: Path
    found: int
    missing: tuple[str, ...]
    problems: tuple[str, ...]


def wheel_cache() -> Path:
    """``<state folder>/wheels``, created private to the user."""
    folder = state_dir() / "wheels"
    problem = ensure_private_dir(folder)
    if problem:
        raise ConfigError(f"cannot keep fetched wheels in {folder}: {problem}")
    return folder


def installed(python: str) -> list[tuple[str, str]]:
    """``(name, version)`` of every distribution the interpreter ``python`` sees (it is
    asked in isolated mode; what it answers only names the wheels to fetch)."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", _LIST], capture_output=True, text=True, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot list the distributions of {python}: {exc}") from None
    if out.returncode != 0:
        raise ConfigError(f"cannot list the distributions of {python}: {out.stderr[-400:]}")
    try:
        return [(str(n), str(v)) for n, v in json.loads(out.stdout)]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{python} listed its distributions unreadably: {exc}") from None


def fetch_wheels(
    python: str | None = None,
    dest: Path | None = None,
    *,
    workers: int = 4,
    say: Callable[[str], None] | None = None,
) -> Fetched:
    """Put the wheel of every distribution of ``python`` (default: this interpreter) into
    ``dest`` (default: ``wheel_cache()``), fetching only those not there yet: one pip call
    for all of them, then one per distribution still missing (so one unknown name does
    not hide the others)."""
    exe = python or sys.executable
    folder = dest if dest is not None else wheel_cache()
    folder.mkdir(parents=True, exist_ok=True)
    everything = installed(exe)
    wanted = [(n, v) for n, v in everything if not _have(folder, n, v)]
    problems: list[str] = []
    if wanted:
        if say is not None:
            say(f"fetching {len(wanted)} wheel(s) from the package index into {folder}")
        problems.append(_pip(exe, folder, [f"{n}=={v}" for n, v in wanted]))
    still = [(n, v) for n, v in wanted if not _have(folder, n, v)]
    if len(wanted) > 1 and still:  # one unknown name fails the whole call: ask one by one
        problems = []
        with ThreadPoolExecutor(max(1, workers)) as pool:
            problems += pool.map(lambda nv: _pip(exe, folder, [f"{nv[0]}=={nv[1]}"]), still)
    missing = tuple(f"{n}=={v}" for n, v in still if not _have(folder, n, v))
    found = len(everything) - len(missing)
    return Fetched(folder, found, missing, tuple(p for p in problems if p))


def _have(folder: Path, name: str, version: str) -> bool:
    return (normalize(name), version) in index(str(folder))


def _pip(python: str, folder: Path, requirements: Sequence[str]) -> str:
    """Run pip download; returns its last error line ("" when it succeeded)."""
    cmd = [
        sys.executable, "-m", "pip", "--python", python, "download", "--no-deps",
        "--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(folder),
        *requirements,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"pip download {' '.join(requirements)}: {exc}"
    if out.returncode == 0:
        return ""
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    return f"pip download {' '.join(requirements)}: {lines[-1] if lines else out.returncode}"
