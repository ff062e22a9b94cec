"""Checks before the job starts: the environment it will run in, and the checkpoint it
will resume from. Both go to the ledger (an event with the whole result, and one alert
per finding that matters) before a single line of the job runs.

Which environment: the interpreter the command runs (``python ...``, or the interpreter
on the ``#!`` line of a console script such as ``torchrun``), else the launcher's own.
The environment variables judged are the launcher's, before it adds its own start-up
folder to ``PYTHONPATH``.

Against what: never RECORD alone (``trainguard.env.tofu``). A pinned seal (``--seal``),
else this interpreter's first-use seal in the user's state folder, made by the first run
that finds nothing wrong: that run trusts the environment as it finds it, and says so on
stderr and in the ledger (``env.verified`` carries ``anchor``, ``trust`` and the seal's
root). Once the files pass, the import hooks after a real start-up are listed and judged
(``trainguard.env.finders``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.findings import Finding, Rule, Severity, Verdict
from trainguard.launch.options import RunOptions
from trainguard.ledger import Ledger

__all__ = ["Preflight", "check_resume", "job_python", "preflight", "verify_env"]

if TYPE_CHECKING:
    from trainguard.env import EnvReport, Progress

_PYTHON = re.compile(r"^python[0-9.]*$")
_MAX_LISTED = 200
_TICK_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Preflight:
    """What one check found: the worst severity it recorded as an alert (or None)."""

    name: str
    ok: bool
    worst: Severity | None
    skipped: bool = False
    seal: Path | None = None
    """The env check's seal, when one was used: the job's guard can take its run-time
    "trusted origin" from it (``trainguard.env.TrustedOrigins.from_seal``)."""


def preflight(ledger: Ledger, opts: RunOptions, say: Callable[[str], None]) -> list[Preflight]:
    """The checks ``opts`` asks for, in order: environment, then resume checkpoint."""
    out: list[Preflight] = []
    if opts.env_verify != "off":
        python = job_python(opts.command)
        say(f"verifying the job's environment ({python}) ...")
        out.append(
            verify_env(
                ledger,
                python=python,
                seal=opts.seal,
                seal_key=opts.seal_key,
                full=opts.env_verify == "full",
                ignore=opts.env_ignore,
                say=say,
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
    say: Callable[[str], None] | None = None,
    state: Path | None = None,
) -> Preflight:
    """Verify against the pinned or first-use seal (``tofu.verify_anchored``), then the
    import hooks after start-up when the files passed; record it all, alert on findings."""
    from trainguard.env import finders
    from trainguard.env.tofu import verify_anchored

    tell = say or (lambda _text: None)
    start = time.perf_counter()
    environment = dict(os.environ)
    with _progress(tell) as progress:
        anchored = verify_anchored(
            python,
            seal_path=seal,
            key=seal_key,
            state=state,
            full=full,
            ignore=tuple(ignore),
            environment=environment,
            progress=progress,
            say=tell,
        )
    report = anchored.report
    if _files_clean(report):
        used = anchored.seal if anchored.anchor != "record" else None
        hooks = finders.check(python, report, environment, seal=used)
        report = replace(report, findings=report.findings + tuple(hooks))
        if hooks and anchored.anchor == "first-use-sealed-now" and anchored.seal is not None:
            anchored.seal.unlink(missing_ok=True)
            tell("first-use seal withdrawn: start-up installs import hooks no one vouches for")
    tell(f"environment: this run trusts {anchored.trust}")
    ok = not report.tampered and report.complete
    ledger.append_event(
        "env.verified",
        evidence={
            "event": "env.verified",
            "ok": ok,
            "python": python,
            "seal": str(anchored.seal) if anchored.seal else None,
            "anchor": anchored.anchor,
            "trust": anchored.trust,
            "seal_root": anchored.root,
            "fast": anchored.anchor != "record" and not full,
            "findings": [f.to_json() for f in report.findings[:_MAX_LISTED]],
            "findings_total": len(report.findings),
            "files": report.checked.files_hashed,
            "checked": report.checked.to_json(),
            "notes": list(report.notes),
            "seconds": round(time.perf_counter() - start, 3),
        },
    )
    if anchored.anchor == "first-use" and report.tampered:
        tell(
            "if the environment was changed on purpose, seal it again: trainguard env seal "
            f"--first-use --python {python}"
        )
    alerts = [f for f in report.findings if f.severity > Severity.INFO]
    valid = not any(f.rule is Rule.ENV_SEAL_INVALID for f in report.findings)
    used = anchored.seal if valid and anchored.seal is not None and anchored.seal.exists() else None
    return Preflight("env", ok, _alerts(ledger, alerts), seal=used)


def _files_clean(report: EnvReport) -> bool:
    """Nothing wrong with the files or start-up code (environment variables aside)."""
    from trainguard.env.environ import PRELOAD_FILE

    outside = ("<environment>", str(PRELOAD_FILE))
    return report.complete and all(
        f.severity <= Severity.INFO or f.location.path in outside for f in report.findings
    )


@contextlib.contextmanager
def _progress(tell: Callable[[str], None]) -> Iterator[Progress | None]:
    """A bar on a terminal (stderr, as ``env verify`` draws it); elsewhere a line through
    ``tell`` at most every ``_TICK_SECONDS``, so a log shows the check is alive."""
    if sys.stderr.isatty() and "NO_COLOR" not in os.environ:
        from trainguard.output.env import progress_bar

        with progress_bar(True) as bar:
            yield bar
        return
    last = [time.monotonic()]
    labels = {"hash": "hashed {:.0f} of {:.0f} MB", "pyc": "compiled {:.0f} of {:.0f} .pyc"}

    def tick(phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < _TICK_SECONDS:
            return
        last[0] = now
        scale = 1e6 if phase == "hash" else 1
        text = labels.get(phase, phase + " {:.0f} of {:.0f}")
        tell("environment: " + text.format(done / scale, total / scale))

    yield tick


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
