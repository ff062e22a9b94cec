"""The cross-rank half of the gradient check: which rank's local gradients stand out, and
how precisely an honest reduction averages them.

Each step every rank knows its own local gradient sample ``g_r`` (what its backward passes
added since the gradients were last zeroed) and, from the check's one all-reduce, the mean
over ranks. It derives the others' mean ``o_r = (n * mean - g_r) / (n - 1)`` and two
numbers, ``cos(g_r, o_r)`` and ``|g_r| / |o_r|``, which travel in the NEXT step's
all-reduce: each rank writes ``(1, cos, ratio)`` into its own three slots of an otherwise
zero block, so the sum is a gather and no second collective is needed (the statistics
arrive one step late). Rank 0 keeps the last eight steps and names a rank that
``gradients_math.odd_ranks`` singles out.

What it trusts: that honest ranks share one model and one data distribution, so their
local gradients differ by sampling noise only; that every rank reports its own numbers
(a rank that lies about its statistics is caught only by the reduction cross-check, which
judges the gradients themselves); and the shared part of the accumulated gradient (kept
from an earlier step) being equal on all ranks, as it is after a reduced step.

``precision`` gives the rounding an honest reduction may add: the gradients' dtype, or
torch's fp16/bf16 compress hook when the DDP wrapper holds that very function object.
``ddp_of`` finds the wrapper around a module the guard was given instead of the wrapper
(a heap scan, done once and only when a verdict would otherwise fail).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import torch

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.base import GuardContext
from trainguard.guard.checks.gradients_math import odd_ranks

__all__ = ["RankWatch", "all_reduce", "ddp_of", "precision"]

_HISTORY = 8


class RankWatch:
    """Per-rank cosine and norm ratio, gathered one step late through the slots."""

    def __init__(self) -> None:
        self._stats: tuple[float, float] | None = None
        self._history: deque[list[tuple[float, float]]] = deque(maxlen=_HISTORY)

    def slots(self, rank: int, world: int) -> torch.Tensor:
        """This rank's contribution to the gather block of the check's all-reduce."""
        block = torch.zeros(3 * world, dtype=torch.float64)
        if self._stats is not None and world > 1:
            block[3 * rank : 3 * rank + 3] = torch.tensor([1.0, *self._stats])
        return block

    def observe(self, ctx: GuardContext, rows: Any, local: Any, shared: Any) -> None:
        """``rows``: the summed gather block (world x 3); ``local``: this rank's local
        gradient sample; ``shared``: the ranks' mean local gradient sample."""
        world = int(rows.shape[0])
        if world < 2:
            return
        if bool((rows[:, 0] > 0).all()):
            self._history.append([(float(r[1]), float(r[2])) for r in rows])
            if len(self._history) == _HISTORY and ctx.rank == 0:
                self._name(ctx)
        others = (world * shared - local) / (world - 1)
        mine, theirs = float(local.norm()), float(others.norm())
        if mine == 0 or theirs == 0:
            self._stats = None
            return
        cos = float(local @ others) / (mine * theirs)
        self._stats = (cos, min(mine / theirs, 1e9))

    def _name(self, ctx: GuardContext) -> None:
        history = list(self._history)
        for rank, why in odd_ranks(history):
            ctx.emit(
                Rule.GRADIENT_DIVERGENCE,
                Severity.HIGH,
                f"rank {rank}'s local gradients diverge from the other ranks' over the last "
                f"{len(history)} steps: {why}",
                where=f"gradients:rank:{rank}",
                evidence={
                    "rank": rank,
                    "cosines": [[round(c, 4) for c, _ in step] for step in history],
                    "norm_ratios": [[round(q, 4) for _, q in step] for step in history],
                },
                step=ctx.current_step,
            )


def all_reduce(packed: torch.Tensor) -> torch.Tensor:
    """Sum ``packed`` (a CPU float64 vector) over the default process group."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return packed
    device = "cpu" if dist.get_backend() == "gloo" else f"cuda:{torch.cuda.current_device()}"
    work = packed.to(device)
    dist.all_reduce(work)
    return work.cpu()


def precision(ddp: Any, dtype: Any) -> tuple[float, float]:
    """The relative rounding of the reduction (the gradients' dtype, or an honest
    compress hook's) and an absolute floor for fp16's underflow, for gradients of
    ``dtype`` reduced by ``ddp`` (any object: only a DDP wrapper has comm hooks)."""
    floor = 0.0
    hooks = getattr(ddp, "_comm_hooks", None)
    if hooks:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        honest = {
            id(default_hooks.fp16_compress_hook): torch.float16,
            id(default_hooks.bf16_compress_hook): torch.bfloat16,
        }
        for hook, _ in hooks:
            if id(hook) in honest:  # torch's own function object, not a lookalike name
                dtype = honest[id(hook)]
                floor = 2.0**-24 if dtype == torch.float16 else 0.0
    eps = float(torch.finfo(dtype).eps) if dtype.is_floating_point else 1.2e-7
    return max(eps, float(torch.finfo(torch.float32).eps)), floor


def ddp_of(module: Any) -> Any:
    """The ``DistributedDataParallel`` wrapping ``module``, if any (``False`` if none)."""
    import gc

    seen: list[Any] = [module]
    for _ in range(3):  # module <- _modules dict <- (instance dict <-) the wrapper
        nxt = []
        for obj in seen:
            for holder in gc.get_referrers(obj):
                if getattr(holder, "module", None) is module and hasattr(holder, "_comm_hooks"):
                    return holder
                if isinstance(holder, dict):
                    nxt.append(holder)
        seen = nxt
    return False
