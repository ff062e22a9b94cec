"""Results of ``env verify`` and ``env seal``, and the one mapping to exit codes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from trainguard import exit_codes
from trainguard.errors import IntegrityError
from trainguard.findings import Finding, Rule, Severity

__all__ = ["Checked", "EnvReport", "SealInfo", "SealRefused", "exit_code"]


@dataclass(frozen=True, slots=True)
class Checked:
    """What was looked at, so that "nothing found" can be told apart from "nothing done"."""

    distributions: int = 0
    record_files: int = 0
    """RECORD entries with a hash, compared with the bytes on disk."""
    pyc: int = 0
    """``.pyc`` files compiled from their source and compared."""
    pyc_vouched_by_seal: int = 0
    """``.pyc`` files whose bytes, and whose source's bytes, match the seal."""
    pyc_cached: int = 0
    """``.pyc`` files hashed, with their source, to a verdict the cache holds (not compiled)."""
    site_files: int = 0
    pth: int = 0
    sealed: int = 0
    wheels: int = 0
    files_hashed: int = 0
    bytes_hashed: int = 0
    skipped_by_hint: int = 0
    """``fast`` only: files that are not code, trusted because size/mtime/inode matched."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Checked:
        names = {f.name for f in fields(cls)}
        return cls(**{k: int(v) for k, v in data.items() if k in names})

    def to_json(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class EnvReport:
    findings: tuple[Finding, ...]
    checked: Checked
    seconds: float
    python: str
    complete: bool
    """False when something could not be checked (an ``env.error`` finding says what)."""
    notes: tuple[str, ...] = ()
    """What the run did not do or trusted (``fast`` hints, an unchecked signature, ...)."""
    seal: str | None = None
    site_dirs: tuple[str, ...] = ()

    @property
    def tampered(self) -> bool:
        return any(
            f.rule is not Rule.ENV_ERROR and f.severity > Severity.INFO for f in self.findings
        )

    def summary(self) -> dict[str, Any]:
        return {
            "python": self.python,
            "intact": not self.tampered and self.complete,
            "complete": self.complete,
            "findings": len(self.findings),
            "by_rule": dict(sorted(Counter(f.rule.value for f in self.findings).items())),
            "checked": self.checked.to_json(),
            "notes": list(self.notes),
            "seal": self.seal,
            "site_dirs": list(self.site_dirs),
            "seconds": round(self.seconds, 4),
        }

    def to_json(self) -> dict[str, Any]:
        return {"findings": [f.to_json() for f in self.findings], "summary": self.summary()}


@dataclass(frozen=True, slots=True)
class SealInfo:
    path: str
    root: str
    """Hex RFC 6962 Merkle root over the header and entry lines."""
    entries: int
    signed: bool
    key_id: str | None
    seconds: float
    report: EnvReport
    """The checks run before sealing: a seal only vouches for a verified environment."""

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "root": self.root,
            "entries": self.entries,
            "signed": self.signed,
            "key_id": self.key_id,
            "seconds": round(self.seconds, 4),
            "report": self.report.to_json(),
        }


def exit_code(report: EnvReport) -> int:
    """0 intact, 1 tampering found, 2 something could not be checked (2 wins, as in
    ``scan``: an incomplete check proves nothing either way)."""
    if not report.complete:
        return exit_codes.ERROR
    if report.tampered:
        return exit_codes.FINDINGS
    return exit_codes.OK


class SealRefused(IntegrityError):
    """``seal()`` found tampering (or could not finish its checks) and wrote nothing."""

    def __init__(self, message: str, report: EnvReport) -> None:
        super().__init__(message)
        self.report = report
