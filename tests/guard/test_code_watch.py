"""runtime.monkeypatch, per step: a name the step can reach is compared by identity at
every optimizer step, so a patch restored before the next snapshot is still caught; the
full comparison runs on a schedule keyed by the run key."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.code import CodeCheck
from trainguard.guard.checks.code.watch import due

MONKEYPATCH = "runtime.monkeypatch"
_ABSENT = object()
_CLIP = importlib.import_module("torch.nn.utils.clip_grad")

# (owner, name, where): the names user code looks up at call time
_TARGETS = [
    (torch.nn.utils, "clip_grad_norm_", "torch.nn.utils.clip_grad_norm_"),
    (_CLIP, "clip_grad_norm_", "torch.nn.utils.clip_grad.clip_grad_norm_"),
    (torch._C._nn, "gelu", "torch._C._nn.gelu"),
    (torch._C._nn, "linear", "torch._C._nn.linear"),
    (torch, "softmax", "torch.softmax"),
    (F, "cross_entropy", "torch.nn.functional.cross_entropy"),
]


class _Patch:
    """Set ``owner.name`` to a marker wrapper; ``undo`` puts back exactly what was there."""

    def __init__(self, owner: Any, name: str) -> None:
        self.owner, self.name = owner, name
        self.before = vars(owner).get(name, _ABSENT)
        self.calls = 0

    def apply(self) -> None:
        original = getattr(self.owner, self.name)

        def marker(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        setattr(self.owner, self.name, marker)

    def undo(self) -> None:
        if self.before is _ABSENT:
            with contextlib.suppress(AttributeError):
                delattr(self.owner, self.name)
        else:
            setattr(self.owner, self.name, self.before)


def _guard(net: Any, opt: Any, every: int, key: bytes = b"k" * 32) -> Guard:
    return Guard(
        net, opt, checks=[CodeCheck(verify_source=False)], ledger=False, every=every, key=key
    )


def test_patch_and_restore_between_snapshots_is_caught_at_the_step() -> None:
    """``every`` is far away: the full comparison never runs after step 1, yet a patch of
    ``forward`` on step 3, undone before step 5, is reported at step 3."""
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = _guard(net, opt, every=10_000)
    patch = _Patch(torch.nn.Linear, "forward")
    try:
        alerts = guardkit.train(net, opt, guard, steps=6, attacks={3: patch.apply, 5: patch.undo})
    finally:
        patch.undo()
        guard.close()
    assert patch.calls > 0  # the marker did run
    assert alerts == [(MONKEYPATCH, 3, "torch.nn.Linear.forward")]


def test_an_instance_forward_restored_before_the_snapshot_is_caught() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = _guard(net, opt, every=10_000)
    patch = _Patch(net[0], "forward")  # type: ignore[index]
    try:
        alerts = guardkit.train(net, opt, guard, steps=5, attacks={2: patch.apply, 3: patch.undo})
    finally:
        patch.undo()
        guard.close()
    assert alerts == [(MONKEYPATCH, 2, "model.0.forward")]


@pytest.mark.parametrize(("owner", "name", "where"), _TARGETS, ids=[t[2] for t in _TARGETS])
def test_names_rebound_after_attach_are_caught_at_the_step(
    owner: Any, name: str, where: str
) -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = _guard(net, opt, every=10_000)
    patch = _Patch(owner, name)
    try:
        alerts = guardkit.train(net, opt, guard, steps=5, attacks={3: patch.apply, 4: patch.undo})
    finally:
        patch.undo()
        guard.close()
    assert alerts == [(MONKEYPATCH, 3, where)]


@pytest.mark.parametrize(("owner", "name", "where"), _TARGETS, ids=[t[2] for t in _TARGETS])
def test_names_rebound_before_the_guard_are_caught_at_attach(
    owner: Any, name: str, where: str
) -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    patch = _Patch(owner, name)
    patch.apply()
    try:
        guard = _guard(net, opt, every=10_000)
        guard.close()
    finally:
        patch.undo()
    found = [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts]
    assert found == [(MONKEYPATCH, 0, where)]
    assert "test_code_watch.py" in guard.alerts[0].finding.message


def test_a_torch_builtin_moved_to_another_name_before_the_guard() -> None:
    """torch's own C function under the wrong name: ``torch.softmax = torch.relu``."""
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    original = torch.softmax
    torch.softmax = torch.relu  # type: ignore[assignment]
    try:
        guard = _guard(net, opt, every=10_000)
        guard.close()
    finally:
        torch.softmax = original
    assert [a.finding.location.path for a in guard.alerts] == ["torch.softmax"]
    assert "not its softmax" in guard.alerts[0].finding.message


def test_the_full_comparison_is_keyed_and_one_in_every_on_average() -> None:
    steps = range(1, 8001)
    first = [s for s in steps if due(b"a" * 32, s, 16)]
    second = [s for s in steps if due(b"b" * 32, s, 16)]
    assert 8000 / 24 < len(first) < 8000 / 10
    assert first != second  # another key, another schedule
    assert first == [s for s in steps if due(b"a" * 32, s, 16)]
    assert all(due(b"a" * 32, s, 1) for s in range(1, 50))


def test_code_swapped_in_place_for_one_step_is_caught_on_a_keyed_step() -> None:
    """A ``__code__`` swap lasting a single step is caught at that step (the assignment
    is audited; see ``test_code_swap``), and the keyed full comparison agrees."""
    key = b"s" * 32
    step = next(s for s in range(2, 400) if due(key, s, 16))
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = _guard(net, opt, every=16, key=key)
    original = F.relu.__code__
    tampered = (lambda input, inplace=False: torch.relu(input)).__code__

    def swap() -> None:
        F.relu.__code__ = tampered

    def restore() -> None:
        F.relu.__code__ = original

    try:
        alerts = guardkit.train(
            net, opt, guard, steps=step + 1, attacks={step: swap, step + 1: restore}
        )
    finally:
        restore()
        guard.close()
    assert alerts == [(MONKEYPATCH, step, "torch.nn.functional.relu")]
