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
from trainguard.env import distro, environ, sealfile, venvcfg, verdicts
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
    wheels: bool = False,
    fast: bool = False,
    workers: int | None = None,
    distributions: Sequence[str] | None = None,
    record_only: bool = False,
    ignore: Collection[str] = (),
    environment: dict[str, str] | None = None,
    progress: Progress | None = None,
    pyc_cache: Path | None = None,
) -> EnvReport:
    """Check the environment of ``python`` (default: this interpreter).

    Always: every distribution's files against its RECORD, files no RECORD lists,
    ``.pyc`` files against their sources, start-up hooks (``.pth`` code,
    ``sitecustomize``, auto-loaded entry points, stdlib shadowing, environment), and
    ``pyvenv.cfg`` with the interpreter and standard library it points at (``venvcfg``).
    With ``seal``: every sealed file (standard library, interpreter and venv ``bin/``
    included), added or removed file, mode and owner, and the standard library's
    location, with the seal's root and (given ``key``) signature checked first. With
    ``wheelhouse``: RECORDs against the wheels. ``wheels`` (without ``wheelhouse``): the
    same against the wheels of each installed name and version, fetched from the
    configured package index into the state folder (``fetch``). ``pyc_cache`` (a file in the user's
    state folder, see ``verdicts``) spares compiling a ``.pyc`` whose exact bytes and
    source were judged before. ``distributions``/``record_only`` narrow the run
    (benchmarks, quick checks) and skip the whole-environment checks. ``ignore`` names
    environment variables (or ``/etc/ld.so.preload``) not to report. Findings are data;
    only bad arguments raise (``ConfigError``).

    *What it trusts* without a seal: each RECORD as the authority on its own files (an
    insider who rewrites a file and its RECORD row passes), and the standard library as
    its package manager's manifest lists it (``distro``: dpkg, conda), or as found where
    there is none. A seal moves that trust to the moment of sealing; ``wheels`` moves it to the
    package index.
    """
    start = time.perf_counter()
    if wheelhouse is not None and not Path(wheelhouse).is_dir():
        raise ConfigError(f"wheelhouse {wheelhouse} is not a directory")
    env = dict(os.environ if environment is None else environment)
    exe = python or sys.executable
    findings: list[Finding] = []
    notes: list[str] = []
    if wheels and wheelhouse is None:
        from trainguard.env.fetch import fetch_wheels

        fetched = fetch_wheels(exe)
        wheelhouse = fetched.wheelhouse
        if fetched.missing:
            notes.append(
                f"no wheel on the package index for {len(fetched.missing)} distribution(s), "
                f"so their RECORD is their only witness: {', '.join(fetched.missing)}"
            )
        notes += [f"fetching wheels: {p}" for p in fetched.problems[:5]]
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
    cached, cache_ok = _load_cache(pyc_cache, request, notes)
    answer: dict[str, Any] | None = None
    header: dict[str, Any] = {}
    if seal is not None:
        answer = _with_seal(
            exe, Path(seal), _public_key(key), request, findings, notes, progress, header
        )
    elif fast:
        notes.append("fast has no effect without a seal: every file was hashed")
    elif key is not None:
        notes.append("a key has no effect without a seal")
    if answer is None:
        request["seal"] = None
        answer = _result(start_probe(exe, request, b"", progress), findings)
    layout = answer.get("layout", {})
    if not distributions and not record_only:
        findings += environ.check(env, ignore)
        if layout:
            findings += venvcfg.check(exe, layout.get("stdlib_dirs", []))
            if seal is None:  # with a seal, the seal covers the standard library
                found, said = distro.check(layout.get("stdlib_dirs", []))
                findings += found
                notes += said
            findings += _moved(exe, header, layout, seal)
    findings += findings_from(answer.get("findings", []))
    if cache_ok and pyc_cache is not None and isinstance(answer.get("pyc_ok"), str):
        problem = verdicts.save(pyc_cache, bytes.fromhex(answer["pyc_ok"]), cached)
        if problem:
            notes.append(problem)
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


def _load_cache(path: Path | None, request: dict[str, Any], notes: list[str]) -> tuple[bytes, bool]:
    """Put the verdict cache into ``request``; returns its keys and whether it is used."""
    if path is None:
        return b"", False
    cached, problem = verdicts.load(Path(path))
    if problem is not None:
        notes.append(problem)
        return b"", False
    request["pyc_cache"] = cached.hex()
    return cached, True


def _moved(
    exe: str, header: dict[str, Any], layout: dict[str, Any], seal: Path | None
) -> list[Finding]:
    """The standard library or the interpreter binary is not where the seal found them:
    the seal diff lists thousands of files, this says why (seals from before this check
    do not record either)."""
    out: list[Finding] = []
    pairs = (
        ("stdlib_dirs", sorted(os.path.realpath(d) for d in layout.get("stdlib_dirs", []))),
        ("interpreter", os.path.realpath(exe)),
    )
    for name, now in pairs:
        was = header.get(name)
        if was is not None and was != now:
            out.append(
                Finding(
                    Rule.ENV_STARTUP_HOOK,
                    Severity.CRITICAL,
                    f"the {name.replace('_', ' ')} changed since the seal: {was} -> {now}",
                    Location(str(seal), member=name),
                    {"sealed": was, "now": now},
                )
            )
    return out


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
    header: dict[str, Any],
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
    header.update(sealed.header)
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
