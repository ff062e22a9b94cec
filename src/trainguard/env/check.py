"""``verify()``: is this Python environment the one that was installed (or sealed)?

The parent only prepares the request, checks the seal's root and signature (while the
probe already works on the seal's entries), judges the
environment variables and builds the report; every look at the environment's files
happens in the isolated probe (``spawn.py``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any

from trainguard import keys
from trainguard.env import environ, sealfile
from trainguard.env.report import Checked, EnvReport
from trainguard.env.spawn import ProbeFailed, Running, start_probe
from trainguard.errors import ConfigError
from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["Progress", "PublicKeySource", "verify"]

Progress = Callable[[str, int, int], None]
"""Called as ``progress(phase, done, total)``; phases are ``hash`` (bytes) and ``pyc``."""
PublicKeySource = str | os.PathLike[str] | bytes | keys.PublicKey


def verify(
    *,
    python: str | None = None,
    seal: Path | None = None,
    key: PublicKeySource | None = None,
    wheelhouse: Path | None = None,
    fast: bool = False,
    workers: int | None = None,
    distributions: Sequence[str] | None = None,
    record_only: bool = False,
    ignore: Collection[str] = (),
    environment: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> EnvReport:
    """Check the environment of ``python`` (default: this interpreter).

    Always: every distribution's files against its RECORD, files no RECORD lists,
    ``.pyc`` files against their sources, and start-up hooks (``.pth`` code,
    ``sitecustomize``, auto-loaded entry points, stdlib shadowing, environment). With
    ``seal``: every sealed file, added or removed file, mode and owner, with the seal's
    root and (given ``key``) signature checked first. With ``wheelhouse``: RECORDs
    against the wheels. ``distributions``/``record_only`` narrow the run (benchmarks,
    quick checks) and skip the whole-environment checks. ``ignore`` names environment
    variables (or ``/etc/ld.so.preload``) not to report. Findings are data; only bad
    arguments raise (``ConfigError``).
    """
    start = time.perf_counter()
    if wheelhouse is not None and not Path(wheelhouse).is_dir():
        raise ConfigError(f"wheelhouse {wheelhouse} is not a directory")
    env = dict(os.environ if environment is None else environment)
    exe = python or sys.executable
    findings: list[Finding] = []
    notes: list[str] = []
    request: dict[str, Any] = {
        "mode": "verify",
        "workers": workers or os.cpu_count() or 2,
        "distributions": list(distributions) if distributions else None,
        "record_only": record_only,
        "wheelhouse": str(wheelhouse) if wheelhouse else None,
        "fast": fast,
        "pythonpath": env.get("PYTHONPATH") if "PYTHONPATH" not in ignore else None,
        "progress": progress is not None,
        "seal": None,
    }
    answer: dict[str, Any] | None = None
    if seal is not None:
        answer = _with_seal(exe, Path(seal), _public_key(key), request, findings, notes, progress)
    elif fast:
        notes.append("fast has no effect without a seal: every file was hashed")
    elif key is not None:
        notes.append("a key has no effect without a seal")
    if answer is None:
        request["seal"] = None
        answer = _result(start_probe(exe, request, b"", progress), findings)
    if not distributions and not record_only:
        findings += environ.check(env, ignore)
    findings += findings_from(answer.get("findings", []))
    return EnvReport(
        findings=tuple(sorted(findings, key=_order)),
        checked=Checked.from_json(answer.get("checked", {})),
        seconds=time.perf_counter() - start,
        python=exe,
        complete=not any(f.rule is Rule.ENV_ERROR for f in findings),
        notes=tuple(notes + [str(n) for n in answer.get("notes", [])]),
        seal=str(seal) if seal is not None else None,
        site_dirs=tuple(answer.get("layout", {}).get("site_dirs", [])),
    )


def _result(running: Running, findings: list[Finding]) -> dict[str, Any]:
    try:
        return running.result()
    except ProbeFailed as exc:
        findings.append(Finding(Rule.ENV_ERROR, Severity.HIGH, str(exc), Location(running.exe)))
        return {}


def _with_seal(
    exe: str,
    path: Path,
    public: keys.PublicKey | None,
    request: dict[str, Any],
    findings: list[Finding],
    notes: list[str],
    progress: Progress | None,
) -> dict[str, Any] | None:
    """Start the probe on the seal's entries at once and check the root and signature
    while it works (both take a while on a big environment). A seal that fails is
    reported and the probe's work on it thrown away: the caller runs again without it."""
    try:
        sealed = sealfile.load(path)
    except sealfile.SealProblem as exc:
        _seal_invalid(path, str(exc), public, findings, notes)
        return None
    except OSError as exc:
        where = Location(str(path))
        findings.append(Finding(Rule.ENV_ERROR, Severity.HIGH, f"cannot read seal: {exc}", where))
        return None
    request["seal"] = {
        "path": str(path),
        "roots": list(sealed.header.get("roots", [])),
        "files": list(sealed.header.get("files", [])),
    }
    running = start_probe(exe, request, sealed.entry_lines, progress)
    try:
        _, seal_notes = sealed.check(public)
    except sealfile.SealProblem as exc:
        running.kill()
        _seal_invalid(path, str(exc), public, findings, notes)
        return None
    notes += seal_notes
    sealed_python = sealed.header.get("python")
    if sealed_python and sealed_python != exe:
        notes.append(f"the seal was made for {sealed_python}")
    return _result(running, findings)


def _seal_invalid(
    path: Path, why: str, public: keys.PublicKey | None, findings: list[Finding], notes: list[str]
) -> None:
    key_id = keys.fingerprint(public) if public else None
    findings.append(
        Finding(Rule.ENV_SEAL_INVALID, Severity.CRITICAL, why, Location(str(path)), {"key": key_id})
    )
    notes.append("the seal was not used: it failed verification")


def _order(f: Finding) -> tuple[int, str, str, str]:
    return (-int(f.severity), f.rule.value, f.location.path, f.location.member or "")


def findings_from(raw: list[dict[str, Any]]) -> list[Finding]:
    """Probe dicts to ``Finding`` objects; a rule the parent does not know is an error."""
    out: list[Finding] = []
    for d in raw:
        try:
            rule = Rule(d["rule"])
            severity = Severity.parse(d["severity"])
        except (KeyError, ValueError):
            rule, severity = Rule.ENV_ERROR, Severity.HIGH
        out.append(
            Finding(
                rule,
                severity,
                str(d.get("message", "")),
                Location(str(d.get("path", "")), member=d.get("member")),
                dict(d.get("evidence") or {}),
            )
        )
    return out


def _public_key(key: PublicKeySource | None) -> keys.PublicKey | None:
    if key is None:
        return None
    if isinstance(key, str | os.PathLike | bytes):
        return keys.load_public_key(key)
    return key
