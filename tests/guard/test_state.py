"""Model state besides the trained weights must not move between optimizer steps: buffers,
frozen parameters, module attributes, submodules, normalization statistics."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.base import Check
from trainguard.guard.checks.state import StateCheck

WEIGHT = "runtime.weight_tamper"


class Net(torch.nn.Module):
    """Trained layers, a frozen one, a BatchNorm, a LayerNorm, dropout, a leaky ReLU and
    two buffers (one non-persistent)."""

    mask: torch.Tensor
    scratch: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(16, 32)
        self.frozen = torch.nn.Linear(16, 32)
        self.frozen.requires_grad_(False)
        self.bn = torch.nn.BatchNorm1d(32)
        self.ln = torch.nn.LayerNorm(32)
        self.act = torch.nn.LeakyReLU(0.01)
        self.drop = torch.nn.Dropout(0.1)
        self.fc2 = torch.nn.Linear(32, 4)
        self.register_buffer("mask", torch.ones(8, 8))
        self.register_buffer("scratch", torch.zeros(4), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.fc1(x) + self.frozen(x))
        h = self.ln(h) * self.mask.mean() + self.scratch.sum()
        out: torch.Tensor = self.fc2(self.drop(self.act(h)))
        return out


def _setup(seed: int = 0, **check: Any) -> tuple[Any, torch.optim.Optimizer, Guard]:
    torch.manual_seed(seed)
    net = Net()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    every = check.pop("every", 4)
    guard = Guard(net, opt, ledger=False, every=every, checks=[StateCheck(**check)])
    return net, opt, guard


def _train(
    net: Any,
    opt: torch.optim.Optimizer,
    guard: Guard,
    *,
    steps: int = 8,
    attacks: Mapping[int, Callable[[], object]] | None = None,
    evaluate: bool = True,
) -> list[tuple[str, int | None, str]]:
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        if attacks and step in attacks:
            attacks[step]()
        loss = net(torch.randn(8, 16, generator=gen)).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        guard.step(loss=loss)
        if evaluate:  # an eval pass under no_grad between steps
            net.eval()
            with torch.no_grad():
                net(torch.randn(4, 16, generator=gen))
            net.train()
    guard.close()
    return [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts]


def _ulp(t: Any) -> None:
    t.data.view(-1).view(torch.int32)[3] += 1


def _storage(t: Any) -> None:
    other = t.detach().clone().add_(0.25)
    t.untyped_storage().copy_(other.untyped_storage())


def _in_place(t: Any) -> None:
    with torch.no_grad():
        t.mul_(1.5)


ATTACKS: dict[str, tuple[Callable[[Any], object], str]] = {
    "buffer via .data": (lambda n: n.mask.data.__setitem__((0, 0), 0.5), "buffer:mask"),
    "buffer 1-ulp flip": (lambda n: _ulp(n.mask), "buffer:mask"),
    "buffer raw storage": (lambda n: _storage(n.mask), "buffer:mask"),
    "buffer in place": (lambda n: _in_place(n.mask), "buffer:mask"),
    "buffer replaced": (lambda n: setattr(n, "mask", torch.full((8, 8), 2.0)), "buffer:mask"),
    "buffer storage swapped": (lambda n: n.mask.set_(torch.full((8, 8), 2.0)), "buffer:mask"),
    "frozen storage swapped": (
        lambda n: n.frozen.bias.set_(torch.zeros(32)),
        "param:frozen.bias",
    ),
    "non-persistent buffer": (lambda n: n.scratch.data.fill_(1e-3), "buffer:scratch"),
    "frozen param via .data": (lambda n: _ulp(n.frozen.weight), "param:frozen.weight"),
    "frozen param in place": (lambda n: _in_place(n.frozen.bias), "param:frozen.bias"),
    "frozen param storage": (lambda n: _storage(n.frozen.weight), "param:frozen.weight"),
    "dropout p": (lambda n: setattr(n.drop, "p", 0.9), "module:drop.p"),
    "layernorm eps": (lambda n: setattr(n.ln, "eps", 1.0), "module:ln.eps"),
    "leaky slope": (lambda n: setattr(n.act, "negative_slope", 0.5), "module:act.negative_slope"),
    "bn momentum": (lambda n: setattr(n.bn, "momentum", 1.0), "module:bn.momentum"),
    "submodule replaced": (lambda n: setattr(n, "drop", torch.nn.Dropout(0.9)), "submodule:drop"),
    "num_batches_tracked": (
        lambda n: n.bn.num_batches_tracked.add_(5),
        "buffer:bn.num_batches_tracked",
    ),
    "new buffer": (lambda n: n.ln.register_buffer("extra", torch.ones(1)), "buffers of ln"),
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize(
    "options",
    [{}, {"constant_limit": 0, "small": 0, "every": 1}, {"batched": True, "small": 0}],
    ids=["copied", "hashed shares", "batched (the GPU path)"],
)
def test_every_write_to_model_state_is_caught_at_its_step(
    name: str, options: dict[str, Any]
) -> None:
    attack, where = ATTACKS[name]
    net, opt, guard = _setup(**options)
    alerts = _train(net, opt, guard, attacks={5: lambda: attack(net)})
    assert {a[0] for a in alerts} == {WEIGHT}
    assert min(a[1] or 0 for a in alerts) == 5
    assert where in {a[2] for a in alerts}


class Tables(torch.nn.Module):
    """Three large buffers: hashed in keyed shares once past ``constant_limit``."""

    a: torch.Tensor
    b: torch.Tensor
    c: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(16, 4)
        for name in ("a", "b", "c"):
            self.register_buffer(name, torch.linspace(0, 1, 70_000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x) * (self.a[0] + self.b[-1] + self.c[1])
        return out


@pytest.mark.parametrize("buffer", ["a", "b", "c"])
def test_an_edit_to_a_share_not_due_is_caught_within_the_cycle(buffer: str) -> None:
    """The trust attacked: a constant's baseline is taken once (attach, authorized blocks)
    and carried over between the verifications of its share, so an edit made while
    another share is due is still there, and found, when its own share comes round."""
    torch.manual_seed(0)
    net = Tables()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    check = StateCheck(constant_limit=0)
    guard = Guard(net, opt, ledger=False, every=4, checks=[check])
    shares = len(check._const_shares)
    assert shares >= 3  # each buffer is in a share of its own or two
    edit = {3: lambda: getattr(net, buffer).data.view(torch.int32).__setitem__(69_000, 7)}
    alerts = guardkit.train(net, opt, guard, steps=3 + shares, attacks=edit)
    assert alerts and {a[2] for a in alerts} == {f"buffer:{buffer}"}
    assert 3 <= min(a[1] or 0 for a in alerts) < 3 + shares


def test_hashed_shares_of_an_honest_model_are_silent() -> None:
    torch.manual_seed(0)
    net = Tables()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = Guard(net, opt, ledger=False, every=4, checks=[StateCheck(constant_limit=0)])
    assert guardkit.train(net, opt, guard, steps=9) == []


def test_a_write_during_the_optimizer_step_is_caught_at_the_post_hook() -> None:
    """Frozen parameters and buffers must not change across the step either, and running
    statistics may not change without a training forward."""
    net, opt, guard = _setup()
    opt.register_step_post_hook(lambda *_: _ulp(net.frozen.weight))
    opt.register_step_post_hook(lambda *_: _in_place(net.bn.running_mean.data))
    alerts = _train(net, opt, guard, steps=2)
    assert ("runtime.weight_tamper", 1, "param:frozen.weight") in alerts
    assert ("runtime.weight_tamper", 1, "buffer:bn.running_stats") in alerts


def test_frozen_batchnorm_statistics_may_not_move() -> None:
    """A fine-tune with its BatchNorm in eval mode: the statistics are constants."""
    net, opt, guard = _setup()
    net.bn.eval()
    attacks = {4: lambda: _ulp(net.bn.running_var)}
    alerts = _train(net, opt, guard, attacks=attacks, evaluate=False)
    assert ("runtime.weight_tamper", 4, "buffer:bn.running_stats") in alerts


def test_a_write_inside_guard_step_is_caught_at_the_next_step() -> None:
    class Writer(Check):
        name = "writer"

        def end_step(self, ctx: Any, info: Any) -> None:
            if ctx.current_step == 3:
                _ulp(net.mask)
                net.drop.p = 0.5

    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    guard = Guard(net, opt, ledger=False, checks=[StateCheck(), Writer()])
    alerts = _train(net, opt, guard, steps=5)
    assert ("runtime.weight_tamper", 4, "buffer:mask") in alerts
    assert ("runtime.weight_tamper", 4, "module:drop.p") in alerts


# -- honest ----------------------------------------------------------------------------


def test_batchnorm_training_and_eval_passes_are_silent() -> None:
    net, opt, guard = _setup()
    assert _train(net, opt, guard, steps=10) == []
    assert int(net.bn.num_batches_tracked) == 10


def test_several_training_forwards_per_step_are_silent() -> None:
    """Gradient accumulation: the statistics advance once per micro-batch."""
    net, opt, guard = _setup(constant_limit=0)
    gen = torch.Generator().manual_seed(2)
    for _ in range(6):
        for _micro in range(3):
            (net(torch.randn(8, 16, generator=gen)).pow(2).mean() / 3).backward()
            guard.step()
        opt.step()
        opt.zero_grad()
        guard.step()
    guard.close()
    assert guard.alerts == []
    assert int(net.bn.num_batches_tracked) == 18


def test_instance_norm_and_rewrites_with_the_same_bits_are_silent() -> None:
    """InstanceNorm updates running stats without counting; DDP rebroadcasts identical
    buffers (a version bump, the same bits)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv1d(2, 4, 3), torch.nn.InstanceNorm1d(4, track_running_stats=True)
    )
    net.register_buffer("pos", torch.arange(6.0))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    guard = Guard(net, opt, ledger=False, checks=[StateCheck()])
    for _ in range(5):
        with torch.no_grad():
            net.pos.copy_(net.pos.clone())
        net(torch.randn(3, 2, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        guard.step()
    guard.close()
    assert guard.alerts == []


def test_reassigning_an_equal_value_is_silent() -> None:
    net, opt, guard = _setup()
    attacks = {3: lambda: setattr(net.ln, "normalized_shape", (32,))}
    attacks[4] = lambda: setattr(net.drop, "p", float("0.1"))
    assert _train(net, opt, guard, attacks=attacks) == []


def test_changes_inside_authorized_are_accepted_and_named() -> None:
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    guard = guardkit.SpyGuard(net, opt, ledger=False, checks=[StateCheck()])

    def retune() -> None:
        with guard.authorized("new dropout and mask"):
            net.drop.p = 0.3
            net.mask.fill_(0.5)
            net.bn.reset_running_stats()

    assert _train(net, opt, guard, attacks={4: retune}) == []
    assert guard.events("state.authorized")[0]["attributes"] == ["module:drop.p"]


def test_unfreezing_with_add_param_group_is_silent() -> None:
    net, opt, guard = _setup()

    def unfreeze() -> None:
        net.frozen.requires_grad_(True)
        opt.add_param_group({"params": list(net.frozen.parameters())})

    assert _train(net, opt, guard, attacks={4: unfreeze}) == []


def test_torch_compile_keeps_the_forward_count() -> None:
    net, opt, guard = _setup()
    compiled = torch.compile(net, backend="eager")
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        compiled(torch.randn(8, 16, generator=gen)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        guard.step()
    guard.close()
    assert guard.alerts == []


def test_one_module_switched_to_eval_while_the_model_trains() -> None:
    """``training`` flips honestly for the whole model (eval passes); a single dropout put
    in eval mode (its masks off) while the rest trains changes the pattern and alerts."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2), torch.nn.Dropout(0.1)
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = Guard(model, opt, checks=[StateCheck()])
    for step in range(1, 7):
        if step == 2:  # an honest eval pass, then back to training
            model.eval()
            with torch.no_grad():
                model(torch.randn(4, 8))
            model.train()
        if step == 4:
            model[1].eval()
        model(torch.randn(4, 8)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        guard.step()
    guard.close()
    found = [(a.finding.rule.value, a.step, a.finding.location.path) for a in guard.alerts]
    assert found == [("runtime.weight_tamper", 4, "mode:1")], found
