"""The report model: what a ledger says, gathered once for every renderer.

The terminal, HTML and JSON reports must agree, so they all read this frozen model and
none of them reads records. It is also the one place that meets untrusted input: anyone
who can append to a ledger can write any message and any evidence, of any type. Evidence
of the wrong shape is coerced here (to ``None`` or empty) instead of crashing the report
of a job an attacker wanted to hide; strings are kept as written, and escaping them is
each renderer's job.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainguard.errors import VerificationError
from trainguard.findings import Severity
from trainguard.ledger import Record, import_jsonl, read_records, verify
from trainguard.ledger.store import Where, describe, location

__all__ = [
    "AlertRow",
    "CheckpointRow",
    "Curve",
    "EnvCheck",
    "EventRow",
    "GuardRow",
    "Item",
    "ProcessExit",
    "ReportModel",
    "RunRow",
    "ScanRow",
    "Verification",
    "build",
    "from_records",
    "short_time",
    "visible",
]


@dataclass(frozen=True, slots=True)
class Item:
    """A finding carried inside an event's evidence (env, scan, checkpoint, ledger)."""

    rule: str
    severity: Severity
    message: str
    location: str


@dataclass(frozen=True, slots=True)
class AlertRow:
    seq: int
    time: str
    rank: int | None
    step: int | None
    rule: str
    severity: Severity
    message: str
    host: str
    pid: int
    evidence: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class EventRow:
    """Any event but metrics (those become ``Curve``s): the timeline's grey marks."""

    seq: int
    time: str
    rank: int | None
    step: int | None
    name: str
    message: str


@dataclass(frozen=True, slots=True)
class Curve:
    """One rank's metrics, by step; ``None`` where a value was missing or not finite."""

    rank: int | None
    steps: tuple[int, ...]
    loss: tuple[float | None, ...]
    grad_norm: tuple[float | None, ...]
    """Before clipping, as ``clip_grad_norm_`` measured it (else the applied norm)."""
    step_time: tuple[float | None, ...]
    clip: tuple[float | None, ...] = ()
    """The clip threshold at each step (``None``: no clip seen)."""


@dataclass(frozen=True, slots=True)
class EnvCheck:
    seq: int
    time: str
    ok: bool | None
    files: int | None
    seconds: float | None
    findings: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class CheckpointRow:
    seq: int
    time: str
    action: str  # "saved" | "verified"
    path: str
    digest: str | None
    ok: bool | None
    findings: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class ScanRow:
    seq: int
    time: str
    path: str
    verdict: str
    findings: tuple[Item, ...]


@dataclass(frozen=True, slots=True)
class RunRow:
    seq: int
    time: str
    action: str  # "started" | "exited"
    command: str
    exit_code: int | None
    signal: str | None


@dataclass(frozen=True, slots=True)
class ProcessExit:
    seq: int
    time: str
    rank: int | None
    pid: int | None
    code: int | None
    signal: str | None


@dataclass(frozen=True, slots=True)
class GuardRow:
    """One rank's guard, from ``guard.started`` (and ``guard.stopped``, if it came)."""

    seq: int
    time: str
    rank: int | None
    checks: tuple[str, ...]
    every: int | None
    optimizer: str | None
    scheduler: str | None
    world_size: int | None
    parameters: int | None
    stopped: bool = False
    steps: int | None = None
    alerts: int | None = None


@dataclass(frozen=True, slots=True)
class Verification:
    """``ledger.verify`` as the report needs it; ``error`` when it could not run at all
    (which is shown as not intact: unverifiable history is not trusted history)."""

    intact: bool
    records: int
    heads: int
    heads_verified: int
    witness_heads: int
    findings: tuple[Item, ...]
    notes: tuple[str, ...]
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ReportModel:
    ledger: str
    generated: str
    verification: Verification
    records: int
    first_time: str | None
    last_time: str | None
    alerts: tuple[AlertRow, ...]
    events: tuple[EventRow, ...]
    curves: tuple[Curve, ...]
    guards: tuple[GuardRow, ...]
    runs: tuple[RunRow, ...]
    processes: tuple[ProcessExit, ...]
    env: tuple[EnvCheck, ...]
    checkpoints: tuple[CheckpointRow, ...]
    scans: tuple[ScanRow, ...]
    ranks: tuple[int | None, ...] = field(default=())

    @property
    def run_count(self) -> int:
        """Launcher runs; a ledger written by the Guard alone counts its rank-0 starts."""
        started = sum(1 for r in self.runs if r.action == "started")
        return started or sum(1 for g in self.guards if g.rank in (0, None))

    @property
    def max_step(self) -> int | None:
        steps = [s for c in self.curves for s in c.steps[-1:]]
        steps += [a.step for a in self.alerts if a.step is not None]
        steps += [g.steps for g in self.guards if g.steps is not None]
        return max(steps) if steps else None

    def severity_counts(self) -> dict[Severity, int]:
        counts = dict.fromkeys(Severity, 0)
        for a in self.alerts:
            counts[a.severity] += 1
        return counts

    def rule_counts(self) -> list[tuple[str, int, Severity]]:
        """(rule, count, worst severity), worst and most frequent first."""
        seen: dict[str, tuple[int, Severity]] = {}
        for a in self.alerts:
            n, worst = seen.get(a.rule, (0, Severity.INFO))
            seen[a.rule] = (n + 1, max(worst, a.severity))
        rows = [(rule, n, worst) for rule, (n, worst) in seen.items()]
        return sorted(rows, key=lambda r: (-r[2], -r[1], r[0]))

    def to_json(self) -> dict[str, Any]:
        """The document of ``trainguard report --format json``."""
        doc: dict[str, Any] = _plain(asdict(self))
        doc["runs_count"] = self.run_count
        doc["max_step"] = self.max_step
        doc["rule_counts"] = [
            {"rule": r, "count": n, "worst": s.label} for r, n, s in self.rule_counts()
        ]
        doc["severity_counts"] = {s.label: n for s, n in self.severity_counts().items()}
        return doc


def _plain(obj: Any) -> Any:
    if isinstance(obj, Severity):
        return obj.label
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


# -- building ----------------------------------------------------------------------------


def build(ledger: str | os.PathLike[str], *, public_key: Any = None) -> ReportModel:
    """Read and verify the ledger folder ``ledger`` (or a ``.jsonl`` export of one).
    Raises ``VerificationError`` only when there is no readable ledger there; tampering
    is part of the model."""
    where = location(ledger)
    records = _read(where)
    try:
        result = verify(ledger, public_key=public_key)
    except VerificationError as exc:
        checked = Verification(False, len(records), 0, 0, 0, (), (), error=str(exc))
    else:
        checked = Verification(
            intact=result.intact,
            records=result.records,
            heads=result.heads,
            heads_verified=result.heads_verified,
            witness_heads=result.witness_heads,
            findings=tuple(
                Item(f.rule.value, f.severity, f.message, str(f.location)) for f in result.findings
            ),
            notes=result.notes,
        )
    return from_records(records, checked, ledger=describe(where))


def _read(path: Where) -> list[Record]:
    if isinstance(path, Path) and path.is_file() and path.suffix == ".jsonl":
        with tempfile.TemporaryDirectory(prefix="trainguard-report-") as tmp:
            import_jsonl(path, Path(tmp) / "ledger")
            return read_records(Path(tmp) / "ledger")
    return read_records(path)


def from_records(
    records: Sequence[Record], verification: Verification, *, ledger: str
) -> ReportModel:
    """The model of ``records`` (already read), whatever their evidence holds."""
    g = _Gather()
    for rec in records:
        if rec.kind == "alert":
            g.alert(rec)
        else:
            g.event(rec)
    times = [r.time for r in records if r.time]
    ranks = {r.rank for r in records}
    return ReportModel(
        ledger=ledger,
        generated=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        verification=verification,
        records=len(records),
        first_time=min(times) if times else None,
        last_time=max(times) if times else None,
        alerts=tuple(g.alerts),
        events=tuple(g.events),
        curves=tuple(g.curves()),
        guards=tuple(g.guards.values()),
        runs=tuple(g.runs),
        processes=tuple(g.processes),
        env=tuple(g.env),
        checkpoints=tuple(g.checkpoints),
        scans=tuple(g.scans),
        ranks=tuple(sorted(ranks, key=_rank_key)),
    )


def _rank_key(rank: int | None) -> tuple[bool, int]:
    return (rank is None, rank or 0)


def _name(rec: Record) -> str:
    """An event's contract name: ``evidence["event"]`` (the message when absent)."""
    name = rec.evidence.get("event")
    return name if isinstance(name, str) else rec.message


class _Gather:
    def __init__(self) -> None:
        self.alerts: list[AlertRow] = []
        self.events: list[EventRow] = []
        self.guards: dict[int | None, GuardRow] = {}
        self.runs: list[RunRow] = []
        self.processes: list[ProcessExit] = []
        self.env: list[EnvCheck] = []
        self.checkpoints: list[CheckpointRow] = []
        self.scans: list[ScanRow] = []
        self._metrics: dict[int | None, dict[int, tuple[float | None, ...]]] = {}

    def alert(self, r: Record) -> None:
        self.alerts.append(
            AlertRow(
                r.seq, r.time, r.rank, r.step, r.alert or "unknown", _sev(r.severity),
                r.message, r.host, r.pid, dict(r.evidence),
            )
        )  # fmt: skip

    def event(self, r: Record) -> None:
        name, ev = _name(r), r.evidence
        if name == "guard.metrics":
            self._metric(r)
            return
        self.events.append(EventRow(r.seq, r.time, r.rank, r.step, name, r.message))
        if name == "guard.started":
            self.guards[r.rank] = GuardRow(
                r.seq, r.time, r.rank, tuple(_str(c) for c in _list(ev.get("checks"))),
                _int(ev.get("every")), _opt_str(ev.get("optimizer")),
                _opt_str(ev.get("scheduler")), _int(ev.get("world_size")),
                _int(ev.get("parameters")),
            )  # fmt: skip
        elif name == "guard.stopped":
            started = self.guards.get(r.rank)
            if started is not None:
                self.guards[r.rank] = _replace_stopped(started, ev)
        elif name in ("run.started", "run.exited"):
            command = ev.get("command")
            text = " ".join(_str(c) for c in command) if isinstance(command, list) else command
            self.runs.append(
                RunRow(
                    r.seq, r.time, name.split(".")[1], _str(text if text is not None else ""),
                    _int(ev.get("exit_code")), _opt_str(ev.get("signal")),
                )
            )  # fmt: skip
        elif name == "process.exit":
            rank = _int(ev.get("rank"))
            self.processes.append(
                ProcessExit(
                    r.seq, r.time, rank if rank is not None else r.rank, _int(ev.get("pid")),
                    _int(ev.get("code")), _opt_str(ev.get("signal")),
                )
            )  # fmt: skip
        elif name == "env.verified":
            self.env.append(
                EnvCheck(
                    r.seq, r.time, _bool(ev.get("ok")), _int(ev.get("files")),
                    _float(ev.get("seconds")), _items(ev.get("findings")),
                )
            )  # fmt: skip
        elif name in ("checkpoint.saved", "checkpoint.verified"):
            self.checkpoints.append(
                CheckpointRow(
                    r.seq, r.time, name.split(".")[1], _str(ev.get("path", "")),
                    _opt_str(ev.get("manifest_digest")),
                    _bool(ev.get("ok")) if name == "checkpoint.verified" else None,
                    _items(ev.get("findings")),
                )
            )  # fmt: skip
        elif name == "scan":
            self.scans.append(
                ScanRow(
                    r.seq, r.time, _str(ev.get("path", "")), _str(ev.get("verdict", "unknown")),
                    _items(ev.get("findings")),
                )
            )  # fmt: skip

    def _metric(self, r: Record) -> None:
        """Merge a rank's metric batches by step; a step written twice (a resume that
        replays steps) keeps its latest values."""
        ev = r.evidence
        steps = _list(ev.get("steps"))
        series = [_list(ev.get(k)) for k in ("loss", "grad_norm", "step_time", "clip")]
        points = self._metrics.setdefault(r.rank, {})
        for i, step in enumerate(steps):
            s = _int(step)
            if s is not None:
                points[s] = tuple(_float(v[i]) if i < len(v) else None for v in series)

    def curves(self) -> Iterable[Curve]:
        for rank in sorted(self._metrics, key=_rank_key):
            points = sorted(self._metrics[rank].items())
            if not points:
                continue
            steps = tuple(s for s, _ in points)
            loss, grad, dt, clip = (tuple(v[k] for _, v in points) for k in range(4))
            yield Curve(rank, steps, loss, grad, dt, clip)


def _replace_stopped(g: GuardRow, ev: Mapping[str, Any]) -> GuardRow:
    return GuardRow(
        g.seq, g.time, g.rank, g.checks, g.every, g.optimizer, g.scheduler, g.world_size,
        g.parameters, stopped=True, steps=_int(ev.get("steps")), alerts=_int(ev.get("alerts")),
    )  # fmt: skip


# -- coercion of untrusted evidence --------------------------------------------------------


def _sev(text: object) -> Severity:
    try:
        return Severity.parse(str(text))
    except ValueError:
        return Severity.INFO


def _items(value: object) -> tuple[Item, ...]:
    out = []
    for f in _list(value):
        if not isinstance(f, Mapping):
            out.append(Item("unknown", Severity.INFO, _str(f), ""))
            continue
        loc = f.get("location")
        if isinstance(loc, Mapping):
            loc = ":".join(_str(v) for v in loc.values() if v is not None)
        out.append(
            Item(
                _str(f.get("rule", "unknown")),
                _sev(f.get("severity", "info")),
                _str(f.get("message", "")),
                _str(loc if loc is not None else ""),
            )
        )
    return tuple(out)


def _list(value: object) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def _str(value: object) -> str:
    return value if isinstance(value, str) else str(value)


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _bool(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _float(value: object) -> float | None:
    """A finite number, else ``None`` (non-finite floats are stored as text: 'nan')."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        f = float(value)
        return f if math.isfinite(f) else None
    return None


# -- display helpers shared by the renderers ---------------------------------------------

# C0/C1 controls but newline and tab, DEL, and the bidirectional / zero-width marks that
# make text display in an order other than the one it is stored in ("trojan source").
_HIDDEN = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]"
)


def visible(text: str, limit: int | None = None) -> str:
    """``text`` with every character that could hide or reorder what is shown written
    as an escape, cut at ``limit`` characters (saying how much was cut)."""
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}... (+{len(text) - limit} chars)"
    return _HIDDEN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def short_time(iso: str) -> str:
    """'2025-01-02T03:04:05.678901Z' as '2025-01-02 03:04:05' (the text unchanged when it
    is not a time: a tampered record's time is shown as written)."""
    if len(iso) >= 19 and iso[10] == "T":
        return f"{iso[:10]} {iso[11:19]}"
    return iso


def parse_time(iso: str) -> float | None:
    """Seconds since the epoch, or ``None`` for a time that does not parse."""
    try:
        t = datetime.datetime.fromisoformat(iso)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return t.timestamp()
