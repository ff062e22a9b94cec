"""Loss / gradient-norm anomalies are evidence: found, low severity, quiet on honest runs."""

from __future__ import annotations

from pathlib import Path

import torch

import guardkit
from trainguard.findings import Severity
from trainguard.guard import Guard
from trainguard.guard.checks.anomalies import AnomalyCheck, Outliers
from trainguard.ledger import read_records


def test_outliers_only_flag_upward_jumps_after_warmup() -> None:
    series = Outliers(warmup=10)
    falling = [10.0 * 0.9**i + 0.01 * (i % 3) for i in range(60)]
    assert [v for v in falling if series.add(v)] == []
    assert series.add(50.0) is not None
    assert series.add(falling[-1]) is None


def test_nan_loss_and_gradient_spike(tmp_path: Path) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)  # a spike moves Adam's step boundedly
    guard = Guard(net, opt, checks=[AnomalyCheck()], ledger=tmp_path / "l", every=5)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 41):
        x = torch.randn(8, 16, generator=gen)
        if step == 30:
            x = x * 100
        loss = net(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        guard.step(loss=float("nan") if step == 35 else loss)
    guard.close()
    found = {(a.finding.evidence["metric"], a.step, a.severity) for a in guard.alerts}
    assert ("loss", 30, Severity.LOW) in found
    assert ("gradient norm", 30, Severity.LOW) in found
    assert ("loss", 35, Severity.MEDIUM) in found
    assert {a.step for a in guard.alerts} == {30, 35}
    metrics = [r for r in read_records(tmp_path / "l") if r.message == "guard.metrics"]
    steps = [s for r in metrics for s in r.evidence["steps"]]
    assert steps == list(range(1, 41))
    assert all(len(r.evidence["loss"]) == len(r.evidence["steps"]) for r in metrics)


def test_honest_noisy_run_with_warmup_and_clipping_is_quiet() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min(1.0, (e + 1) / 10))
    guard = Guard(net, opt, scheduler=sched, checks=[AnomalyCheck()], ledger=False)
    gen = torch.Generator().manual_seed(3)
    for _ in range(150):
        loss = net(torch.randn(4, 16, generator=gen)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        opt.step()
        opt.zero_grad()
        sched.step()
        guard.step(loss=loss)
    guard.close()
    assert guard.alerts == []


def test_the_norm_before_clipping_is_recorded_and_judged(tmp_path: Path) -> None:
    """With clipping on, the norm the optimizer sees is flat at the threshold; the series
    and the spike test use the norm ``clip_grad_norm_`` measured before scaling."""
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    before = torch.nn.utils.clip_grad_norm_
    guard = Guard(net, opt, checks=[AnomalyCheck()], ledger=tmp_path / "l", every=5)
    gen = torch.Generator().manual_seed(0)
    returned = []
    for step in range(1, 41):
        x = torch.randn(8, 16, generator=gen) * (100 if step == 30 else 1)
        loss = net(x).pow(2).mean()
        loss.backward()
        returned.append(float(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)))
        opt.step()
        opt.zero_grad()
        guard.step(loss=loss)
    guard.close()
    assert ("gradient norm", 30) in {(a.finding.evidence["metric"], a.step) for a in guard.alerts}
    metrics = [r for r in read_records(tmp_path / "l") if r.message == "guard.metrics"]
    norms = [n for r in metrics for n in r.evidence["grad_norm"]]
    clips = {c for r in metrics for c in r.evidence["clip"]}
    assert norms == [round(v, 7) for v in returned] and clips == {0.01}
    assert torch.nn.utils.clip_grad_norm_ is before  # restored at close


def test_a_clip_bound_before_the_guard_falls_back_to_the_applied_norm() -> None:
    from torch.nn.utils import clip_grad_norm_ as bound_early

    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    check = AnomalyCheck()
    guard = Guard(net, opt, checks=[check], ledger=False)
    seen = []
    guard.event = lambda message, evidence: seen.append((message, evidence))  # type: ignore[method-assign]
    for _ in range(3):
        net(torch.randn(8, 16)).pow(2).mean().backward()
        bound_early(net.parameters(), 0.01)
        opt.step()
        opt.zero_grad()
        guard.step()
    guard.close()
    series = next(e for m, e in seen if m == "guard.metrics")
    assert series["clip"] == [None, None, None]
    assert all(abs(n - 0.01) < 1e-4 for n in series["grad_norm"])  # what the optimizer got
