"""Weights must not move between optimizer steps: every write path, at the step it happens."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.fingerprint import Fingerprinter
from trainguard.guard.checks.weights import WeightsCheck


def _w(net: torch.nn.Module) -> torch.nn.Parameter:
    return net[0].weight  # type: ignore[index,return-value]


def _ulp(net: torch.nn.Module) -> None:
    _w(net).data.view(-1).view(torch.int32)[7] += 1


def _offsetting_pair(net: torch.nn.Module) -> None:
    d = _w(net).data.view(-1)
    d[3] += 1e-3
    d[4] -= 1e-3


def _permutation(net: torch.nn.Module) -> None:
    d = _w(net).data.view(-1)
    d[[0, 1]] = d[[1, 0]].clone()


def _raw_storage(net: torch.nn.Module) -> None:
    other = _w(net).detach().clone().mul_(1.0001)
    _w(net).untyped_storage().copy_(other.untyped_storage())


def _in_place(net: torch.nn.Module) -> None:
    with torch.no_grad():
        _w(net).mul_(1.01)


def _data_assign(net: torch.nn.Module) -> None:
    _w(net).data = _w(net).data.clone()


def _set(net: torch.nn.Module) -> None:
    with torch.no_grad():
        _w(net).set_(_w(net).detach().clone())


def _bias_copy(net: torch.nn.Module) -> None:
    with torch.no_grad():
        net[2].bias.copy_(torch.zeros(4))  # type: ignore[index]


ATTACKS: dict[str, Callable[[torch.nn.Module], None]] = {
    "1-ulp flip via .data": _ulp,
    "offsetting pair": _offsetting_pair,
    "permutation": _permutation,
    "raw storage copy": _raw_storage,
    "in-place under no_grad": _in_place,
    ".data assignment": _data_assign,
    "set_": _set,
    "copy_ into another parameter": _bias_copy,
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize(
    ("full_limit", "batched"),
    [(4_000_000, False), (0, False), (4_000_000, True)],
    ids=["full", "rotating", "batched (the GPU path)"],
)
def test_every_write_path_is_caught_at_its_step(name: str, full_limit: int, batched: bool) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    # every=1 with the rotating plan still covers everything at each step
    check = WeightsCheck(full_limit=full_limit, batched=batched)
    guard = Guard(net, opt, checks=[check], ledger=False, every=1)
    alerts = guardkit.train(net, opt, guard, attacks={5: lambda: ATTACKS[name](net)})
    assert [(rule, step) for rule, step, _ in alerts] == [("runtime.weight_tamper", 5)]
    assert alerts[0][2] in ("param:0.weight", "param:2.bias")


def test_honest_runs_raise_nothing() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)
    guard = Guard(net, opt, checks=[WeightsCheck(full_limit=0)], ledger=False, every=3)
    assert guardkit.train(net, opt, guard, steps=20, scheduler=sched) == []


def test_rotating_plan_covers_every_element_within_every_steps() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.Linear(300, 7))
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    check = WeightsCheck(full_limit=0)
    guard = Guard(net, opt, checks=[check], ledger=False, every=4)
    covered = dict.fromkeys(range(len(check._params)), 0)
    for slot in check._slots:
        for r in slot:
            covered[r.index] += r.end - r.start
    assert covered == {i: int(p.numel()) for i, (_, p) in enumerate(check._params)}
    assert 2 <= len(check._slots) <= 4
    guard.close()


def test_a_replaced_parameter_object_is_caught() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False, every=2)

    def swap() -> None:
        net[0].weight = torch.nn.Parameter(_w(net).detach().clone())  # type: ignore[index]

    alerts = guardkit.train(net, opt, guard, attacks={3: swap})
    assert alerts == [("runtime.weight_tamper", 4, "param:0.weight")]


def test_authorized_changes_are_accepted() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    saved = {k: v.clone() for k, v in net.state_dict().items()}

    def reload() -> None:
        with guard.authorized("resume"):
            net.load_state_dict(saved)

    assert guardkit.train(net, opt, guard, attacks={4: reload}) == []


def test_fingerprint_sees_single_bits_and_segment_swaps() -> None:
    fp = Fingerprinter(b"k" * 32, segment=8)
    x = torch.randn(64)
    base = int(fp.digest(x))
    for bit in (0, 1, 22, 31):
        y = x.clone()
        y.view(torch.int32)[5] ^= 1 << bit
        assert int(fp.digest(y)) != base
    swapped = torch.cat([x[8:16], x[:8], x[16:]])
    assert int(fp.digest(swapped)) != base
    assert int(Fingerprinter(b"j" * 32, segment=8).digest(x)) != base
    halves = [fp.digest(x, 0, 32), fp.digest(x, 32, 64)]
    assert int(fp.combine(halves, x.device)) != int(fp.combine(halves[::-1], x.device))
    for dtype in (torch.bfloat16, torch.float16, torch.float64, torch.uint8):
        t = torch.arange(40).to(dtype)
        u = t.clone()
        u[3] = u[4]
        assert int(fp.digest(t)) != int(fp.digest(u))


def test_an_optimizer_step_replaced_after_construction_is_caught() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    original = torch.optim.AdamW.step

    def sabotaged(self: torch.optim.Optimizer, closure: object = None) -> None:
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=group["lr"])  # the wrong direction

    def patch() -> None:
        torch.optim.AdamW.step = sabotaged  # type: ignore[method-assign,assignment]

    try:
        alerts = guardkit.train(net, opt, guard, attacks={4: patch})
    finally:
        torch.optim.AdamW.step = original  # type: ignore[method-assign]
    assert alerts[0][:2] == ("runtime.monkeypatch", 4)
    assert alerts[0][2] == "torch.optim.adamw.AdamW.step"


def test_gradient_accumulation_micro_steps_are_not_alarms() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    for i in range(12):
        net(torch.randn(4, 16)).pow(2).mean().backward()
        if i % 3 == 2:
            opt.step()
            opt.zero_grad()
        guard.step()
    assert guard.alerts == [] and guard.steps == 4


def test_two_parameters_written_in_one_window_are_both_named_with_their_cause() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)

    def both() -> None:
        with torch.no_grad():
            _w(net).mul_(1.01)
            net[2].weight.mul_(1.01)  # type: ignore[index]

    guardkit.train(net, opt, guard, attacks={5: both})
    causes = {a.finding.location.path: a.finding.evidence["how"] for a in guard.alerts}
    assert causes == {"param:0.weight": "written in place", "param:2.weight": "written in place"}
