"""Result types shared by every feature: severities, rule ids, findings and verdicts.

All result types are frozen. A finding always carries a stable ``rule`` id (the alert ids
of docs/threats.md), a severity, a message, a location and evidence. "Could not check" is a
finding of its own (``scan.error``), never silence.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Alert",
    "FileResult",
    "Finding",
    "GlobalRecord",
    "Location",
    "Rule",
    "ScanReport",
    "Severity",
    "Verdict",
]


class Severity(enum.IntEnum):
    """Ordered severity. The only place it maps to verdicts, SARIF levels and scores."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Severity:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(s.label for s in cls)
            raise ValueError(f"unknown severity {text!r} (choose from {choices})") from None

    @property
    def sarif_level(self) -> str:
        if self >= Severity.HIGH:
            return "error"
        if self >= Severity.MEDIUM:
            return "warning"
        return "note"

    @property
    def security_severity(self) -> str:
        """CVSS-like score used by code-scanning UIs (GitHub reads ``security-severity``)."""
        return {0: "0.0", 1: "2.0", 2: "5.0", 3: "8.0", 4: "9.8"}[int(self)]


class Rule(enum.StrEnum):
    """Stable rule / alert ids. Users script against these strings; never rename one."""

    CODE_EXECUTION = "scan.code_execution"
    UNKNOWN_GLOBAL = "scan.unknown_global"
    UNKNOWN_FORMAT = "scan.unknown_format"
    MALFORMED = "scan.malformed"
    CONTAINER_ANOMALY = "scan.container_anomaly"
    DIFFERENTIAL = "scan.differential"
    """Two real loaders would read different bytes (or different objects) from one file."""
    PATH_TRAVERSAL = "scan.path_traversal"
    TEMPLATE_INJECTION = "scan.template_injection"
    POLICY_EXPIRED = "scan.policy_expired"
    ERROR = "scan.error"
    LOAD_BLOCKED = "load.blocked"
    SUSPICIOUS_CALL = "runtime.suspicious_call"
    ENV_FILE_MODIFIED = "env.file_modified"
    ENV_FILE_ADDED = "env.file_added"
    ENV_FILE_MISSING = "env.file_missing"
    ENV_STARTUP_HOOK = "env.startup_hook"
    ENV_SEAL_INVALID = "env.seal_invalid"
    ENV_ERROR = "env.error"
    CHECKPOINT_MODIFIED = "checkpoint.modified"
    CHECKPOINT_ADDED = "checkpoint.added"
    CHECKPOINT_MISSING = "checkpoint.missing"
    CHECKPOINT_UNSIGNED = "checkpoint.unsigned"
    CHECKPOINT_ERROR = "checkpoint.error"
    LEDGER_TAMPERED = "ledger.tampered"
    WEIGHT_TAMPER = "runtime.weight_tamper"
    REPLICA_DIVERGENCE = "runtime.replica_divergence"
    UPDATE_MISMATCH = "runtime.update_mismatch"
    OPTIMIZER_TAMPER = "runtime.optimizer_tamper"
    RNG_RESEED = "runtime.rng_reseed"
    DATA_ORDER = "runtime.data_order"
    MONKEYPATCH = "runtime.monkeypatch"
    PROCESS_SIGNAL = "process.signal"
    PROCESS_KILLED = "process.killed"
    PROCESS_HANG = "process.hang"
    PROCESS_STRAGGLER = "process.straggler"
    GUARD_MISSING = "guard.missing"
    GUARD_ERROR = "guard.error"
    TRAINING_ANOMALY = "training.anomaly"
    REPLAY_DIVERGENCE = "replay.divergence"
    GRADIENT_DIVERGENCE = "runtime.gradient_divergence"
    DATA_CONTENT = "runtime.data_content"
    GUARD_AUTHORIZATION = "guard.authorization"

    def __str__(self) -> str:
        return self.value


class Verdict(enum.StrEnum):
    """Per-file verdict. ``error`` means the file could not be judged completely."""

    SAFE = "safe"
    SUSPICIOUS = "suspicious"
    UNSAFE = "unsafe"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class Location:
    """Where a finding is: the file, a member path inside containers, a byte offset."""

    path: str
    member: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        text = self.path
        if self.member:
            text += f"!{self.member}"
        if self.offset is not None:
            text += f"@{self.offset}"
        return text

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "member": self.member, "offset": self.offset}


@dataclass(frozen=True, slots=True)
class Finding:
    rule: Rule
    severity: Severity
    message: str
    location: Location
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule.value,
            "severity": self.severity.label,
            "message": self.message,
            "location": self.location.to_json(),
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """A finding raised while a job runs: the finding plus when (step, wall time) and which
    process (rank, pid) saw it."""

    finding: Finding
    step: int | None
    rank: int | None
    pid: int
    time: float

    @property
    def rule(self) -> Rule:
        return self.finding.rule

    @property
    def severity(self) -> Severity:
        return self.finding.severity

    def to_json(self) -> dict[str, Any]:
        return {
            **self.finding.to_json(),
            "step": self.step,
            "rank": self.rank,
            "pid": self.pid,
            "time": self.time,
        }


def verdict_of(findings: Iterable[Finding], complete: bool) -> Verdict:
    """The single mapping from findings to a verdict.

    A file that could not be read to the end is ``error`` unless what was read already
    proves it unsafe (a payload before the garbage still runs in the real loader).
    """
    worst = max((f.severity for f in findings if f.rule is not Rule.ERROR), default=None)
    if worst is not None and worst >= Severity.HIGH:
        return Verdict.UNSAFE
    if not complete:
        return Verdict.ERROR
    if worst is not None and worst >= Severity.MEDIUM:
        return Verdict.SUSPICIOUS
    return Verdict.SAFE


@dataclass(frozen=True, slots=True)
class GlobalRecord:
    """One global that a pickle stream references, and how the policy judged it.

    ``module``/``qualname`` are as written in the stream (what ``find_class`` receives);
    ``name`` is the canonical ``module.qualname`` the policy judged.
    """

    name: str
    module: str
    qualname: str
    member: str | None
    use: str
    status: str
    reason: str
    offset: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "written": f"{self.module}.{self.qualname}",
            "member": self.member,
            "use": self.use,
            "status": self.status,
            "reason": self.reason,
            "offset": self.offset,
        }


@dataclass(frozen=True, slots=True)
class FileResult:
    """The outcome of scanning one file (with everything nested inside it)."""

    path: str
    format: str
    verdict: Verdict
    findings: tuple[Finding, ...]
    complete: bool
    bytes_read: int = 0
    members: tuple[str, ...] = ()
    globals: tuple[GlobalRecord, ...] = ()
    """Every global referenced by every pickle stream in the file (see ``--explain``)."""

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        extra = {"globals": [g.to_json() for g in self.globals]} if explain else {}
        return {
            "path": self.path,
            "format": self.format,
            "verdict": self.verdict.value,
            "complete": self.complete,
            "bytes_read": self.bytes_read,
            "members": list(self.members),
            "findings": [f.to_json() for f in self.findings],
            **extra,
        }


@dataclass(frozen=True, slots=True)
class ScanReport:
    files: tuple[FileResult, ...]
    seconds: float = 0.0

    def count(self, verdict: Verdict) -> int:
        return sum(1 for f in self.files if f.verdict is verdict)

    @property
    def has_error(self) -> bool:
        return any(not f.complete for f in self.files)

    def summary(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            **{v.value: self.count(v) for v in Verdict},
            "findings": sum(len(f.findings) for f in self.files),
            "seconds": round(self.seconds, 4),
        }

    def to_json(self, *, explain: bool = False) -> dict[str, Any]:
        return {
            "files": [f.to_json(explain=explain) for f in self.files],
            "summary": self.summary(),
        }
