"""A tiny training loop for guard tests: attacks are callables run at a chosen step."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.utils.data import Dataset

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


N = 10


class Indexed(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """Item ``i`` carries ``i`` so the test sees which samples each step trained on."""

    def __init__(self, n: int = N) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return torch.full((4,), float(i)), torch.tensor([float(i % 3)]), i


class SpyGuard(Guard):
    """A Guard that also keeps every event it was given (ledger-free tests)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []
        super().__init__(*args, **kwargs)

    def event(self, message: str, evidence: Mapping[str, Any]) -> None:
        self.seen.append((message, dict(evidence)))
        super().event(message, evidence)

    def events(self, message: str) -> list[dict[str, Any]]:
        return [e for m, e in self.seen if m == message]
