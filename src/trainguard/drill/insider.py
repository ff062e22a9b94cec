"""The insider inside the job: attacks that need to run in the training process.

The drill starts the (unmodified) job with ``$TRAINGUARD_DRILL_HOOKS`` naming ``hooks``
below, the way a colleague's "helpful" callback or a planted module gets into a job, and
``$TRAINGUARD_DRILL_ATTACK`` / ``_AT`` / ``_RANK`` saying what to do, at which step, on
which rank. Nothing here talks to the guard: each attack does what the insider did, by
the means he had (patching torch, reseeding, editing weights and hyper-parameters,
closing the guard), and writes ``injected-<rank>.json`` (step, time, pid) into the job's
output folder so the drill can measure how long detection took.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from trainguard.drill.job import JobHooks, JobState

__all__ = ["ATTACK_ENV", "AT_ENV", "RANK_ENV", "Insider", "hooks"]

ATTACK_ENV = "TRAINGUARD_DRILL_ATTACK"
AT_ENV = "TRAINGUARD_DRILL_AT"
RANK_ENV = "TRAINGUARD_DRILL_RANK"


class Insider(JobHooks):
    """Runs one named attack before the forward pass of step ``at`` (or at start)."""

    def __init__(self, attack: str, at: int, rank: int | None) -> None:
        self.attack = attack
        self.at = at
        self.rank = rank
        self.done = False
        self._random = random.Random(os.getpid())

    def on_start(self, state: JobState) -> None:
        if self.attack == "sampler" and self._mine(state):
            _patch_sampler()
            self._record(state, step=1, detail="RandomSampler.__iter__ drops one sample")

    def on_batch(
        self, state: JobState, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        step = state.step + 1  # the step this batch is for
        if self.attack == "sleeps" and step >= self.at and self._mine(state):
            # a slow node that nobody can reproduce: a random pause before every step
            time.sleep(self._random.uniform(0.05, 0.3))
            if not self.done:
                self._record(state, step=step, detail="random 50-300 ms sleeps every step")
            return x, y
        if self.done or step != self.at or not self._mine(state):
            return x, y
        action = _ACTIONS.get(self.attack)
        if action is not None:
            detail = action(state)
            self._record(state, step=step, detail=detail)
        return x, y

    def _mine(self, state: JobState) -> bool:
        return self.rank is None or state.rank == self.rank

    def _record(self, state: JobState, *, step: int, detail: str) -> None:
        self.done = True
        body = {
            "attack": self.attack,
            "step": step,
            "time": time.time(),
            "rank": state.rank,
            "pid": os.getpid(),
            "detail": detail,
        }
        Path(state.out, f"injected-{state.rank}.json").write_text(json.dumps(body))


def _monkeypatch(state: JobState) -> str:
    """Replace the function Adam/AdamW dispatch their math to (what a patched import or
    an edited extension does) with one that flips the sign of 1% of each update."""
    import torch.optim.adam as adam

    original = adam._single_tensor_adam

    def sabotaged(params: list[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        before = [p.detach().clone() for p in params]
        original(params, *args, **kwargs)
        with torch.no_grad():
            for p, b in zip(params, before, strict=True):
                mask = torch.rand(p.shape) < 0.01
                p.sub_(2 * (p - b) * mask)

    adam._single_tensor_adam = sabotaged
    return "torch.optim.adam._single_tensor_adam replaced: 1% of each update sign-flipped"


def _reseed(state: JobState) -> str:
    torch.manual_seed(1234)
    return "torch.manual_seed(1234)"


def _lr(state: JobState) -> str:
    group = state.optimizer.param_groups[0]
    group["lr"] *= 1.01
    return f"param_groups[0]['lr'] x1.01 -> {group['lr']:.6g}"


def _weights(state: JobState) -> str:
    name, p = next(
        (n, p) for n, p in state.model.named_parameters() if n.startswith("blocks") and p.dim() == 2
    )
    p.data.view(-1).view(torch.int32)[7] += 1
    return f"{name}[7] moved by 1 ulp through .data"


def _remove_guard(state: JobState) -> str:
    """Take the guard out of the loop: close it (its hooks go away) and leave the job a
    guard that ignores everything, so training goes on unwatched."""
    if state.guard is not None:
        state.guard.close()
    state.guard = None
    return "guard closed and dropped from inside the job; training goes on unwatched"


_ACTIONS: dict[str, Callable[[JobState], str]] = {
    "monkeypatch": _monkeypatch,
    "reseed": _reseed,
    "lr": _lr,
    "weights": _weights,
    "remove_guard": _remove_guard,
}


def _patch_sampler() -> None:
    """Edit ``RandomSampler.__iter__`` so each epoch repeats its first sample in place of
    its second: one dropped, one duplicated, nothing else changed."""
    from torch.utils.data import RandomSampler

    original = RandomSampler.__iter__

    def __iter__(self: Any) -> Iterator[int]:
        inner = original(self)
        first = next(inner)
        yield first
        next(inner, None)
        yield first
        yield from inner

    setattr(RandomSampler, "__iter__", __iter__)  # noqa: B010 - as a patch would


def _from_env() -> JobHooks:
    attack = os.environ.get(ATTACK_ENV, "")
    if not attack:
        return JobHooks()
    rank = os.environ.get(RANK_ENV)
    return Insider(attack, int(os.environ.get(AT_ENV, "5")), int(rank) if rank else None)


hooks = _from_env()
