"""The gradient check on one rank: ``.grad`` at the optimizer step is what backward gave.

It trusts that its tensor hook runs first and that nothing but accumulation, one uniform
scale (clip by norm, unscale) and one clamp (clip by value) stands between the backward
pass and the optimizer. The attacks edit exactly that path: a post-accumulate hook, a
tensor hook registered before the guard, a write between two steps, a removed hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from guardkit import SpyGuard, model
from trainguard.guard.checks.gradients import GradientCheck

Loop = Callable[[Any, torch.optim.Optimizer, int], None]


def _run(
    loop: Loop | None = None,
    *,
    steps: int = 6,
    before: Callable[[Any], Any] | None = None,
    after: Callable[[Any, SpyGuard], Any] | None = None,
) -> tuple[list[tuple[str, int | None, str]], SpyGuard]:
    net = model()
    if before is not None:
        before(net)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = SpyGuard(net, opt, checks=[GradientCheck()])
    if after is not None:
        after(net, guard)
    gen = torch.Generator().manual_seed(3)
    for step in range(1, steps + 1):
        if loop is None:
            x = torch.randn(8, 16, generator=gen)
            net(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        else:
            loop(net, opt, step)
        guard.step()
    guard.close()
    return [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts], guard


def _batch(step: int, micro: int = 0) -> torch.Tensor:
    return torch.randn(8, 16, generator=torch.Generator().manual_seed(step * 10 + micro))


def test_honest_plain_loop_is_silent() -> None:
    assert _run()[0] == []


def test_clip_grad_norm_is_one_scale() -> None:
    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        (net(_batch(step)).pow(2).mean() * 50).backward()
        assert float(torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)) > 0.01
        opt.step()
        opt.zero_grad()

    assert _run(loop)[0] == []


def test_clip_grad_value_is_a_clamp_and_recorded() -> None:
    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        net(_batch(step)).pow(2).mean().backward()
        torch.nn.utils.clip_grad_value_(net.parameters(), 0.005)
        opt.step()
        opt.zero_grad()

    alerts, guard = _run(loop)
    assert alerts == []
    assert guard.events("gradients.value_clipped")[0]["clip"] == pytest.approx(0.005)


def test_accumulation_with_zeroed_grads_and_grad_scaler_is_silent() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)

    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        for micro in range(4):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = net(_batch(step, micro)).pow(2).mean() / 4
            scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.05)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=False)

    assert _run(loop)[0] == []


def test_gradients_kept_across_steps_and_autograd_grad_are_silent() -> None:
    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        x = _batch(step)
        # a gradient penalty computed with autograd.grad: returned, never accumulated
        penalty = torch.autograd.grad(net(x).sum(), list(net.parameters()), create_graph=True)
        loss = net(x).pow(2).mean() + 1e-3 * sum(g.pow(2).sum() for g in penalty)
        loss.backward()
        opt.step()
        if step % 2 == 0:
            opt.zero_grad()  # zeroed every other step only: the rest carry over

    assert _run(loop)[0] == []


def test_post_accumulate_hook_scaling_one_layer_is_caught() -> None:
    def after(net: Any, guard: SpyGuard) -> None:
        def sabotage(p: torch.Tensor) -> None:
            assert p.grad is not None
            p.grad.mul_(3.0)

        net[2].weight.register_post_accumulate_grad_hook(sabotage)

    alerts, _ = _run(after=after)
    assert ("runtime.gradient_divergence", 1, "gradients:reduction") in alerts


def test_tensor_hook_registered_before_the_guard_runs_after_its_tap() -> None:
    def before(net: Any) -> None:
        net[0].bias.register_hook(lambda g: g + 1e-3)  # a constant pushed into one layer

    alerts, guard = _run(before=before)
    assert ("runtime.gradient_divergence", 1, "gradients:reduction") in alerts
    parameters = [a.finding.evidence.get("parameter") for a in guard.alerts]
    assert parameters == ["0.bias"]


def test_uniform_scale_up_is_caught() -> None:
    def double(p: torch.Tensor) -> None:
        assert p.grad is not None
        p.grad.mul_(2.0)

    def after(net: Any, guard: SpyGuard) -> None:
        for p in net.parameters():
            p.register_post_accumulate_grad_hook(double)

    alerts, guard = _run(after=after)
    assert alerts and {a[2] for a in alerts} == {"gradients:reduction"}
    assert guard.alerts[0].finding.evidence["scale"] == pytest.approx(2.0)


def test_write_between_steps_is_caught() -> None:
    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        opt.zero_grad(set_to_none=False)
        if step == 4:
            net[2].weight.grad.add_(0.01)
        net(_batch(step)).pow(2).mean().backward()
        opt.step()

    alerts, guard = _run(loop)
    assert alerts == [("runtime.gradient_divergence", 4, "gradients:reduction")]
    assert "between the last optimizer step" in guard.alerts[0].finding.message


def test_deleted_grad_of_a_reached_parameter_is_caught() -> None:
    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        net(_batch(step)).pow(2).mean().backward()
        if step == 3:
            net[0].bias.grad = None  # the layer silently frozen for one step
        opt.step()
        opt.zero_grad()

    assert _run(loop)[0] == [("runtime.gradient_divergence", 3, "gradients:reduction")]


def test_grad_written_for_a_parameter_no_backward_reached() -> None:
    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        hidden = net[1](net[0](_batch(step)))
        if step >= 4:
            hidden = hidden.detach()  # honest: the first layer is frozen from step 4
        net[2](hidden).pow(2).mean().backward()
        if step == 5:
            net[0].bias.grad = torch.full_like(net[0].bias, 0.5)
        opt.step()
        opt.zero_grad()

    alerts, guard = _run(loop)
    assert alerts == [("runtime.gradient_divergence", 5, "gradients:reduction")]
    assert "without a backward pass" in guard.alerts[0].finding.message


def test_removed_hook_is_an_alert_and_comes_back() -> None:
    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        if step == 2:
            hooks = net[2].weight._backward_hooks
            assert hooks is not None
            hooks.clear()
        net(_batch(step)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()

    alerts, _ = _run(loop)
    assert ("runtime.gradient_divergence", 2, "gradients:hooks") in alerts
    hooks = [a for a in alerts if a[2] == "gradients:hooks"]
    assert len(hooks) == 1


def _closure_loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = net(_batch(step)).pow(2).mean()
        loss.backward()
        return loss

    opt.step(closure)  # Lightning's way: the backward runs inside the step


def test_step_with_a_closure_is_judged_after_the_update() -> None:
    assert _run(_closure_loop)[0] == []

    def after(net: Any, guard: SpyGuard) -> None:
        def sabotage(p: torch.Tensor) -> None:
            assert p.grad is not None
            p.grad.add_(1e-3)

        net[0].bias.register_post_accumulate_grad_hook(sabotage)

    alerts, guard = _run(_closure_loop, after=after)
    assert ("runtime.gradient_divergence", 1, "gradients:reduction") in alerts
    assert guard.alerts[0].finding.evidence["parameter"] == "0.bias"


def test_guard_built_under_no_grad() -> None:
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with torch.no_grad():
        guard = SpyGuard(net, opt, checks=[GradientCheck()])
    net(_batch(1)).pow(2).mean().backward()
    opt.step()
    guard.step()
    guard.close()
    assert guard.alerts == []


def test_accumulation_finished_inside_a_closure_is_silent() -> None:
    def loop(net: Any, opt: torch.optim.Optimizer, step: int) -> None:
        net(_batch(step, 0)).pow(2).mean().backward()  # Lightning's accumulating batch

        def closure() -> torch.Tensor:
            loss = net(_batch(step, 1)).pow(2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        opt.zero_grad()

    assert _run(loop)[0] == []
