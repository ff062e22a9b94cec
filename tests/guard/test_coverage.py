"""Parameters that join the optimizer mid-run (``add_param_group``) are watched from then on.

Progressive unfreezing: the last layer starts frozen and outside the optimizer, joins it
at step 3 (inside ``guard.authorized()`` or not: it is honest either way, and recorded),
and from then on an insider's write to it is caught like a write to any other parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.update import UpdateCheck
from trainguard.guard.checks.weights import WeightsCheck
from trainguard.ledger import read_records


def _frozen_head() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    net = guardkit.model()
    head = net[2]  # type: ignore[index]
    head.requires_grad_(False)
    opt = torch.optim.AdamW(net[0].parameters(), lr=1e-3)  # type: ignore[index]
    return net, opt


def _unfreeze(net: torch.nn.Module, opt: Any, guard: Guard, authorized: bool) -> Callable[[], None]:
    def apply() -> None:
        head = net[2]  # type: ignore[index]
        head.requires_grad_(True)
        if authorized:
            with guard.authorized("unfreeze the head"):
                opt.add_param_group({"params": list(head.parameters()), "lr": 5e-4})
        else:
            opt.add_param_group({"params": list(head.parameters()), "lr": 5e-4})

    return apply


def _write_head(how: str, net: torch.nn.Module) -> Callable[[], None]:
    def apply() -> None:
        weight = net[2].weight  # type: ignore[index]
        if how == "data":  # no version bump: only the fingerprints see it
            weight.data[1, 3] += 1e-3
        else:
            with torch.no_grad():
                weight[1, 3] += 1e-3

    return apply


@pytest.mark.parametrize("authorized", [False, True], ids=["plain", "authorized"])
@pytest.mark.parametrize("how", ["data", "in place"])
def test_a_write_to_a_parameter_added_later_is_caught(how: str, authorized: bool) -> None:
    net, opt = _frozen_head()
    guard = Guard(net, opt, checks=[WeightsCheck()], ledger=False)
    attacks = {3: _unfreeze(net, opt, guard, authorized), 7: _write_head(how, net)}
    alerts = guardkit.train(net, opt, guard, steps=9, attacks=attacks)
    guard.close()
    assert alerts == [("runtime.weight_tamper", 7, "param:2.weight")]


def test_the_change_is_an_event_naming_the_new_parameters(tmp_path: Path) -> None:
    net, opt = _frozen_head()
    guard = Guard(net, opt, ledger=tmp_path / "l", process=False)
    attacks = {3: _unfreeze(net, opt, guard, False)}
    assert guardkit.train(net, opt, guard, steps=6, attacks=attacks) == []
    guard.close()
    changed = [r for r in read_records(tmp_path / "l") if r.message == "guard.params_changed"]
    assert [(r.step, r.evidence["added"], r.evidence["removed"]) for r in changed] == [
        (3, ["2.weight", "2.bias"], [])
    ]
    assert changed[0].evidence["authorized"] is False
    assert [n for n, _ in guard.named_parameters][-2:] == ["2.weight", "2.bias"]


def test_the_update_check_samples_the_new_parameters() -> None:
    """A write inside the optimizer step (after the guard's pre-hook, before the update)
    is only visible to the update check; it must be sampling the new parameters."""
    net, opt = _frozen_head()
    guard = Guard(net, opt, checks=[UpdateCheck(tensors_per_step=8)], ledger=False)

    def inside_the_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            net[2].bias.add_(1e-2)  # type: ignore[index]

    attacks = {
        3: _unfreeze(net, opt, guard, False),
        6: lambda: opt.register_step_pre_hook(inside_the_step) and None,
    }
    alerts = guardkit.train(net, opt, guard, steps=6, attacks=attacks)
    guard.close()
    assert alerts == [("runtime.update_mismatch", 6, "param:2.bias")]


def test_honest_progressive_unfreezing_under_the_full_guard() -> None:
    net, opt = _frozen_head()
    sched = torch.optim.lr_scheduler.StepLR(opt, 4, 0.5)
    guard = Guard(net, opt, scheduler=sched, ledger=False, every=4, process=False)
    attacks = {5: _unfreeze(net, opt, guard, False), 11: _unfreeze_more(net, opt)}
    alerts = guardkit.train(net, opt, guard, steps=16, scheduler=sched, attacks=attacks)
    guard.close()
    assert alerts == []
    assert len(guard.named_parameters) == 4


def _unfreeze_more(net: torch.nn.Module, opt: Any) -> Callable[[], None]:
    def apply() -> None:  # nothing new: a group of parameters already there is refused
        with pytest.raises(ValueError, match="some parameters appear in more than one"):
            opt.add_param_group({"params": list(net[0].parameters())})  # type: ignore[index]

    return apply
