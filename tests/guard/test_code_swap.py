"""runtime.monkeypatch for a ``__code__`` swapped on torch's own function object: the
function identity stays, so neither the per-step identity watch nor the attach-time origin
check (module, file, globals) sees it. The attacks: ``clip_grad_norm_``'s inner function
gets code compiled under its own file name and module globals (harmless marker: it scales
the gradients by 1.0), before the guard starts, at step 5, and for part of one step."""

from __future__ import annotations

import importlib
import textwrap
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.code import CodeCheck, check

MONKEYPATCH = "runtime.monkeypatch"
_CLIP = importlib.import_module("torch.nn.utils.clip_grad")
_FAKE = """
def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,
                    foreach=None):
    parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    grads = [p.grad for p in parameters if p.grad is not None]
    total_norm = _get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
    _clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)
    for g in grads:
        g.mul_(1.0)  # the marker: where an attack would scale the gradients
    return total_norm
"""


def _inner() -> types.FunctionType:
    inner = getattr(_CLIP.clip_grad_norm_, "__wrapped__", _CLIP.clip_grad_norm_)
    assert isinstance(inner, types.FunctionType)
    return inner


def _fake_code(fn: types.FunctionType, source: str = _FAKE) -> types.CodeType:
    """Code claiming ``fn``'s file and name, compiled in its module's globals."""
    scope: dict[str, Any] = {}
    exec(compile(textwrap.dedent(source), fn.__code__.co_filename, "exec"), vars(_CLIP), scope)
    made = scope[fn.__name__]
    assert made.__code__.co_filename == fn.__code__.co_filename
    return made.__code__  # type: ignore[no-any-return]


@contextmanager
def _swapped(fn: types.FunctionType, code: types.CodeType) -> Iterator[None]:
    original = fn.__code__
    fn.__code__ = code
    try:
        yield
    finally:
        fn.__code__ = original


def _clip_train(guard: Guard, net: Any, opt: Any, attacks: dict[int, Any], steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        if step in attacks:
            attacks[step]()
        loss = net(torch.randn(8, 16, generator=gen)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        guard.step(loss=loss)


def _clip_alerts(guard: Guard) -> list[tuple[int | None, str, str]]:
    return [
        (a.step, a.finding.location.path, a.finding.message)
        for a in guard.alerts
        if a.rule.value == MONKEYPATCH and "clip_grad_norm_" in a.finding.location.path
    ]


def test_a_code_swap_before_the_guard_is_an_alert_at_attach() -> None:
    """Judged at attach against the disk compile, without waiting for the thread."""
    fn = _inner()
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    with _swapped(fn, _fake_code(fn)):
        check_ = CodeCheck()
        guard = Guard(net, opt, checks=[check_], ledger=False)
        found = _clip_alerts(guard)  # before any step and before the thread is waited for
        check_.wait_verified(120)
        guard.close()
    assert len(found) == 1, found
    step, _where, message = found[0]
    assert step == 0 and "does not match its source file" in message
    assert guard.alerts[0].severity.name == "CRITICAL"
    assert len(_clip_alerts(guard)) == 1  # the thread does not report it twice


def test_a_code_swap_at_step_5_is_caught_at_step_5() -> None:
    """The full comparison is keyed far away (``every``): the swap is seen because the
    assignment is audited, at the step it is made."""
    fn = _inner()
    fake = _fake_code(fn)
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[CodeCheck(verify_source=False)], ledger=False, every=10_000)
    original = fn.__code__
    try:
        _clip_train(guard, net, opt, {5: lambda: setattr(fn, "__code__", fake)}, steps=7)
    finally:
        fn.__code__ = original
        guard.close()
    assert [(s, w) for s, w, _ in _clip_alerts(guard)] == [(5, "torch.nn.utils.clip_grad_norm_")]
    assert "code of torch.nn.utils.clip_grad_norm_ was replaced" in _clip_alerts(guard)[0][2]


def test_a_code_swap_put_back_within_the_step_is_caught_at_that_step() -> None:
    """Swapped, used by the step's clipping, and put back before ``optimizer.step()``:
    nothing is different when the guard looks, but the assignment was seen."""
    fn = _inner()
    fake = _fake_code(fn)
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard = Guard(net, opt, checks=[CodeCheck(verify_source=False)], ledger=False, every=10_000)
    original = fn.__code__

    def swap_clip_restore() -> None:
        fn.__code__ = fake
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        fn.__code__ = original

    try:
        _clip_train(guard, net, opt, {3: swap_clip_restore}, steps=5)
    finally:
        fn.__code__ = original
        guard.close()
    (alert,) = [a for a in guard.alerts if a.rule.value == MONKEYPATCH]
    assert alert.step == 3 and alert.finding.location.path == "torch.nn.utils.clip_grad_norm_"
    assert "put back" in alert.finding.message
    assert alert.finding.evidence["site"].startswith(__file__)


def test_the_source_comparison_is_waited_for_by_the_third_step(monkeypatch: Any) -> None:
    """A function no step reaches (``default_collate``: this job has no loader) is left
    to the background comparison. The thread is held until step 3 begins: its alert must
    be in by the end of step 3 all the same (the check waits for it there)."""
    collate = importlib.import_module("torch.utils.data._utils.collate")
    fn = collate.default_collate
    assert isinstance(fn, types.FunctionType)
    fake = _fake_code(fn, "def default_collate(batch):\n    return batch\n")
    gate = threading.Event()
    real = check.verify_source

    def held(*args: Any, **kwargs: Any) -> Any:
        assert gate.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(check, "verify_source", held)
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    with _swapped(fn, fake):
        guard = Guard(net, opt, checks=[CodeCheck()], ledger=False, every=10_000)
        try:
            assert not [a for a in guard.alerts if "default_collate" in a.finding.location.path]
            guardkit.train(net, opt, guard, steps=3, attacks={3: gate.set})
            found = [a for a in guard.alerts if "default_collate" in a.finding.location.path]
        finally:
            gate.set()
            guard.close()
    assert [a.rule.value for a in found] == [MONKEYPATCH]
    assert found[0].step is not None and found[0].step <= check.VERIFY_BY


def test_an_honest_run_touching_no_function_state_is_silent(tmp_path: Path) -> None:
    """Clipping every step with the real function and default source comparison."""
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    check_ = CodeCheck()
    guard = Guard(net, opt, checks=[check_], ledger=tmp_path / "ledger", every=2)
    try:
        _clip_train(guard, net, opt, {}, steps=6)
        assert check_.wait_verified(120)
    finally:
        guard.close()
    assert guard.alerts == []
