"""``seal()``: record every importable or loadable file of an environment, once verified.

The probe runs the same checks as ``verify`` (and compile-checks every ``.pyc`` on the
path, standard library included, which a RECORD check cannot vouch for) before it lists
the files: a seal of a tampered environment would bless the tampering, so findings stop
the seal unless the caller accepts them.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainguard import keys
from trainguard.env import sealfile, venvcfg, verdicts
from trainguard.env.check import Progress, findings_from
from trainguard.env.report import Checked, EnvReport, SealInfo, SealRefused
from trainguard.env.spawn import run_probe
from trainguard.findings import Rule

__all__ = ["PrivateKeySource", "seal"]

PrivateKeySource = str | os.PathLike[str] | keys.PrivateKey


def seal(
    out: Path,
    *,
    python: str | None = None,
    key: PrivateKeySource | None = None,
    workers: int | None = None,
    allow_findings: bool = False,
    stdlib_pyc: bool = True,
    progress: Progress | None = None,
    pyc_cache: Path | None = None,
    pythonpath: str | None = None,
) -> SealInfo:
    """Verify the environment of ``python``, then write its seal to ``out``.

    ``key`` (an Ed25519 private key or its PEM file, which must be private to its owner)
    signs the seal's root. Raises ``SealRefused`` (an ``IntegrityError``) when the
    checks find tampering or cannot finish, unless ``allow_findings``; the error's
    ``report`` says what was found. ``stdlib_pyc=False`` skips compiling the standard
    library's ``.pyc`` files before sealing (they are sealed as found). ``pyc_cache`` as
    for ``verify``; ``pythonpath`` (the ``PYTHONPATH`` the environment will run with) adds
    its folders to the start-up hook check. The header records where the standard
    library and the interpreter binary are, so a later verify names a move rather than
    listing every file.

    *What it trusts:* the environment as it is now, for everything the checks before
    sealing cannot judge (a file and its RECORD row rewritten together, a standard
    library edited in place). Every later verify against the seal trusts this moment.
    """
    start = time.perf_counter()
    private = key if key is None or not isinstance(key, str | os.PathLike) else None
    if isinstance(key, str | os.PathLike):
        private = keys.load_private_key(key)
    exe = python or sys.executable
    request: dict[str, Any] = {
        "mode": "seal",
        "workers": workers or os.cpu_count() or 2,
        "distributions": None,
        "record_only": False,
        "wheelhouse": None,
        "fast": False,
        "pythonpath": pythonpath,
        "progress": progress is not None,
        "seal": None,
        "stdlib_pyc": stdlib_pyc,
    }
    cached = b""
    notes: list[str] = []
    if pyc_cache is not None:
        cached, problem = verdicts.load(Path(pyc_cache))
        if problem is None:
            request["pyc_cache"] = cached.hex()
        else:
            notes.append(problem)
    answer = run_probe(python, request, b"", progress)
    layout = answer.get("layout", {})
    stdlib_dirs = layout.get("stdlib_dirs", [])
    found = findings_from(answer.get("findings", [])) + venvcfg.check(exe, stdlib_dirs)
    findings = tuple(found)
    if "pyc_cache" in request and isinstance(answer.get("pyc_ok"), str):
        problem = verdicts.save(Path(pyc_cache or ""), bytes.fromhex(answer["pyc_ok"]), cached)
        if problem:
            notes.append(problem)
    report = EnvReport(
        findings=findings,
        checked=Checked.from_json(answer.get("checked", {})),
        seconds=time.perf_counter() - start,
        python=exe,
        complete=not any(f.rule is Rule.ENV_ERROR for f in findings),
        notes=tuple(notes + [str(n) for n in answer.get("notes", [])]),
        site_dirs=tuple(answer.get("layout", {}).get("site_dirs", [])),
    )
    if (report.tampered or not report.complete) and not allow_findings:
        raise SealRefused(
            f"not sealing {exe}: the environment check found {len(findings)} problem(s)",
            report,
        )
    inventory = answer["seal"]
    header = {
        "format": sealfile.FORMAT,
        "version": sealfile.VERSION,
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "host": socket.gethostname(),
        "python": exe,
        "python_version": layout.get("version"),
        "interpreter": os.path.realpath(exe),
        "stdlib_dirs": sorted(os.path.realpath(d) for d in stdlib_dirs),
        "roots": inventory["roots"],
        "files": inventory["files"],
        "entries": len(inventory["entries"]),
        "findings_accepted": len(findings),
    }
    root, key_id = sealfile.write(Path(out), header, inventory["entries"], private)
    return SealInfo(
        path=str(out),
        root=root,
        entries=len(inventory["entries"]),
        signed=private is not None,
        key_id=key_id,
        seconds=time.perf_counter() - start,
        report=report,
    )
