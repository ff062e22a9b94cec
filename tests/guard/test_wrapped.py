"""``Guard`` takes the wrapped optimizers and schedulers users hold and unwraps them itself.

Real accelerate (``Accelerator.prepare``, gradient accumulation, a ``GradScaler`` that
skips overflowing steps) and Lightning's ``LightningOptimizer`` on CPU; DeepSpeed is
stood in for by a small class. The attacks: wrappers that lead nowhere (a cycle, a name
without an optimizer behind it), and tampering in a job whose optimizer came wrapped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import guardkit
from trainguard.errors import ConfigError
from trainguard.guard import Guard
from trainguard.guard.checks.weights import WeightsCheck
from trainguard.guard.wrapped import MAX_DEPTH, unwrap_optimizer, unwrap_schedulers
from trainguard.ledger import read_records

accelerate = pytest.importorskip("accelerate")

from accelerate import Accelerator  # noqa: E402
from accelerate.optimizer import AcceleratedOptimizer  # noqa: E402
from accelerate.scheduler import AcceleratedScheduler  # noqa: E402
from accelerate.state import AcceleratorState, GradientState  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_accelerate_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TRAINGUARD_LEDGER", raising=False)
    yield
    AcceleratorState._reset_state(True)  # accelerate's state is a process-wide singleton
    GradientState._reset_state()


class DeepSpeedLike:
    """DeepSpeed's shape: not a torch optimizer, keeps one in ``.optimizer``, forwards."""

    def __init__(self, optimizer: Any) -> None:
        self.optimizer = optimizer

    @property
    def param_groups(self) -> Any:
        return self.optimizer.param_groups

    def step(self, closure: Any = None) -> Any:
        return self.optimizer.step(closure)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)


def _prepared(**accelerator: Any) -> tuple[Accelerator, Any, Any, Any]:
    acc = Accelerator(cpu=True, **accelerator)
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min(1.0, (e + 1) / 4))
    net, opt, sched = acc.prepare(net, opt, sched)
    return acc, net, opt, sched


def _alerts(guard: Guard) -> list[tuple[str, int | None, str]]:
    return [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts]


# -- unwrapping ------------------------------------------------------------------------


def test_accelerate_wrappers_are_unwrapped_by_structure() -> None:
    _, _, opt, sched = _prepared()
    assert isinstance(opt, AcceleratedOptimizer) and isinstance(sched, AcceleratedScheduler)
    got = unwrap_optimizer(opt)
    assert got.value is opt.optimizer and type(got.value) is torch.optim.AdamW
    assert got.wrappers == ("accelerate.optimizer.AcceleratedOptimizer",)
    s = unwrap_schedulers(sched)
    assert s.value is sched.scheduler
    assert s.wrappers == ("accelerate.scheduler.AcceleratedScheduler",)
    listed = unwrap_schedulers([sched, sched.scheduler])
    assert listed.value == (sched.scheduler, sched.scheduler)


def test_deepspeed_and_lightning_shapes_and_nesting() -> None:
    opt = torch.optim.SGD(guardkit.model().parameters(), lr=0.1)
    assert unwrap_optimizer(DeepSpeedLike(opt)).value is opt
    assert unwrap_optimizer(opt).wrappers == ()
    nested = unwrap_optimizer(DeepSpeedLike(DeepSpeedLike(opt)))
    assert nested.value is opt and len(nested.wrappers) == 2
    lightning = pytest.importorskip("lightning.pytorch.core.optimizer")
    wrapped = lightning.LightningOptimizer(opt)
    assert isinstance(wrapped, torch.optim.SGD)  # it imitates the class it wraps
    assert unwrap_optimizer(wrapped).value is opt


def test_an_initialized_optimizer_that_holds_another_is_guarded_itself() -> None:
    """A Lookahead-style optimizer ran ``Optimizer.__init__``: its own step is the one
    that runs, so it is not peeled off."""
    inner = torch.optim.SGD(guardkit.model().parameters(), lr=0.1)

    class Lookahead(torch.optim.Optimizer):
        def __init__(self, base: torch.optim.Optimizer) -> None:
            super().__init__([p for g in base.param_groups for p in g["params"]], {"lr": 0.1})
            self.optimizer = base

    outer = Lookahead(inner)
    assert unwrap_optimizer(outer).value is outer


@pytest.mark.parametrize("shape", ["cycle", "name only", "too deep", "not an optimizer"])
def test_wrappers_that_lead_to_no_optimizer_are_a_config_error(shape: str) -> None:
    obj: Any
    if shape == "cycle":
        a, b = DeepSpeedLike(None), DeepSpeedLike(None)
        a.optimizer, b.optimizer = b, a
        obj = a
    elif shape == "name only":
        # the class is called AcceleratedOptimizer, but nothing behind it is an optimizer
        fake = type("AcceleratedOptimizer", (torch.optim.Optimizer,), {})
        obj = fake.__new__(fake)
        obj.__dict__["optimizer"] = DeepSpeedLike(None)
    elif shape == "too deep":
        obj = torch.optim.SGD(guardkit.model().parameters(), lr=0.1)
        for _ in range(MAX_DEPTH + 1):
            obj = DeepSpeedLike(obj)
    else:
        obj = object()
    with pytest.raises(ConfigError, match=r"no torch\.optim\.Optimizer to guard"):
        Guard(guardkit.model(), obj, ledger=False, process=False)


# -- accelerate, for real ----------------------------------------------------------------


def _train(acc: Accelerator, net: Any, opt: Any, sched: Any, guard: Guard, micro: int) -> None:
    gen = torch.Generator().manual_seed(3)
    for _ in range(micro):
        with acc.accumulate(net):
            loss = net(torch.randn(8, 16, generator=gen)).pow(2).mean()
            acc.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad()
        guard.step(loss=loss)


def test_prepared_objects_under_the_full_guard_raise_nothing(tmp_path: Path) -> None:
    acc, net, opt, sched = _prepared()
    guard = Guard(net, opt, scheduler=sched, ledger=tmp_path / "l", every=4, process=False)
    assert guard.optimizer is opt.optimizer and guard.scheduler is sched.scheduler
    _train(acc, net, opt, sched, guard, micro=10)
    guard.close()
    assert _alerts(guard) == []
    assert guard.steps == 10  # the wrapper's step reached the torch optimizer's hooks
    started = next(r for r in read_records(tmp_path / "l") if r.message == "guard.started")
    assert started.evidence["optimizer"] == "AdamW"
    assert started.evidence["scheduler"] == "LambdaLR"
    assert started.evidence["unwrapped"] == {
        "optimizer": ["accelerate.optimizer.AcceleratedOptimizer"],
        "scheduler": ["accelerate.scheduler.AcceleratedScheduler"],
    }


def test_gradient_accumulation_micro_steps_are_not_steps() -> None:
    acc, net, opt, sched = _prepared(gradient_accumulation_steps=2)
    guard = Guard(net, opt, scheduler=sched, ledger=False, every=2, process=False)
    _train(acc, net, opt, sched, guard, micro=12)
    guard.close()
    assert _alerts(guard) == []
    assert guard.steps == 6  # the wrapper skipped the inner step on every other call


def test_a_weight_write_in_an_accelerate_job_is_caught() -> None:
    acc, net, opt, sched = _prepared(gradient_accumulation_steps=2)
    guard = Guard(net, opt, scheduler=sched, ledger=False, checks=[WeightsCheck()])
    gen = torch.Generator().manual_seed(3)
    for micro in range(1, 9):
        if micro == 5:  # between optimizer steps 2 and 3, on a micro-step boundary
            net[0].weight.data[0, 0] += 1e-3
        with acc.accumulate(net):
            acc.backward(net(torch.randn(8, 16, generator=gen)).pow(2).mean())
            opt.step()
            sched.step()
            opt.zero_grad()
        guard.step()
    guard.close()
    assert _alerts(guard) == [("runtime.weight_tamper", 3, "param:0.weight")]


def _scaled_job() -> tuple[Any, Any, Any, Any]:
    _, net, opt, _ = _prepared()
    # a huge initial scale overflows the first steps: accelerate skips them, as on a GPU
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**118, growth_interval=1000)
    wrapped = AcceleratedOptimizer(opt.optimizer, scaler=scaler)
    return net, opt.optimizer, wrapped, scaler


def _scaled_steps(net: Any, wrapped: Any, scaler: Any, guard: Guard, n: int) -> list[bool]:
    gen = torch.Generator().manual_seed(5)
    skipped = []
    for _ in range(n):
        loss = net(torch.randn(8, 16, generator=gen)).pow(2).mean() * 1e4
        scaler.scale(loss).backward()
        wrapped.step()
        wrapped.zero_grad()
        guard.step(loss=loss)
        skipped.append(wrapped.step_was_skipped)
    return skipped


def test_steps_accelerate_skips_on_overflow_are_not_seen_or_judged() -> None:
    from trainguard.guard.checks.update import UpdateCheck

    net, _, wrapped, scaler = _scaled_job()
    guard = Guard(net, wrapped, ledger=False, checks=[WeightsCheck(), UpdateCheck()])
    skipped = _scaled_steps(net, wrapped, scaler, guard, 8)
    guard.close()
    assert skipped[0] and not all(skipped)
    assert guard.steps == skipped.count(False)
    assert _alerts(guard) == []


def test_accelerate_grad_scaler_is_not_a_monkeypatch() -> None:
    from trainguard.guard.checks.code import CodeCheck

    net, _, wrapped, scaler = _scaled_job()
    guard = Guard(net, wrapped, ledger=False, checks=[CodeCheck()], every=2)
    _scaled_steps(net, wrapped, scaler, guard, 6)
    guard.close()
    assert _alerts(guard) == []


def _patched_during_step(patch: Any) -> list[tuple[str, int | None, str]]:
    """A scaled accelerate job in which ``patch(inner, wrapper)`` returns what the inner
    optimizer's ``step`` is, instead of accelerate's patch, while the scaler steps."""
    from trainguard.guard.checks.code import CodeCheck

    net, inner, wrapped, scaler = _scaled_job()
    wrapped._optimizer_patched_step_method = patch(inner, wrapped)
    guard = Guard(net, wrapped, ledger=False, checks=[CodeCheck()], every=2)
    _scaled_steps(net, wrapped, scaler, guard, 6)
    guard.close()
    assert guard.steps > 1  # the inner optimizer stepped: the patch was on during them
    return _alerts(guard)


def _look_alike(inner: Any, wrapper: Any) -> Any:
    def patch_optimizer_step(accelerated_optimizer: Any, method: Any) -> Any:
        def patched_step(*args: Any, **kwargs: Any) -> Any:  # the same name and body
            accelerated_optimizer._accelerate_step_called = True
            return method(*args, **kwargs)

        return patched_step

    return patch_optimizer_step(wrapper, inner.step)


def _real_patch_around_another_step(inner: Any, wrapper: Any) -> Any:
    from accelerate.optimizer import patch_optimizer_step

    real = inner.step

    def insider_step(*args: Any, **kwargs: Any) -> Any:
        return real(*args, **kwargs)

    return patch_optimizer_step(wrapper, insider_step)


def _real_patch_for_another_wrapper(inner: Any, wrapper: Any) -> Any:
    from accelerate.optimizer import patch_optimizer_step

    other = AcceleratedOptimizer(torch.optim.SGD(guardkit.model().parameters(), lr=0.1))
    return patch_optimizer_step(other, inner.step)


@pytest.mark.parametrize(
    "patch", [_look_alike, _real_patch_around_another_step, _real_patch_for_another_wrapper]
)
def test_only_accelerates_own_patch_of_this_optimizer_is_accepted(patch: Any) -> None:
    """The acceptance trusts accelerate's code object and the two closure cells: a
    look-alike function, accelerate's patch around another step, or one made for another
    wrapper is still a replaced ``optimizer.step``."""
    alerts = _patched_during_step(patch)
    assert [a for a in alerts if a[0] == "runtime.monkeypatch" and a[2] == "optimizer.step"]


# -- a DeepSpeed-shaped wrapper ----------------------------------------------------------


def test_a_forwarding_wrapper_is_guarded_through_its_inner_optimizer() -> None:
    net = guardkit.model()
    inner = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    wrapper = DeepSpeedLike(inner)
    guard = Guard(net, wrapper, ledger=False, process=False)
    assert guard.optimizer is inner
    alerts = guardkit.train(net, wrapper, guard, steps=6)  # type: ignore[arg-type]
    guard.close()
    assert alerts == [] and guard.steps == 6


def test_a_wrapper_that_updates_the_weights_itself_is_caught() -> None:
    """The wrapper is not trusted to forward ``step``: one that writes the weights
    without the torch optimizer's step (so without its hooks) is named."""

    class Bypass(DeepSpeedLike):
        def step(self, closure: Any = None) -> Any:
            with torch.no_grad():
                for group in self.optimizer.param_groups:
                    for p in group["params"]:
                        p.add_(p.grad, alpha=-0.05)

    net = guardkit.model()
    wrapper = Bypass(torch.optim.SGD(net.parameters(), lr=0.05))
    guard = Guard(net, wrapper, ledger=False, checks=[WeightsCheck()])
    alerts = guardkit.train(net, wrapper, guard, steps=3)  # type: ignore[arg-type]
    guard.close()
    assert alerts[0][0] == "runtime.monkeypatch" and alerts[0][1] == 1
