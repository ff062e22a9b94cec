"""Checks before the job starts: the environment it will run in, and the checkpoint it
will resume from. Both go to the ledger (an event with the whole result, and one alert
per finding that matters) before a single line of the job runs.

Which environment: the interpreter the command runs (``python ...``, or the interpreter
on the ``#!`` line of a console script such as ``torchrun``), else the launcher's own.
The environment variables judged are the launcher's, before it adds its own start-up
folder to ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.findings import Finding, Severity, Verdict
from trainguard.launch.options import RunOptions
from trainguard.ledger import Ledger

__all__ = ["Preflight", "check_resume", "job_python", "preflight", "verify_env"]

_PYTHON = re.compile(r"^python[0-9.]*$")
_MAX_LISTED = 200


@dataclass(frozen=True, slots=True)
class Preflight:
    """What one check found: the worst severity it recorded as an alert (or None)."""

    name: str
    ok: bool
    worst: Severity | None
    skipped: bool = False


def preflight(ledger: Ledger, opts: RunOptions, say: Callable[[str], None]) -> list[Preflight]:
    """The checks ``opts`` asks for, in order: environment, then resume checkpoint."""
    out: list[Preflight] = []
    if opts.env_verify != "off":
        say("verifying the job's environment ...")
        out.append(
            verify_env(
                ledger,
                python=job_python(opts.command),
                seal=opts.seal,
                seal_key=opts.seal_key,
                full=opts.env_verify == "full",
                ignore=opts.env_ignore,
            )
        )
    if opts.resume:
        say(f"scanning {', '.join(map(str, opts.resume))} ...")
        out.append(check_resume(ledger, opts.resume))
    return out


def job_python(command: Sequence[str]) -> str:
    """The interpreter ``command`` will run Python code with."""
    exe = shutil.which(command[0]) if command else None
    if exe is None:
        return sys.executable
    if _PYTHON.match(os.path.basename(exe)):
        return exe
    try:
        with open(exe, "rb") as f:
            first = f.readline(512).decode("utf-8", "replace").strip()
    except OSError:
        return sys.executable
    if not first.startswith("#!"):
        return sys.executable
    words = first[2:].split()
    if words and os.path.basename(words[0]) == "env":
        words = [w for w in words[1:] if not w.startswith("-")]
        found = shutil.which(words[0]) if words else None
        words = [found] if found else []
    if words and _PYTHON.match(os.path.basename(words[0])):
        return words[0]
    return sys.executable


def verify_env(
    ledger: Ledger,
    *,
    python: str,
    seal: Path | None,
    seal_key: Path | None,
    full: bool,
    ignore: Sequence[str],
) -> Preflight:
    from trainguard.env import verify

    start = time.perf_counter()
    report = verify(
        python=python,
        seal=seal,
        key=seal_key,
        fast=seal is not None and not full,
        ignore=tuple(ignore),
        environment=dict(os.environ),
    )
    ok = not report.tampered and report.complete
    ledger.append_event(
        "env.verified",
        evidence={
            "event": "env.verified",
            "ok": ok,
            "python": python,
            "seal": str(seal) if seal else None,
            "fast": seal is not None and not full,
            "findings": [f.to_json() for f in report.findings[:_MAX_LISTED]],
            "findings_total": len(report.findings),
            "files": report.checked.files_hashed,
            "checked": report.checked.to_json(),
            "notes": list(report.notes),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    alerts = [f for f in report.findings if f.severity > Severity.INFO]
    return Preflight("env", ok, _alerts(ledger, alerts))


def check_resume(ledger: Ledger, paths: Sequence[Path]) -> Preflight:
    from trainguard.scan import Limits, Policy, scan_path

    report = scan_path(
        *paths, policy=Policy.discover(), limits=Limits(), jobs=max(1, os.cpu_count() or 1)
    )
    order = [Verdict.SAFE, Verdict.SUSPICIOUS, Verdict.ERROR, Verdict.UNSAFE]
    verdict = max((f.verdict for f in report.files), key=order.index, default=Verdict.SAFE)
    findings: list[dict[str, Any]] = []
    serious: list[Finding] = []
    for result in report.files:
        for finding in result.findings:
            if len(findings) < _MAX_LISTED:
                findings.append({"path": result.path, **finding.to_json()})
            if result.verdict in (Verdict.UNSAFE, Verdict.ERROR) and (
                finding.severity >= Severity.HIGH or result.verdict is Verdict.ERROR
            ):
                serious.append(finding)
    ledger.append_event(
        "scan",
        evidence={
            "event": "scan",
            "path": [str(p) for p in paths],
            "verdict": verdict.value,
            "findings": findings,
            "summary": report.summary(),
        },
    )
    ok = verdict in (Verdict.SAFE, Verdict.SUSPICIOUS)
    return Preflight("scan", ok, _alerts(ledger, serious))


def _alerts(ledger: Ledger, findings: Sequence[Finding]) -> Severity | None:
    worst: Severity | None = None
    for finding in findings:
        ledger.append_alert(finding, rank=None)
        worst = finding.severity if worst is None else max(worst, finding.severity)
    return worst
