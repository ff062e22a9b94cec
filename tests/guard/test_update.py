"""The update check: honest SGD/Adam/AdamW steps raise nothing; a step that is not the
formula (a patched optimizer function) is caught at the step it starts."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import pytest

torch = pytest.importorskip("torch")
import torch.optim.adam as adam_module  # noqa: E402
import torch.optim.sgd as sgd_module  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from trainguard.findings import Rule, Severity  # noqa: E402
from trainguard.guard import Guard  # noqa: E402
from trainguard.guard.checks import optim_math as om  # noqa: E402
from trainguard.guard.checks.update import UNVERIFIED, UpdateCheck  # noqa: E402
from trainguard.ledger import read_records  # noqa: E402

KEY = bytes(range(32))


def small_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)
    )


def train(
    model: nn.Module,
    opt: Any,
    guard: Guard,
    steps: int,
    *,
    scheduler: Any = None,
    clip: float | None = None,
    scaler: Any = None,
    autocast: Any = None,
    seed: int = 1,
    spikes: frozenset[int] = frozenset(),
) -> None:
    gen = torch.Generator().manual_seed(seed)
    first = next(model.parameters())
    for i in range(steps):
        x = torch.randn(8, 16, generator=gen).to(first.device, first.dtype)
        y = torch.randn(8, 4, generator=gen).to(first.device, first.dtype)
        opt.zero_grad()
        with autocast if autocast is not None else contextlib.nullcontext():
            loss = F.mse_loss(model(x).float(), y.float())
        if i in spikes:  # scaled, this overflows: GradScaler must skip the step
            loss = loss * 1e36
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip is not None:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
        guard.step(loss)
        if scheduler is not None:
            scheduler.step()


def guarded(model: nn.Module, opt: Any, **kwargs: Any) -> tuple[Guard, UpdateCheck]:
    check = UpdateCheck(**kwargs)
    guard = Guard(model, opt, checks=[check], ledger=False, key=KEY)
    return guard, check


def assert_clean(guard: Guard, check: UpdateCheck, steps: int) -> None:
    assert [a.finding.message for a in guard.alerts] == []
    assert check.verified_steps == steps
    assert check.checked_elements > 0


@contextlib.contextmanager
def patched(module: Any, name: str, make: Callable[[Any], Any]) -> Iterator[None]:
    """Replace ``module.name`` by ``make(original)``; always restored."""
    original = getattr(module, name)
    setattr(module, name, make(original))
    try:
        yield
    finally:
        setattr(module, name, original)


# -- honest runs -----------------------------------------------------------------------

IMPLS = {"foreach": {"foreach": True}, "single": {"foreach": False}, "fused": {"fused": True}}

SGD_VARIANTS = [
    {"lr": 0.05},
    {"lr": 0.05, "momentum": 0.9},
    {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
    {"lr": 0.05, "momentum": 0.8, "dampening": 0.3},
    {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.05},
    {"lr": 0.03, "momentum": 0.5, "maximize": True, "weight_decay": 0.01},
]


def grouped(variants: list[dict[str, Any]], seed: int = 0) -> tuple[nn.Module, list[Any]]:
    """One small layer per variant, each its own param group: one run covers them all."""
    torch.manual_seed(seed)
    layers = [nn.Linear(16, 16) for _ in variants[:-1]] + [nn.Linear(16, 4)]
    mods: list[nn.Module] = []
    for layer in layers:
        mods += [layer, nn.Tanh()]
    model = nn.Sequential(*mods[:-1])
    groups = [
        {"params": list(layer.parameters()), **v} for layer, v in zip(layers, variants, strict=True)
    ]
    return model, groups


@pytest.mark.parametrize("impl", sorted(IMPLS))
def test_honest_sgd(impl: str) -> None:
    """Plain, momentum, nesterov, dampening, weight decay and maximize, in one optimizer."""
    model, groups = grouped(SGD_VARIANTS)
    opt = torch.optim.SGD(groups, **IMPLS[impl])
    guard, check = guarded(model, opt)
    train(model, opt, guard, 25)
    assert_clean(guard, check, 25)


ADAM_VARIANTS = [
    {},
    {"weight_decay": 0.1},
    {"amsgrad": True, "weight_decay": 0.01},
    {"maximize": True},
    {"decoupled_weight_decay": True, "weight_decay": 0.1, "betas": (0.8, 0.95)},
]
ADAMW_VARIANTS = [
    {},
    {"weight_decay": 0.1, "betas": (0.8, 0.95)},
    {"amsgrad": True, "eps": 1e-6},
    {"maximize": True, "amsgrad": True, "weight_decay": 0.3},
]


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
def test_honest_adam(cls: str, impl: str) -> None:
    """L2 and decoupled weight decay, amsgrad, maximize, betas, eps, per param group."""
    model, groups = grouped(ADAM_VARIANTS if cls == "Adam" else ADAMW_VARIANTS)
    opt = getattr(torch.optim, cls)(groups, lr=1e-2, **IMPLS[impl])
    guard, check = guarded(model, opt)
    train(model, opt, guard, 25)
    assert_clean(guard, check, 25)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_honest_other_dtypes(name: str, dtype: Any) -> None:
    model = small_model().to(dtype)
    if name == "sgd":
        opt: Any = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2, amsgrad=True)
    guard, check = guarded(model, opt)
    train(model, opt, guard, 20)
    assert_clean(guard, check, 20)


def test_honest_warmup_cosine_and_clipping() -> None:
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=0.1)
    warm = 5

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / 30))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    guard, check = guarded(model, opt)
    train(model, opt, guard, 30, scheduler=sched, clip=0.05)
    assert_clean(guard, check, 30)


def test_honest_sgd_steplr_and_clipping() -> None:
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.3)
    guard, check = guarded(model, opt)
    train(model, opt, guard, 30, scheduler=sched, clip=0.1)
    assert_clean(guard, check, 30)


def test_honest_bf16_autocast() -> None:
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    guard, check = guarded(model, opt)
    train(model, opt, guard, 20, autocast=torch.autocast("cpu", dtype=torch.bfloat16))
    assert_clean(guard, check, 20)


@pytest.mark.parametrize("fused", [False, True])
def test_honest_grad_scaler(fused: bool) -> None:
    """The scaler unscales before ``step`` (or, fused, hands the kernel ``grad_scale`` and
    ``found_inf``). A huge initial scale makes the first steps overflow: the unfused path
    skips ``step``; the fused path runs it and the kernel must change nothing."""
    model = small_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, fused=fused)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=4)
    guard, check = guarded(model, opt)
    spikes = frozenset({0, 7, 8, 15})
    train(model, opt, guard, 25, scaler=scaler, clip=None if fused else 0.5, spikes=spikes)
    assert [a.finding.message for a in guard.alerts] == []
    # unfused: the scaler never calls step() on overflow; fused: it does, the kernel skips
    assert guard.steps == (25 if fused else 25 - len(spikes))
    assert check.verified_steps == guard.steps
    counts = {float(opt.state[p]["step"]) for p in model.parameters()}
    assert counts == {25.0 - len(spikes)}


def test_honest_fused_sgd_grad_scaler() -> None:
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, fused=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    guard, check = guarded(model, opt)
    train(model, opt, guard, 20, scaler=scaler)
    assert [a.finding.message for a in guard.alerts] == []
    assert check.verified_steps == guard.steps == 20


def test_honest_params_without_grad() -> None:
    """An unused layer (grad None) and a frozen one are in the optimizer: they must stay
    put, and the check does verify it (and does not mistake them for an update)."""
    torch.manual_seed(0)
    used = nn.Linear(16, 4)
    unused = nn.Linear(16, 4)
    frozen = nn.Linear(4, 4)
    frozen.requires_grad_(False)
    model = nn.ModuleDict({"used": used, "unused": unused, "frozen": frozen})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    guard, check = guarded(model, opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        loss = frozen(used(torch.randn(8, 16, generator=gen))).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss)
    assert unused.weight.grad is None and frozen.weight.grad is None
    assert_clean(guard, check, 20)


def test_honest_resume_from_checkpoint() -> None:
    """A guard attached to an optimizer that already has state (loaded from a
    checkpoint): tensor ``step`` counts, existing moments."""
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    train(model, opt, Guard(model, opt, checks=[], ledger=False), 10)
    saved = opt.state_dict()
    fresh = torch.optim.Adam(model.parameters(), lr=1e-2, amsgrad=True)
    fresh.load_state_dict(saved)
    guard, check = guarded(model, fresh)
    train(model, fresh, guard, 15, seed=2)
    assert_clean(guard, check, 15)


def test_honest_closure() -> None:
    """With a closure the gradients are computed inside ``step``: read after it."""
    model = small_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    guard, check = guarded(model, opt)
    gen = torch.Generator().manual_seed(1)
    for _ in range(15):
        x = torch.randn(8, 16, generator=gen)

        def closure(x: Any = x) -> Any:
            opt.zero_grad()
            loss = model(x).pow(2).mean()
            loss.backward()
            return loss

        opt.step(closure)
        guard.step()
    assert_clean(guard, check, 15)


def test_rotation_covers_every_parameter() -> None:
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(10)])  # 20 parameters
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen: set[str] = set()
    check = UpdateCheck(tensors_per_step=3)
    original = check._plan

    def spy(*args: Any) -> Any:
        sample = original(*args)
        if sample is not None:
            seen.add(sample.name)
        return sample

    check._plan = spy  # type: ignore[method-assign]
    guard = Guard(model, opt, checks=[check], ledger=False, key=KEY)
    train_steps = math.ceil(20 / 3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(train_steps):
        opt.zero_grad()
        model(torch.randn(2, 4, generator=gen)).sum().backward()
        opt.step()
    assert seen == {n for n, _ in model.named_parameters()}
    assert guard.alerts == []


# -- what cannot be verified is said, not passed -------------------------------------


def unverified(path: Any) -> list[Any]:
    return [r for r in read_records(path) if r.message == UNVERIFIED]


def test_unmodelled_optimizer_is_recorded_not_alerted(tmp_path: Any) -> None:
    model = small_model()
    opt = torch.optim.RMSprop(model.parameters(), lr=1e-3)
    guard = Guard(model, opt, checks=[UpdateCheck()], ledger=tmp_path / "ledger", key=KEY)
    train(model, opt, guard, 5)
    guard.close()
    assert guard.alerts == []
    records = unverified(tmp_path / "ledger")
    assert len(records) == 1
    assert records[0].evidence["reason"] == "optimizer class not modelled"
    assert records[0].evidence["optimizer"] == "RMSprop"


def test_subclass_is_not_trusted_to_be_adam(tmp_path: Any) -> None:
    class MyAdam(torch.optim.Adam):  # may override step: not the formula we know
        pass

    model = small_model()
    opt = MyAdam(model.parameters(), lr=1e-3)
    guard = Guard(model, opt, checks=[UpdateCheck()], ledger=tmp_path / "ledger", key=KEY)
    train(model, opt, guard, 3)
    guard.close()
    assert guard.alerts == []
    [record] = unverified(tmp_path / "ledger")
    assert record.evidence["optimizer"].endswith("MyAdam")


def test_differentiable_group_is_recorded(tmp_path: Any) -> None:
    """``differentiable=True`` (meta-learning: the step is part of a graph) is not modelled."""
    leaf = torch.randn(6, requires_grad=True)
    weights = leaf * 1.0  # a non-leaf "parameter", as differentiable optimizers use
    opt = torch.optim.SGD([weights], lr=0.1, differentiable=True)
    guard = Guard(None, opt, checks=[UpdateCheck()], ledger=tmp_path / "ledger", key=KEY)
    for _ in range(3):
        weights.grad = torch.randn(6)
        opt.step()
    guard.close()
    assert guard.alerts == []
    reasons = [r.evidence["reason"] for r in unverified(tmp_path / "ledger")]
    assert reasons == ["capturable or differentiable param group"]


# -- attacks -----------------------------------------------------------------------------

HONEST = 6  # honest steps before the attack; the attack starts at step HONEST + 1


def run_attack(
    opt_factory: Callable[[Any], Any],
    module: Any,
    name: str,
    make: Callable[[Any], Any],
    *,
    model: nn.Module | None = None,
    key: bytes = KEY,
    attacked: int = 3,
    ledger: Any = False,
) -> Guard:
    model = model if model is not None else small_model()
    opt = opt_factory(model.parameters())
    guard = Guard(model, opt, checks=[UpdateCheck()], ledger=ledger, key=key)
    train(model, opt, guard, HONEST)
    assert guard.alerts == []
    with patched(module, name, make):
        train(model, opt, guard, attacked, seed=7)
    return guard


def assert_caught(guard: Guard, quantity: str, optimizer: str) -> None:
    assert guard.alerts, "the attack went unnoticed"
    first = min(a.step for a in guard.alerts)
    assert first == HONEST + 1
    for alert in guard.alerts:
        assert alert.rule is Rule.UPDATE_MISMATCH
        assert alert.severity is Severity.CRITICAL
        assert alert.finding.location.path.startswith("param:")
    at_start = [a for a in guard.alerts if a.step == HONEST + 1]
    evidence = at_start[0].finding.evidence
    assert evidence["quantity"] == quantity
    assert evidence["optimizer"] == optimizer
    assert isinstance(evidence["index"], int)
    assert evidence["expected"] != evidence["actual"]


def flip_signs(fraction: float, seed: int = 1234) -> Callable[[Any], Any]:
    """Run the real step, then reverse the update of ``fraction`` of every tensor's
    elements (a sabotage too small to see in the loss at first)."""
    gen = torch.Generator().manual_seed(seed)

    def make(original: Any) -> Any:
        def wrapper(params: list[Any], *args: Any, **kwargs: Any) -> None:
            before = [p.detach().clone() for p in params]
            original(params, *args, **kwargs)
            with torch.no_grad():
                for p, old in zip(params, before, strict=True):
                    mask = torch.rand(p.shape, generator=gen) < fraction
                    p[mask] = (2 * old - p)[mask]

        return wrapper

    return make


def scaled_lr(factor: float) -> Callable[[Any], Any]:
    def make(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> None:
            kwargs["lr"] = kwargs["lr"] * factor
            original(*args, **kwargs)

        return wrapper

    return make


def no_weight_decay(original: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        kwargs["weight_decay"] = 0.0
        original(*args, **kwargs)

    return wrapper


def corrupt_second_moment(original: Any) -> Any:
    def wrapper(
        params: Any, grads: Any, exp_avgs: Any, exp_avg_sqs: Any, *a: Any, **k: Any
    ) -> None:
        original(params, grads, exp_avgs, exp_avg_sqs, *a, **k)
        for v in exp_avg_sqs:
            v.mul_(1.001)  # a 0.1% nudge: the effective lr drifts up

    return wrapper


def adamw(params: Any) -> Any:
    return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=False)


def test_sign_flip_on_one_percent_is_caught_at_its_first_step(tmp_path: Any) -> None:
    ledger = tmp_path / "ledger"
    guard = run_attack(adamw, adam_module, "_single_tensor_adam", flip_signs(0.01), ledger=ledger)
    assert_caught(guard, "param", "AdamW")
    guard.close()
    recorded = read_records(ledger, Rule.UPDATE_MISMATCH)
    assert recorded and recorded[0].step == HONEST + 1
    assert recorded[0].severity == "critical"
    assert recorded[0].evidence["quantity"] == "param"


def test_sign_flip_detection_probability_is_high() -> None:
    """With the defaults (8 tensors x 128 elements), a 1% sign flip escapes one step with
    probability (0.99)^n; on this 8-parameter model n = 768: 4e-4. Across 25 run keys,
    every attacked first step is caught."""
    sampled = 4 * 128 + 4 * 64  # four 64x64 weights (128 each) + four biases (all 64)
    assert 0.99**sampled < 1e-3
    caught = 0
    runs = 25
    for run in range(runs):
        torch.manual_seed(run)
        model = nn.Sequential(*[nn.Linear(64, 64) for _ in range(4)])
        key = run.to_bytes(4, "little") * 8
        guard = Guard(
            model, adamw(model.parameters()), checks=[UpdateCheck()], ledger=False, key=key
        )
        opt = guard.optimizer
        gen = torch.Generator().manual_seed(run)

        def step(opt: Any = opt, model: nn.Module = model, gen: Any = gen) -> None:
            opt.zero_grad()
            model(torch.randn(4, 64, generator=gen)).pow(2).mean().backward()
            opt.step()

        step()
        with patched(adam_module, "_single_tensor_adam", flip_signs(0.01, seed=run)):
            step()
        caught += any(a.step == 2 and a.rule is Rule.UPDATE_MISMATCH for a in guard.alerts)
    assert caught == runs


def test_scaled_lr_is_caught() -> None:
    guard = run_attack(adamw, adam_module, "_single_tensor_adam", scaled_lr(1.01))
    assert_caught(guard, "param", "AdamW")


def test_skipped_weight_decay_is_caught() -> None:
    guard = run_attack(adamw, adam_module, "_single_tensor_adam", no_weight_decay)
    assert_caught(guard, "param", "AdamW")


def test_skipped_l2_weight_decay_is_caught_in_the_moments() -> None:
    def adam_l2(params: Any) -> Any:
        return torch.optim.Adam(params, lr=1e-2, weight_decay=0.1, foreach=False)

    guard = run_attack(adam_l2, adam_module, "_single_tensor_adam", no_weight_decay)
    assert_caught(guard, "exp_avg", "Adam")


def test_corrupted_second_moment_is_caught() -> None:
    guard = run_attack(adamw, adam_module, "_single_tensor_adam", corrupt_second_moment)
    assert_caught(guard, "exp_avg_sq", "AdamW")


def test_foreach_path_attack_is_caught() -> None:
    def adamw_foreach(params: Any) -> Any:
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=True)

    guard = run_attack(adamw_foreach, adam_module, "_multi_tensor_adam", scaled_lr(1.01))
    assert_caught(guard, "param", "AdamW")


def test_fused_path_attack_is_caught() -> None:
    def adam_fused(params: Any) -> Any:
        return torch.optim.Adam(params, lr=1e-2, amsgrad=True, fused=True)

    guard = run_attack(adam_fused, adam_module, "_fused_adam", flip_signs(0.02))
    assert_caught(guard, "param", "Adam")


def test_sgd_momentum_tamper_is_caught() -> None:
    def sgd(params: Any) -> Any:
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, foreach=False)

    def halve_momentum(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> None:
            kwargs["momentum"] = 0.45
            original(*args, **kwargs)

        return wrapper

    guard = run_attack(sgd, sgd_module, "_single_tensor_sgd", halve_momentum)
    assert_caught(guard, "momentum_buffer", "SGD")


def test_change_to_a_parameter_without_grad_is_caught() -> None:
    torch.manual_seed(0)
    model = nn.ModuleDict({"used": nn.Linear(16, 4), "unused": nn.Linear(16, 4)})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    guard = Guard(model, opt, checks=[UpdateCheck()], ledger=False, key=KEY)
    target = model["unused"].weight

    def poke(original: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> None:
            original(*args, **kwargs)
            with torch.no_grad():
                target[0, 0] += 1e-3

        return wrapper

    gen = torch.Generator().manual_seed(0)
    for step in range(1, 6):
        opt.zero_grad()
        model["used"](torch.randn(4, 16, generator=gen)).pow(2).mean().backward()
        if step == 4:
            with patched(adam_module, "_single_tensor_adam", poke):
                opt.step()
        else:
            opt.step()
    assert [(a.step, a.finding.location.path) for a in guard.alerts] == [(4, "param:unused.weight")]
    assert "no gradient" in guard.alerts[0].finding.message


# -- CUDA (foreach is the default there; fused kernels differ from the CPU ones) -------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("impl", ["default", "single", "fused"])
@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_honest_cuda(cls: str, impl: str, dtype: Any) -> None:
    variants = {"SGD": SGD_VARIANTS, "Adam": ADAM_VARIANTS, "AdamW": ADAMW_VARIANTS}[cls]
    model, groups = grouped(variants)
    model.to("cuda", dtype)
    flags = {"default": {}, "single": {"foreach": False}, "fused": {"fused": True}}[impl]
    opt = getattr(torch.optim, cls)(groups, **({} if cls == "SGD" else {"lr": 1e-2}), **flags)
    guard, check = guarded(model, opt)
    train(model, opt, guard, 25)
    assert_clean(guard, check, 25)


@cuda
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("cls", ["SGD", "AdamW"])
def test_honest_cuda_fp16_grad_scaler(cls: str, fused: bool) -> None:
    model = small_model().to("cuda")
    kwargs: dict[str, Any] = {"momentum": 0.9} if cls == "SGD" else {"weight_decay": 0.1}
    opt = getattr(torch.optim, cls)(model.parameters(), lr=1e-2, fused=fused, **kwargs)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**16, growth_interval=4)
    guard, check = guarded(model, opt)
    spikes = frozenset({0, 7, 8, 15})
    amp = torch.autocast("cuda", dtype=torch.float16)
    train(model, opt, guard, 25, scaler=scaler, autocast=amp, spikes=spikes)
    assert [a.finding.message for a in guard.alerts] == []
    assert guard.steps == (25 if fused else 25 - len(spikes))
    assert check.verified_steps == guard.steps


@cuda
def test_cuda_foreach_attack_is_caught() -> None:
    def adamw_cuda(params: Any) -> Any:
        return torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)  # foreach on CUDA

    def flip_cuda(fraction: float) -> Callable[[Any], Any]:
        def make(original: Any) -> Any:
            def wrapper(params: list[Any], *args: Any, **kwargs: Any) -> None:
                before = [p.detach().clone() for p in params]
                original(params, *args, **kwargs)
                with torch.no_grad():
                    for p, old in zip(params, before, strict=True):
                        mask = torch.rand(p.shape, device=p.device) < fraction
                        p[mask] = (2 * old - p)[mask]

            return wrapper

        return make

    guard = run_attack(
        adamw_cuda,
        adam_module,
        "_multi_tensor_adam",
        flip_cuda(0.01),
        model=small_model().to("cuda"),
    )
    assert_caught(guard, "param", "AdamW")


def test_patches_are_restored() -> None:
    assert adam_module._single_tensor_adam.__name__ == "_single_tensor_adam"
    assert sgd_module._single_tensor_sgd.__name__ == "_single_tensor_sgd"


# -- the reference math on its own -----------------------------------------------------


def test_reference_matches_torch_single_tensor_adamw_in_float64() -> None:
    """In float64 the reference and torch agree to ~1e-15: the formula is the same."""
    torch.manual_seed(0)
    p = torch.randn(50, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([p], lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)
    h = om.AdamHyper(1e-2, 0.9, 0.999, 1e-8, 0.1, True, False, True)
    prec = om.Precision.of(2.0**-52, 2.0**-1022, 1.0e308)
    for step in range(1, 4):
        p.grad = torch.randn(50, dtype=torch.float64)
        state = opt.state[p]
        old = (
            {k: state[k].tolist() for k in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")}
            if state
            else None
        )
        before, grad = p.detach().tolist(), p.grad.tolist()
        opt.step()
        zeros = [0.0] * 50
        expected = om.expect_adam(
            h,
            prec,
            float(step),
            param=before,
            grad=grad,
            exp_avg=old["exp_avg"] if old else zeros,
            exp_avg_sq=old["exp_avg_sq"] if old else zeros,
            max_exp_avg_sq=old["max_exp_avg_sq"] if old else zeros,
            new_exp_avg=state["exp_avg"].tolist(),
            new_exp_avg_sq=state["exp_avg_sq"].tolist(),
            new_max_exp_avg_sq=state["max_exp_avg_sq"].tolist(),
        )
        actual = {
            "param": p.detach().tolist(),
            **{k: state[k].tolist() for k in state if k != "step"},
        }
        assert {e.quantity for e in expected} >= {"param", "exp_avg", "exp_avg_sq"}
        for e in expected:
            worst = max(abs(a - b) for a, b in zip(e.values, actual[e.quantity], strict=True))
            assert worst < 1e-13, e.quantity
            assert om.compare(e, actual[e.quantity]) == (None, 0)


def test_compare_reports_first_mismatch_and_unjudged() -> None:
    e = om.Expected("param", [1.0, 2.0, math.inf, 4.0], [1e-6, 1e-6, 1.0, math.inf])
    mismatch, unjudged = om.compare(e, [1.0, 2.5, 3.0, 9.0])
    assert mismatch is not None
    assert (mismatch.position, mismatch.expected, mismatch.actual, mismatch.count) == (
        1,
        2.0,
        2.5,
        1,
    )
    assert unjudged == 2
    exact = om.expect_unchanged("param", [1.0, math.nan])
    assert om.compare(exact, [1.0, math.nan]) == (None, 0)
    assert om.compare(exact, [1.0 + 2**-52, math.nan])[0] is not None


def test_accelerator_bound_covers_float32_scalars() -> None:
    """PyTorch's CUDA fused Adam computes ``1 - beta2`` from a float32 ``beta2``: off by
    1.3e-5 relative for 0.999 (seen on an H100). The CPU bound rejects that; the bound
    for accelerators accepts it, and still rejects a 0.1% corruption."""
    b2 = 0.999
    b2_f32 = torch.tensor(b2, dtype=torch.float32).item()
    grads = [5e-11, -3e-9, 2e-4, 0.7]
    gpu_like = [torch.tensor((1 - b2_f32) * g * g, dtype=torch.float32).item() for g in grads]
    h = om.AdamHyper(1e-3, 0.9, b2, 1e-8, 0.0, False, False, True)
    zeros = [0.0] * len(grads)

    def verdict(float32_scalars: bool, actual: list[float]) -> Any:
        prec = om.Precision.of(2.0**-23, 2.0**-126, 3.4e38, float32_scalars=float32_scalars)
        expected = om.expect_adam(
            h,
            prec,
            1.0,
            param=zeros,
            grad=grads,
            exp_avg=zeros,
            exp_avg_sq=zeros,
            max_exp_avg_sq=None,
            new_exp_avg=zeros,
            new_exp_avg_sq=actual,
            new_max_exp_avg_sq=None,
        )
        return om.compare(expected[1], actual)[0]

    assert verdict(False, gpu_like) is not None
    assert verdict(True, gpu_like) is None
    assert verdict(True, [v * 1.001 for v in gpu_like]) is not None


def test_deferred_judgment_reports_the_step_it_belongs_to(monkeypatch: Any) -> None:
    """The GPU path: samples travel asynchronously and are judged once they land. Here
    the copies never say they are ready, so every judgment waits for close(); the
    alert still names the step of the attack."""
    from trainguard.guard.checks import update as update_module

    monkeypatch.setattr(update_module._Fetch, "ready", lambda self: False)
    model = small_model()
    opt = adamw(model.parameters())
    check = UpdateCheck(deferred=True)
    guard = Guard(model, opt, checks=[check], ledger=False, key=KEY)
    train(model, opt, guard, HONEST)
    assert guard.alerts == [] and check.verified_steps == 0 and len(check._queue) == HONEST
    with patched(adam_module, "_single_tensor_adam", flip_signs(0.01)):
        train(model, opt, guard, 3, seed=7)
    assert guard.alerts == []
    guard.close()
    assert check.verified_steps == HONEST + 3
    assert min(a.step for a in guard.alerts) == HONEST + 1
    assert {a.rule for a in guard.alerts} == {Rule.UPDATE_MISMATCH}
