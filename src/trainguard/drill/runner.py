"""``trainguard drill``: run the job clean, then once per attack, and score the guard.

The clean run (two ranks under ``trainguard run``, signed checkpoints, the default guard)
must raise no alert at all; each attack must raise one of its expected alerts. Latency is
counted from the injection (step and wall time, as the attack recorded them) to the first
expected alert; attribution is what that alert names (rank, pid, where).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.drill.scenarios import SCENARIOS, Scenario
from trainguard.drill.workspace import JOB_STEPS, Workspace
from trainguard.errors import ConfigError
from trainguard.report.model import parse_time

__all__ = ["AttackResult", "DrillReport", "run_drill"]


@dataclass(frozen=True, slots=True)
class AttackResult:
    attack: str
    description: str
    expected: tuple[str, ...]
    detected: bool
    alerts: tuple[str, ...]
    latency_steps: int | None
    latency_s: float | None
    rank: int | None
    pid: int | None
    where: str | None
    note: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "description": self.description,
            "expected": list(self.expected),
            "detected": self.detected,
            "alerts": list(self.alerts),
            "latency_steps": self.latency_steps,
            "latency_s": None if self.latency_s is None else round(self.latency_s, 3),
            "attribution": {"rank": self.rank, "pid": self.pid, "where": self.where},
            "note": self.note,
            "seconds": round(self.seconds, 2),
        }


@dataclass(frozen=True, slots=True)
class DrillReport:
    attacks: tuple[AttackResult, ...]
    clean_steps: int
    clean_alerts: tuple[str, ...]
    clean_ledger: str | None
    seconds: float
    workdir: str = ""

    @property
    def ok(self) -> bool:
        return not self.clean_alerts and all(a.detected for a in self.attacks)

    def to_json(self) -> dict[str, Any]:
        return {
            "attacks": [a.to_json() for a in self.attacks],
            "clean": {
                "steps": self.clean_steps,
                "alerts": len(self.clean_alerts),
                "alert_ids": list(self.clean_alerts),
                "ledger": self.clean_ledger,
            },
            "ok": self.ok,
            "seconds": round(self.seconds, 1),
            "workdir": self.workdir,
        }


def run_drill(
    attacks: Sequence[str] | None = None,
    *,
    workdir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> DrillReport:
    """Run the clean job and the named attacks (all by default) in ``workdir`` (a new
    temporary folder by default, kept so its ledgers can be inspected and reported)."""
    wanted = list(attacks or [s.name for s in SCENARIOS])
    known = {s.name: s for s in SCENARIOS}
    unknown = [a for a in wanted if a not in known]
    if unknown:
        raise ConfigError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(known)}")
    root = workdir or Path(tempfile.mkdtemp(prefix="trainguard-drill-"))
    ws = Workspace(root.resolve())
    say = progress or (lambda text: None)
    started = time.monotonic()
    shared: dict[str, Any] = {}

    say("clean run: 2 ranks, signed checkpoints, default guard")
    clean_ledger, clean_alerts = _clean(ws, shared)
    results = []
    for name in wanted:
        scenario = known[name]
        say(f"attack {name}: {scenario.description}")
        results.append(_attack(ws, scenario, shared))
    elapsed = time.monotonic() - started
    return DrillReport(
        tuple(results), JOB_STEPS, clean_alerts, str(clean_ledger), elapsed, str(root)
    )


def _clean(ws: Workspace, shared: dict[str, Any]) -> tuple[Path, tuple[str, ...]]:
    from trainguard import checkpoints
    from trainguard.ledger import read_records, verify

    base = ws.folder("clean")
    out, ledger = base / "out", base / "ledger"
    code, _ = ws.run(ledger, ws.job_command(out, ranks=2, extra=["--checkpoint-every", "8"]))
    shared["clean_ledger"] = ledger
    alerts = [r.alert or "" for r in read_records(ledger) if r.kind == "alert"]
    alerts += [f.rule.value for f in checkpoints.verify_recorded(ledger).findings]
    alerts += [f.rule.value for f in verify(ledger).findings]
    if code != 0:
        alerts.append(f"exit:{code}")
    return ledger, tuple(alerts)


def _attack(ws: Workspace, scenario: Scenario, shared: dict[str, Any]) -> AttackResult:
    from trainguard.ledger import read_records

    begun = time.monotonic()
    try:
        trial = scenario.run(ws, shared)
    except Exception as exc:  # noqa: BLE001 - a broken scenario is a failed row, not a crash
        return AttackResult(
            scenario.name,
            scenario.description,
            scenario.expected,
            False,
            (),
            None,
            None,
            None,
            None,
            None,
            f"scenario failed: {type(exc).__name__}: {exc}",
            time.monotonic() - begun,
        )
    seen: list[tuple[str, int | None, float | None, int | None, int | None, str | None]] = []
    if trial.ledger is not None and trial.ledger.exists():
        for r in read_records(trial.ledger):
            if r.kind == "alert" and r.alert:
                ev = r.evidence if isinstance(r.evidence, dict) else {}
                rank = ev.get("rank") if isinstance(ev.get("rank"), int) else r.rank
                pid = ev.get("pid") if isinstance(ev.get("pid"), int) else r.pid
                seen.append((r.alert, r.step, parse_time(r.time), rank, pid, _where(ev)))
    for f in trial.findings:
        seen.append((f.rule.value, None, time.time(), None, None, str(f.location)))
    hits = [s for s in seen if s[0] in scenario.expected]
    first = hits[0] if hits else None
    steps = None
    if first is not None and first[1] is not None and trial.injected_step is not None:
        steps = max(0, first[1] - trial.injected_step)
    elif first is not None and trial.injected_step == 0:
        steps = 0
    latency = None
    if first is not None and first[2] is not None:
        latency = max(0.0, first[2] - trial.injected_time)
    return AttackResult(
        scenario.name,
        scenario.description,
        scenario.expected,
        first is not None,
        tuple(dict.fromkeys(s[0] for s in seen)),
        steps,
        latency,
        first[3] if first else trial.rank,
        first[4] if first else None,
        first[5] if first else None,
        trial.note,
        time.monotonic() - begun,
    )


def _where(evidence: Any) -> str | None:
    loc = evidence.get("location") if isinstance(evidence, dict) else None
    if isinstance(loc, dict) and loc.get("path"):
        return str(loc["path"])
    return None
