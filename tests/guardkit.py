"""A tiny training loop for guard tests: attacks are callables run at a chosen step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from trainguard.drill.workspace import free_port
from trainguard.guard import Guard

__all__ = ["free_port", "model", "train"]


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))


def train(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    guard: Guard,
    *,
    steps: int = 10,
    scheduler: Any = None,
    attacks: dict[int, Callable[[], None]] | None = None,
    seed: int = 1,
) -> list[tuple[str, int | None, str]]:
    """Run ``steps`` optimizer steps; ``attacks[k]`` runs before the forward of step k.
    Returns (rule, step, where) of every alert."""
    gen = torch.Generator().manual_seed(seed)
    for step in range(1, steps + 1):
        if attacks and step in attacks:
            attacks[step]()
        x = torch.randn(8, 16, generator=gen)
        loss = net(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if scheduler is not None:
            scheduler.step()
        guard.step(loss=loss)
    return [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts]
