"""The optimizer's state must be exactly what the last optimizer step left."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.base import Check
from trainguard.guard.checks.state import StateCheck

OPTIM = "runtime.optimizer_tamper"


def _setup(
    kind: str = "adamw", **check: Any
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Guard]:
    net = guardkit.model()
    if kind == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    elif kind == "amsgrad":
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, amsgrad=True)
    else:
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3, foreach=kind == "foreach")
    every = check.pop("every", 4)
    return net, opt, Guard(net, opt, ledger=False, every=every, checks=[StateCheck(**check)])


def _state(opt: Any, net: Any) -> Any:
    return opt.state[net[0].weight]


def _ulp(t: Any) -> None:
    t.data.view(-1).view(torch.int32)[2] += 1


def _storage(t: Any) -> None:
    other = t.detach().clone().mul_(1.5)
    t.untyped_storage().copy_(other.untyped_storage())


def _in_place(t: Any) -> None:
    with torch.no_grad():
        t.mul_(0.5)


_Attack = Callable[[Any, Any], object]


def _swap(t: Any) -> None:
    """Point the state tensor at other memory: a snapshot built over the old memory must
    not be what decides (the trust attacked: the plan follows addresses)."""
    t.set_(t.detach().clone().mul_(2.0))


def _replace_step(o: Any, n: Any) -> None:
    _state(o, n)["step"] = torch.tensor(1.0)


def _replace_momentum(o: Any, n: Any) -> None:
    _state(o, n)["momentum_buffer"] = torch.zeros(32, 16)


def _add_key(o: Any, n: Any) -> None:
    _state(o, n)["marker"] = 1


ATTACKS: dict[str, tuple[str, _Attack, str]] = {
    "exp_avg_sq 1-ulp via .data": (
        "adamw", lambda o, n: _ulp(_state(o, n)["exp_avg_sq"]), "0.weight.exp_avg_sq"
    ),
    "exp_avg_sq in place": (
        "adamw", lambda o, n: _in_place(_state(o, n)["exp_avg_sq"]), "0.weight.exp_avg_sq"
    ),
    "exp_avg raw storage": (
        "foreach", lambda o, n: _storage(_state(o, n)["exp_avg"]), "0.weight.exp_avg"
    ),
    "max_exp_avg_sq": (
        "amsgrad", lambda o, n: _ulp(_state(o, n)["max_exp_avg_sq"]), "0.weight.max_exp_avg_sq"
    ),
    "step incremented": ("adamw", lambda o, n: _state(o, n)["step"].add_(1), "0.weight.step"),
    "step via .data": (
        "adamw", lambda o, n: _state(o, n)["step"].data.fill_(1.0), "0.weight.step"
    ),
    "step replaced": ("adamw", _replace_step, "0.weight.step"),
    "exp_avg storage swapped": (
        "adamw", lambda o, n: _swap(_state(o, n)["exp_avg"]), "0.weight.exp_avg"
    ),
    "momentum raw storage": (
        "sgd", lambda o, n: _storage(_state(o, n)["momentum_buffer"]), "0.weight.momentum_buffer"
    ),
    "momentum replaced": ("sgd", _replace_momentum, "0.weight.momentum_buffer"),
    "state key added": ("adamw", _add_key, "0.weight.marker"),
    "state dropped": ("sgd", lambda o, n: o.state.pop(n[0].weight), "0.weight"),
    "load_state_dict outside authorized": (
        "adamw", lambda o, n: o.load_state_dict(o.state_dict()), "state"
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ATTACKS))
@pytest.mark.parametrize(
    "options",
    [{}, {"full_limit": 0, "small": 0, "every": 1}, {"batched": True, "small": 0}],
    ids=["copied", "hashed shares", "batched (the GPU path)"],
)
def test_every_write_to_optimizer_state_is_caught_at_its_step(
    name: str, options: dict[str, Any]
) -> None:
    kind, attack, where = ATTACKS[name]
    net, opt, guard = _setup(kind, **options)
    alerts = guardkit.train(net, opt, guard, steps=6, attacks={4: lambda: attack(opt, net)})
    assert {a[0] for a in alerts} == {OPTIM}
    assert min(a[1] or 0 for a in alerts) == 4
    assert f"optim:{where}" in {a[2] for a in alerts}


def _wide(**check: Any) -> tuple[torch.nn.Sequential, torch.optim.Optimizer, Guard]:
    """A model whose AdamW state (about 133k elements) is past ``full_limit=100_000``:
    its two 65,536-element moments are copied in two keyed rotating shares, the rest
    (biases, the small head, ``step``) at every step."""
    torch.manual_seed(0)
    first = torch.nn.Linear(256, 256)
    first.weight.data.mul_(0.01)
    net = torch.nn.Sequential(first, torch.nn.Linear(256, 4))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    state = StateCheck(full_limit=100_000, **check)
    return net, opt, Guard(net, opt, ledger=False, every=4, checks=[state])


def _train_wide(net: Any, opt: Any, guard: Guard, steps: int, attacks: Any) -> list[Any]:
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        if step in attacks:
            attacks[step]()
        net(torch.randn(8, 256, generator=gen)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        guard.step()
    guard.close()
    return [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts]


def test_rotating_shares_cover_step_and_small_states_at_every_step() -> None:
    net, opt, guard = _wide()
    attacks = {4: lambda: _state(opt, net)["step"].data.add_(1)}
    bias = net[0].bias
    assert isinstance(bias, torch.Tensor)
    attacks[5] = lambda: opt.state[bias]["exp_avg"].data.mul_(2)
    alerts = _train_wide(net, opt, guard, 6, attacks)
    assert len(guard.checks[0]._opt_shares) == 2  # type: ignore[attr-defined]
    assert ("runtime.optimizer_tamper", 4, "optim:0.weight.step") in alerts
    assert ("runtime.optimizer_tamper", 5, "optim:0.bias.exp_avg") in alerts


@pytest.mark.parametrize("key", ["exp_avg", "exp_avg_sq"])
def test_a_repeated_edit_to_a_share_is_caught_within_the_rotation(key: str) -> None:
    """A share's content is verified in one window out of ``len(shares)``: an edit made
    in every window (what steering the moments takes) is found within one rotation."""
    net, opt, guard = _wide()

    def edit() -> None:
        _state(opt, net)[key].data.view(-1)[100] += 1.0

    alerts = _train_wide(net, opt, guard, 8, dict.fromkeys(range(3, 9), edit))
    assert {a[2] for a in alerts} == {f"optim:0.weight.{key}"}
    assert 3 <= min(a[1] or 0 for a in alerts) <= 4


def test_rotating_shares_of_an_honest_run_are_silent() -> None:
    net, opt, guard = _wide()
    assert _train_wide(net, opt, guard, 9, {}) == []


def test_a_write_inside_guard_step_is_caught_before_the_next_update() -> None:
    class Writer(Check):
        name = "writer"

        def end_step(self, ctx: Any, info: Any) -> None:
            if ctx.current_step == 2:
                _ulp(_state(opt, net)["exp_avg_sq"])

    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = Guard(net, opt, ledger=False, checks=[StateCheck(), Writer()])
    alerts = guardkit.train(net, opt, guard, steps=4)
    assert alerts == [("runtime.optimizer_tamper", 3, "optim:0.weight.exp_avg_sq")]


# -- honest ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adamw", "foreach", "sgd", "amsgrad"])
def test_lazy_state_and_every_implementation_are_silent(kind: str) -> None:
    net, opt, guard = _setup(kind)
    assert guardkit.train(net, opt, guard, steps=6) == []


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "single-tensor"])
def test_grad_scaler_skipping_overflowing_steps_is_silent(fused: bool) -> None:
    """Unfused, the scaler does not call ``step`` on overflow; fused, it calls it with
    ``found_inf`` and the kernel changes nothing. Either way the state is consistent."""
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=fused)
    guard = Guard(net, opt, ledger=False, checks=[StateCheck()])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**120, growth_interval=3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(16):
        loss = net(torch.randn(8, 16, generator=gen)).pow(2).mean() * 1e4
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=False)
        guard.step(loss=loss)
    guard.close()
    assert guard.alerts == []
    assert scaler.get_scale() < 2.0**120  # steps overflowed and the scale backed off
    assert guard.steps > 0 and (fused or guard.steps < 16)


def test_load_state_dict_inside_authorized_is_silent() -> None:
    net, opt, guard = _setup("adamw")
    saved: dict[str, Any] = {}

    def save() -> None:
        saved.update(copy.deepcopy(opt.state_dict()))

    def load() -> None:
        with guard.authorized("roll back"):
            opt.load_state_dict(saved)

    assert guardkit.train(net, opt, guard, steps=8, attacks={3: save, 6: load}) == []
