"""Honest training under the full default guard raises nothing: every recipe the issue
names, each with all checks on (weights, update, hyper, rng, data, code, replicas,
anomalies, process)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from trainguard.guard import Guard

STEPS = 24


def _setup(
    opt_name: str, sched_name: str, seed: int = 0
) -> tuple[torch.nn.Module, torch.optim.Optimizer, Any, torch.utils.data.DataLoader[Any]]:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(32, 4)
    )
    if opt_name == "adamw":
        opt: torch.optim.Optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.1)
    else:
        opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    if sched_name == "cosine-warmup":
        sched: Any = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda e: min(1.0, (e + 1) / 5) * 0.5 * (1 + math.cos(math.pi * e / STEPS))
        )
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, 5, 0.5)
    gen = torch.Generator().manual_seed(seed)
    data = torch.utils.data.TensorDataset(torch.randn(96, 16, generator=gen), torch.randn(96, 4))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True, generator=gen)
    return net, opt, sched, loader


def _train(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sched: Any,
    loader: torch.utils.data.DataLoader[Any],
    guard: Guard,
    *,
    steps: int = STEPS,
    accumulate: int = 1,
    clip: float | None = None,
    autocast: bool = False,
    scaler: Any = None,
    target_scale: float = 1.0,
) -> None:
    done, micro = 0, 0
    while done < steps:
        for x, y in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                loss = torch.nn.functional.mse_loss(net(x).float(), y * target_scale) / accumulate
            (scaler.scale(loss) if scaler else loss).backward()
            micro += 1
            if micro % accumulate:
                guard.step(loss=loss)  # a micro-step: the guard must take it as one
                continue
            if scaler is not None:
                scaler.unscale_(opt)
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            opt.zero_grad()
            sched.step()
            guard.step(loss=loss)
            done += 1
            if done == steps:
                return


RECIPES: dict[str, dict[str, Any]] = {
    "AdamW + cosine warm-up + clipping": {"opt": "adamw", "sched": "cosine-warmup", "clip": 1.0},
    "SGD momentum + StepLR": {"opt": "sgd", "sched": "step"},
    "gradient accumulation x3": {"opt": "adamw", "sched": "cosine-warmup", "accumulate": 3},
    "bf16 autocast": {"opt": "adamw", "sched": "step", "autocast": True},
    "GradScaler with skipped steps": {"opt": "sgd", "sched": "step", "scaler": True},
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_honest_recipe_raises_nothing(name: str) -> None:
    recipe = RECIPES[name]
    net, opt, sched, loader = _setup(recipe["opt"], recipe["sched"])
    guard = Guard(net, opt, scheduler=sched, dataloader=loader, ledger=False, every=4)
    scaler = None
    if recipe.get("scaler"):
        # a huge initial scale overflows the first steps: they are skipped, as on a GPU
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, growth_interval=3)
    try:
        _train(net, opt, sched, loader, guard, accumulate=recipe.get("accumulate", 1),
               clip=recipe.get("clip"), autocast=recipe.get("autocast", False), scaler=scaler,
               target_scale=1e4 if scaler else 1.0)  # fmt: skip
    finally:
        guard.close()
    assert [(a.rule.value, a.step, a.finding.message) for a in guard.alerts] == []
    assert guard.steps > 0
    if scaler is not None:  # overflowed steps were skipped: fewer optimizer steps than loops
        assert guard.steps < STEPS


def test_resume_from_checkpoint_raises_nothing(tmp_path: Path) -> None:
    net, opt, sched, loader = _setup("adamw", "cosine-warmup")
    guard = Guard(net, opt, scheduler=sched, dataloader=loader, ledger=tmp_path / "l", every=4)
    _train(net, opt, sched, loader, guard, steps=10)
    guard.close()
    state = {"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    torch.save(state, tmp_path / "ckpt.pt")

    net2, opt2, sched2, loader2 = _setup("adamw", "cosine-warmup", seed=1)
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    net2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["opt"])
    sched2.load_state_dict(loaded["sched"])
    guard2 = Guard(net2, opt2, scheduler=sched2, dataloader=loader2, ledger=tmp_path / "l", every=4)
    _train(net2, opt2, sched2, loader2, guard2, steps=10)
    guard2.close()
    assert guard.alerts == [] and guard2.alerts == []


def test_a_checkpoint_loaded_mid_run_inside_authorized(tmp_path: Path) -> None:
    net, opt, sched, loader = _setup("sgd", "step")
    guard = Guard(net, opt, scheduler=sched, dataloader=loader, ledger=False, every=4)
    _train(net, opt, sched, loader, guard, steps=6)
    snapshot = {"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
    saved: Callable[[], dict[str, Any]] = lambda: torch.load(  # noqa: E731
        tmp_path / "c.pt", weights_only=True
    )
    torch.save(snapshot, tmp_path / "c.pt")
    _train(net, opt, sched, loader, guard, steps=4)
    with guard.authorized("roll back to step 6"):
        state = saved()
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
    _train(net, opt, sched, loader, guard, steps=6)
    guard.close()
    assert guard.alerts == []
