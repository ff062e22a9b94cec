"""``verify_anchored()``: what ``trainguard run`` checks an environment against, by default.

RECORD is never the only authority: whoever can edit ``torch/optim/adamw.py`` can write its
new hash into RECORD. So the environment is verified against a seal, chosen in this order:

1. **pinned**: a seal an admin gives (``--seal``). Signed (``--seal-key``): the key decides.
   Unsigned: only a file no one else could have written (``state.why_unsafe``) is used.
2. **first use**: the seal of this interpreter in the user's state folder
   (``state.state_dir()/env-seals/``), made by the first run that found nothing wrong.
   *Trust on first use, said plainly:* that first run trusts the environment as it found
   it; a file rewritten together with its RECORD row before then is sealed as good. Every
   later run is checked against that moment, standard library and interpreter included.
   A seal file or folder that someone else could write is refused (``env.seal_invalid``)
   and the run falls back to RECORD.
3. **RECORD only**, when no seal can be used; the result says so.

``.pyc`` verdicts are cached in the same folder (``verdicts``), so a seal-less check costs
about one hash of the files. To accept a deliberate change, seal again:
``trainguard env seal --first-use --python PY``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from trainguard import keys
from trainguard.env import environ, sealfile
from trainguard.env.baseline import seal
from trainguard.env.check import Progress, verify
from trainguard.env.report import EnvReport, SealRefused
from trainguard.env.state import ensure_private_dir, state_dir, why_unsafe
from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["Anchored", "first_use_path", "verdict_cache_path", "verify_anchored"]


@dataclass(frozen=True, slots=True)
class Anchored:
    """A verify and what it was anchored to."""

    report: EnvReport
    anchor: str
    """``pinned``, ``first-use``, ``first-use-sealed-now`` or ``record``."""
    trust: str
    """What this run had to take on trust, in plain words (recorded and shown)."""
    seal: Path | None = None
    root: str | None = None
    """The seal's Merkle root (hex), recorded so a swapped seal shows between runs."""


def first_use_path(python: str, state: Path | None = None) -> Path:
    """Where the first-use seal of ``python`` lives: one per interpreter path as given (not
    resolved: every venv's ``python`` resolves to the same base binary)."""
    exe = os.path.abspath(python).encode("utf-8", "surrogateescape")
    name = hashlib.sha256(exe).hexdigest()[:24]
    return (state or state_dir()) / "env-seals" / f"{name}.seal"


def verdict_cache_path(state: Path | None = None) -> Path:
    return (state or state_dir()) / "pyc-verdicts.bin"


def verify_anchored(
    python: str,
    *,
    seal_path: Path | None = None,
    key: Path | None = None,
    state: Path | None = None,
    full: bool = False,
    ignore: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    say: Callable[[str], None] | None = None,
) -> Anchored:
    """Verify ``python``'s environment against a pinned seal, else its first-use seal
    (made now when there is none and the checks find nothing), else RECORD alone.
    ``full`` turns off the stat shortcut for files that are not code."""
    tell = say or (lambda _text: None)
    env = dict(os.environ if environment is None else environment)
    folder = state or state_dir(env)
    cache: Path | None = verdict_cache_path(folder)
    if ensure_private_dir(folder) is not None:
        cache = None  # the folder itself is judged below, where a seal would come from

    def check(**kw: Path | bool | None) -> EnvReport:
        return verify(
            python=python, ignore=tuple(ignore), environment=env, pyc_cache=cache,
            progress=progress, **kw,  # type: ignore[arg-type]
        )  # fmt: skip

    pre: list[Finding] = []
    if seal_path is not None:
        problem = None if key is not None else why_unsafe(seal_path)
        if problem is None:
            report = check(seal=seal_path, key=key, fast=not full)
            trust = _pinned_trust(seal_path, key)
            return Anchored(report, "pinned", trust, seal_path, _created_and_root(seal_path)[1])
        pre.append(_refused(seal_path, problem, "the pinned seal"))
        tell(f"the seal {seal_path} is not used: {problem} (sign it and give its key)")
    else:
        path = first_use_path(python, folder)
        problem = ensure_private_dir(path.parent)
        if problem is None and os.path.lexists(path):
            problem = why_unsafe(path)
            if problem is None:
                report = check(seal=path, fast=not full)
                created, root = _created_and_root(path)
                trust = (
                    f"the environment as the first run found it on {created} (trust on "
                    f"first use: a change made before then is part of the seal {path})"
                )
                return Anchored(report, "first-use", trust, path, root)
            pre.append(_refused(path, problem, "the first-use seal"))
            tell(f"the first-use seal {path} is not used: {problem}")
        elif problem is None:
            return _seal_first(python, path, cache, env, ignore, progress, tell)
        else:
            pre.append(
                Finding(
                    Rule.ENV_ERROR,
                    Severity.HIGH,
                    f"no first-use seal can be kept in {path.parent}: {problem}",
                    Location(str(path.parent)),
                )
            )
            tell(f"no first-use seal: {problem}")
    report = check()
    report = replace(report, findings=tuple(pre) + report.findings)
    trust = "each distribution's RECORD as the authority on its own files (no usable seal)"
    return Anchored(report, "record", trust)


def _seal_first(
    python: str,
    path: Path,
    cache: Path | None,
    env: dict[str, str],
    ignore: Sequence[str],
    progress: Progress | None,
    tell: Callable[[str], None],
) -> Anchored:
    tell(
        f"trust on first use: no seal of {python} yet, so this run checks it (RECORD, "
        "every .pyc, start-up hooks) and, if nothing is wrong, seals it as it is now into "
        f"{path}; this run trusts the environment as found, later runs are checked "
        "against this seal"
    )
    pythonpath = env.get("PYTHONPATH") if "PYTHONPATH" not in ignore else None
    environment_findings = tuple(environ.check(env, ignore))
    try:
        info = seal(path, python=python, pyc_cache=cache, progress=progress, pythonpath=pythonpath)
    except SealRefused as exc:
        report = exc.report
        tell("not sealed: the checks found problems (fix them, or seal on purpose)")
        trust = "each distribution's RECORD as the authority on its own files (not sealed)"
        findings = environment_findings + report.findings
        return Anchored(replace(report, findings=findings), "record", trust)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o400)  # a slip of the user's own hand should not edit it
    findings = environment_findings + info.report.findings
    report = replace(info.report, seal=str(path), findings=findings)
    trust = (
        f"the environment as it is now (trust on first use: sealed into {path}; a file "
        "rewritten together with its RECORD row before now is sealed as good)"
    )
    return Anchored(report, "first-use-sealed-now", trust, path, info.root)


def _pinned_trust(path: Path, key: Path | None) -> str:
    if key is None:
        return f"the seal {path} as its owner wrote it (unsigned; no one else can write it)"
    try:
        key_id = keys.fingerprint(keys.load_public_key(key))
    except Exception:  # noqa: BLE001 - the verify has reported a bad key already
        key_id = str(key)
    return f"the seal {path}, signed by key {key_id}"


def _created_and_root(path: Path) -> tuple[str, str | None]:
    try:
        sealed = sealfile.load(path)
    except (OSError, sealfile.SealProblem):
        return "?", None
    return str(sealed.header.get("created", "?")), str(sealed.footer.get("merkle_root"))


def _refused(path: Path, problem: str, what: str) -> Finding:
    return Finding(
        Rule.ENV_SEAL_INVALID,
        Severity.CRITICAL,
        f"{what} is not used: {problem}; anyone who can write it can make tampering pass",
        Location(str(path)),
        {"why": problem},
    )
