"""One ledger record, and the exact bytes that the Merkle tree commits to.

A record's leaf is its canonical JSON (RFC 8785), so the same record gives the same bytes
on every machine and a verifier can recompute every hash from what is stored. The
record's ``seq`` is inside the leaf: moving a record to another position changes what
that position commits to, which is how reordering is found.

Evidence is free-form, so it is made JSON-safe on the way in (numbers JCS cannot hold
exactly and non-JSON objects become strings): an alert must never be lost because its
evidence carried a ``numpy.float32`` or a ``Path``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trainguard.env import canonical
from trainguard.findings import Finding, Rule, Severity

__all__ = ["Kind", "Record", "alert_record", "event_record", "jsonable"]

Kind = Literal["event", "alert"]
_MAX_INT = 2**53 - 1
_MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class Record:
    """An event or alert. ``seq`` and ``time`` are assigned by the ledger inside the
    append transaction (0 and "" until then); ``host``/``pid``/``uid`` name the writer."""

    kind: Kind
    message: str
    severity: str = "info"
    alert: str | None = None
    step: int | None = None
    rank: int | None = None
    evidence: Mapping[str, Any] = field(default_factory=dict)
    seq: int = 0
    time: str = ""
    host: str = ""
    pid: int = 0
    uid: int | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON contract of ``trainguard ledger show --format json``."""
        return {
            "seq": self.seq,
            "time": self.time,
            "kind": self.kind,
            "alert": self.alert,
            "severity": self.severity,
            "host": self.host,
            "pid": self.pid,
            "uid": self.uid,
            "rank": self.rank,
            "step": self.step,
            "message": self.message,
            "evidence": dict(self.evidence),
        }

    def leaf(self) -> bytes:
        """The canonical bytes stored and hashed for this record."""
        obj = self.to_json()
        try:  # the same bytes as RFC 8785 for what it accepts (no floats), ~10x faster
            return canonical.fallback_dumps(obj)
        except ValueError:
            pass
        try:
            return canonical.dumps(obj)
        except ValueError:  # no rfc8785 installed: floats are kept as their text
            return canonical.dumps(jsonable(obj, floats=False))

    @classmethod
    def from_leaf(cls, data: bytes) -> Record:
        """Parse stored leaf bytes; raises ``ValueError`` on anything not a record."""
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("a record is a JSON object")
        kind = obj.get("kind")
        if kind not in ("event", "alert"):
            raise ValueError(f"unknown record kind {kind!r}")
        evidence = obj.get("evidence")
        seq, pid = obj.get("seq"), obj.get("pid")
        if not isinstance(seq, int) or not isinstance(pid, int):
            raise ValueError("seq and pid must be integers")
        if not isinstance(evidence, dict):
            raise ValueError("evidence must be an object")
        return cls(
            kind=kind,
            message=str(obj.get("message", "")),
            severity=str(obj.get("severity", "info")),
            alert=_opt_str(obj.get("alert")),
            step=_opt_int(obj.get("step")),
            rank=_opt_int(obj.get("rank")),
            evidence=evidence,
            seq=seq,
            time=str(obj.get("time", "")),
            host=str(obj.get("host", "")),
            pid=pid,
            uid=_opt_int(obj.get("uid")),
        )


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _opt_int(v: Any) -> int | None:
    if v is None or (isinstance(v, int) and not isinstance(v, bool)):
        return v
    raise ValueError(f"expected an integer or null, not {v!r}")


def event_record(
    message: str,
    *,
    step: int | None = None,
    rank: int | None = None,
    severity: Severity | str = Severity.INFO,
    evidence: Mapping[str, Any] | None = None,
) -> Record:
    return Record(
        kind="event",
        message=_text(str(message)),
        severity=_severity(severity),
        step=step,
        rank=rank,
        evidence=jsonable(dict(evidence or {})),
    )


def alert_record(
    finding: Finding | Rule | str,
    *,
    message: str | None = None,
    severity: Severity | str | None = None,
    step: int | None = None,
    rank: int | None = None,
    evidence: Mapping[str, Any] | None = None,
) -> Record:
    """An alert from a ``Finding`` (its rule, severity, message, location and evidence)
    or from a bare rule id, which then needs a ``message``."""
    extra = dict(evidence or {})
    if isinstance(finding, Finding):
        alert = finding.rule.value
        sev = severity if severity is not None else finding.severity
        text = message if message is not None else finding.message
        merged = {**dict(finding.evidence), **extra, "location": finding.location.to_json()}
    else:
        alert = _text(str(finding))
        if message is None:
            raise ValueError("an alert from a rule id needs a message")
        sev = severity if severity is not None else Severity.HIGH
        text = message
        merged = extra
    return Record(
        kind="alert",
        message=_text(str(text)),
        severity=_severity(sev),
        alert=alert,
        step=step,
        rank=rank,
        evidence=jsonable(merged),
    )


def _severity(value: Severity | str) -> str:
    if isinstance(value, Severity):
        return value.label
    return Severity.parse(value).label


def jsonable(obj: Any, *, floats: bool = True, _depth: int = 0) -> Any:
    """``obj`` as plain JSON that canonicalisation accepts, never raising. With
    ``floats=False`` non-integral floats become their ``repr`` text."""
    if _depth > _MAX_DEPTH:
        return _text(repr(obj)[:200])
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, str):
        return _text(obj)
    if isinstance(obj, int):
        return obj if abs(obj) <= _MAX_INT else str(obj)
    if isinstance(obj, float):
        if obj.is_integer() and abs(obj) <= _MAX_INT:
            return int(obj)
        return obj if floats and math.isfinite(obj) else repr(obj)
    if isinstance(obj, Mapping):
        return {
            _text(str(k)): jsonable(v, floats=floats, _depth=_depth + 1) for k, v in obj.items()
        }
    if isinstance(obj, list | tuple | set | frozenset):
        return [jsonable(v, floats=floats, _depth=_depth + 1) for v in obj]
    if isinstance(obj, os.PathLike):
        return _text(str(os.fspath(obj)))
    item = getattr(obj, "item", None)  # numpy / torch scalars, without importing either
    if callable(item):
        try:
            return jsonable(item(), floats=floats, _depth=_depth + 1)
        except (TypeError, ValueError, RuntimeError):
            pass
    return _text(str(obj))


def _text(s: str) -> str:
    """Lone surrogates (undecodable file names) cannot be UTF-8: escape them."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return s.encode("utf-8", "backslashreplace").decode("utf-8")
    return s
