"""``pyvenv.cfg`` and the interpreter it points at: where a venv's standard library comes from.

A venv has no standard library of its own. Python reads ``home`` from ``pyvenv.cfg`` and
searches from there for ``lib/pythonX.Y/os.py``, so one edited line makes every process of
the venv load its standard library (and the probe its checks) from a copy of the
insider's choosing, with the same interpreter binary and nothing changed under the venv
but that line. A RECORD check never sees it: the standard library has no RECORD.

Two checks, made here in the parent without running anything from the venv:

1. the interpreter the venv runs is the one ``home`` names (the same file, or for a venv
   made with ``--copies`` the same bytes);
2. the standard library the venv loads (the probe's ``sys.path`` under ``-I -S``) is the
   one that interpreter finds on its own when started outside the venv
   (``python -I -S`` of the base binary, which reads no ``pyvenv.cfg``).

Either failing is ``env.startup_hook`` (critical). *What this trusts:* the base
interpreter binary and the standard library beside it, as the operating system resolves
them. A copy of both (binary and library) with ``home`` and the venv's link both pointed at
it passes these checks; the seal catches that (``pyvenv.cfg``, the link's target and the
standard library's location are sealed) from the run after the first.
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
from collections.abc import Iterable, Sequence
from typing import Any

from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["base_stdlib", "check", "find_cfg", "read_cfg"]

_DROP_ENV = ("LD_PRELOAD", "LD_AUDIT")


def find_cfg(python: str) -> str | None:
    """The ``pyvenv.cfg`` Python itself would read: beside the executable or one folder up
    (found from the path as run, before links are resolved)."""
    exe_dir = os.path.dirname(os.path.abspath(python))
    for folder in (exe_dir, os.path.dirname(exe_dir)):
        cfg = os.path.join(folder, "pyvenv.cfg")
        if os.path.isfile(cfg):
            return cfg
    return None


def read_cfg(path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            key, sep, value = line.partition("=")
            if sep:
                out[key.strip().lower()] = value.strip()
    return out


def _same_bytes(a: str, b: str) -> bool:
    try:
        if os.path.getsize(a) != os.path.getsize(b):
            return False
        digests = []
        for p in (a, b):
            with open(p, "rb") as f:
                digests.append(hashlib.file_digest(f, "sha256").digest())
        return digests[0] == digests[1]
    except OSError:
        return False


def _named_by_home(python: str, home: str, version: str) -> str | None:
    """The file in ``home`` that is the interpreter ``python`` runs, if any."""
    real = os.path.realpath(python)
    names = [os.path.basename(python), os.path.basename(real), "python3", "python"]
    if version:
        names.insert(0, "python" + ".".join(version.split(".")[:2]))
    for name in dict.fromkeys(names):
        candidate = os.path.join(home, name)
        if not os.path.isfile(candidate):
            continue
        try:
            if os.path.samefile(candidate, real):
                return candidate
        except OSError:
            continue
        if _same_bytes(candidate, real):
            return candidate
    return None


def base_stdlib(base: str) -> list[str]:
    """The standard library folders ``base`` finds on its own (``-I -S``: no site, no
    ``PYTHON*`` variables), real paths of the ones that exist."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    out = subprocess.run(
        [base, "-I", "-S", "-c", "import sys; print(repr(sys.path))"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    ).stdout
    paths = ast.literal_eval(out.strip())
    return _real_dirs(p for p in paths if isinstance(p, str) and p)


def _real_dirs(paths: Iterable[str]) -> list[str]:
    return sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})


def check(python: str, stdlib_dirs: Sequence[str]) -> list[Finding]:
    """Findings for the venv of ``python`` (none when it is not a venv); ``stdlib_dirs``
    are the folders the probe saw on ``sys.path``, i.e. the standard library it loads."""
    cfg = find_cfg(python)
    if cfg is None:
        return []
    try:
        values = read_cfg(cfg)
    except OSError as exc:
        return [_error(cfg, f"cannot read: {exc.strerror or exc}")]
    home = values.get("home", "")
    if not home:
        return [
            _hook(
                cfg,
                "pyvenv.cfg names no home: where this venv's standard library comes from "
                "cannot be checked",
                Severity.MEDIUM,
                {},
            )
        ]
    base = _named_by_home(python, home, values.get("version", ""))
    real = os.path.realpath(python)
    if base is None:
        why = (
            f"pyvenv.cfg sets home = {home}, but {python} runs {real}, which is not there: "
            "Python takes the standard library from home's install, so this venv runs one "
            "interpreter with another's standard library"
        )
        return [_hook(cfg, why, Severity.CRITICAL, {"home": home, "interpreter": real})]
    try:
        own = base_stdlib(base)
    except (OSError, ValueError, SyntaxError, subprocess.SubprocessError) as exc:
        return [_error(cfg, f"cannot run the base interpreter {base}: {exc}")]
    loaded = _real_dirs(stdlib_dirs)
    if loaded != own:
        why = (
            f"this venv loads its standard library from {', '.join(loaded) or 'nowhere'}, "
            f"but its interpreter {os.path.realpath(base)} was installed with "
            f"{', '.join(own) or 'none'} (pyvenv.cfg home = {home})"
        )
        evidence = {"home": home, "loaded": loaded, "installed_with": own, "interpreter": real}
        return [_hook(cfg, why, Severity.CRITICAL, evidence)]
    return []


def _hook(cfg: str, message: str, severity: Severity, evidence: dict[str, Any]) -> Finding:
    return Finding(Rule.ENV_STARTUP_HOOK, severity, message, Location(cfg, member="home"), evidence)


def _error(cfg: str, message: str) -> Finding:
    return Finding(Rule.ENV_ERROR, Severity.HIGH, message, Location(cfg))
