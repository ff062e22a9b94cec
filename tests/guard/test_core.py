"""The Guard itself: ledger first, stop_on, failing checks, authorized blocks, heartbeats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import guardkit
from trainguard.errors import GuardStopped
from trainguard.findings import Rule, Severity
from trainguard.guard import Check, Guard, GuardContext, StepInfo
from trainguard.guard.checks.weights import WeightsCheck
from trainguard.ledger import read_records


class Broken(Check):
    name = "broken"

    def after_step(self, ctx: GuardContext) -> None:
        raise RuntimeError("boom")


class Tripwire(Check):
    """Raises one alert of the given severity at step ``at``."""

    name = "tripwire"

    def __init__(self, at: int, severity: Severity) -> None:
        self.at, self.severity = at, severity

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        if ctx.current_step == self.at:
            ctx.emit(Rule.MONKEYPATCH, self.severity, "tripped", where="here")


def test_alerts_reach_the_ledger_with_step_and_rank(tmp_path: Path) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=tmp_path / "ledger")
    seen: list[Any] = []
    guard.on_alert(seen.append)

    def tamper() -> None:
        net[0].weight.data.add_(1e-3)  # type: ignore[index]

    guardkit.train(net, opt, guard, attacks={4: tamper})
    guard.close()
    records = read_records(tmp_path / "ledger")
    alerts = [r for r in records if r.kind == "alert"]
    assert [(r.alert, r.step, r.rank) for r in alerts] == [("runtime.weight_tamper", 4, 0)]
    assert seen and seen[0].step == 4
    events = [r.message for r in records if r.kind == "event"]
    assert events[0] == "guard.started" and events[-1] == "guard.stopped"
    assert records[-1].evidence["alerts"] == 1


def test_stop_on_raises_from_the_training_loop_after_recording(tmp_path: Path) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(
        net, opt, checks=[Tripwire(3, Severity.HIGH)], ledger=tmp_path / "l", stop_on="high"
    )
    with pytest.raises(GuardStopped) as info:
        guardkit.train(net, opt, guard)
    assert info.value.alert.step == 3
    assert guard.steps == 3
    guard.close()
    assert [r.alert for r in read_records(tmp_path / "l") if r.kind == "alert"] == [
        "runtime.monkeypatch"
    ]


def test_stop_on_ignores_lower_severities_and_anomalies() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[Tripwire(3, Severity.MEDIUM)], ledger=False, stop_on="high")
    assert len(guardkit.train(net, opt, guard)) == 1


def test_a_failing_check_is_an_alert_not_a_crash() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[Broken()], ledger=False)
    alerts = guardkit.train(net, opt, guard, steps=3)
    assert alerts == [("guard.error", 1, "check:broken")]
    assert guard.repeats[("guard.error", "check:broken")] == 3


def test_close_removes_the_hooks_and_is_idempotent() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    guard.close()
    guard.close()
    net[0].weight.data.add_(1.0)  # type: ignore[index]
    net(torch.randn(2, 16)).sum().backward()
    opt.step()
    assert guard.alerts == [] and guard.steps == 0


def test_heartbeat_file_for_the_supervisor(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TRAINGUARD_RUN_DIR", str(tmp_path))
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[], ledger=False)
    guardkit.train(net, opt, guard, steps=3)
    guard.close()
    (beat,) = (tmp_path / "heartbeats").glob("*.json")
    body = json.loads(beat.read_text())
    assert body["state"] == "closed" and body["step"] == 3 and body["rank"] == 0


def test_the_ledger_folder_comes_from_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("TRAINGUARD_LEDGER", str(tmp_path / "env-ledger"))
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    Guard(net, opt, checks=[], ledger=None).close()
    assert read_records(tmp_path / "env-ledger")[0].message == "guard.started"


def test_a_resumed_run_numbers_its_steps_as_the_trainer_does() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False, start_step=100)

    def tamper() -> None:
        net[0].weight.data.add_(1e-3)  # type: ignore[index]

    alerts = guardkit.train(net, opt, guard, steps=6, attacks={4: tamper})
    assert alerts == [("runtime.weight_tamper", 104, "param:0.weight")]
    assert guard.steps == 6 and guard.last_step == 106
