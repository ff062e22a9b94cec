"""Replicas of one data-parallel job must stay bit-identical (``runtime.replica_divergence``),
and no rank may be much slower than the others (``process.straggler``).

With identical initial weights and all-reduced gradients, every rank applies the same
update to the same bits, so the keyed fingerprints of the weights and of the optimizer
state are equal on all ranks, exactly. Every ``every`` steps each rank contributes one
small int64 vector to an ``all_gather``: weight digest, optimizer-state digest, an RNG
state digest, and the median, lower quartile and spread of its local busy times since
the last gather
(data loading + forward, measured from the end of the previous optimizer step to the end
of the model's forward, which excludes the time spent waiting for other ranks in the
backward all-reduce; the first ``_WARMUP_STEPS`` steps are left out). Rank 0 names a
straggler by the rule of ``_straggle.py``: its window is slow against the others' and the
job's own spread on ``_STRAGGLER.confirmations`` successive gathers, so a loaded machine
is not a straggler; the busy times are each rank's own word. A rank whose digests differ
from the majority is named; with two ranks there is no majority, so both are named. A
second gather of per-parameter digests then says which parameters differ.

RNG states may legitimately differ (per-rank seeds), so they are recorded as evidence
only. Each rank's *local* gradient norm (read by tensor hooks, before the all-reduce makes
the gradients equal) is gathered too: a rank whose median local norm is ``_GRAD_RATIO``
times the others' is named as a ``training.anomaly`` (evidence: a rank fed poisoned or
duplicated data, or computing on a broken device).
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections import Counter, deque
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._straggle import Policy, Streaks, Window, slow_ranks
from trainguard.guard.checks.base import Check, GuardContext
from trainguard.guard.checks.fingerprint import Fingerprinter

__all__ = ["ReplicaCheck"]

_STRAGGLER = Policy(ratio=2.0, min_excess_s=0.05, spread_k=4.0, confirmations=2)
_WARMUP_STEPS = 4
_MIN_WINDOW = 4
_GRAD_RATIO = 10.0


class ReplicaCheck(Check):
    name = "replicas"

    def __init__(self) -> None:
        self._fp: Fingerprinter | None = None
        self._busy: deque[float] = deque(maxlen=64)  # since the last gather, past warm-up
        self._steps = 0
        self._streaks = Streaks(_STRAGGLER.confirmations)
        self._t0 = time.perf_counter()
        self._hook: Any = None
        self._sink: Any = None  # the guard's busy_times, which its heartbeat reports
        self._grad_hooks: list[Any] = []
        self._sq: list[Any] = []
        self._local: deque[Any] = deque(maxlen=16)

    def attach(self, ctx: GuardContext) -> None:
        self._fp = Fingerprinter(ctx.key)
        self._sink = getattr(ctx, "busy_times", None)
        model = ctx.model
        if model is not None and hasattr(model, "register_forward_hook"):
            self._hook = model.register_forward_hook(self._forward_done)
        if ctx.world_size > 1:
            for _, p in ctx.named_parameters:
                self._grad_hooks.append(p.register_hook(self._local_grad))
        self._t0 = time.perf_counter()

    def _local_grad(self, grad: Any) -> None:
        self._sq.append(grad.detach().float().pow(2).sum())

    def _forward_done(self, module: Any, args: Any, output: Any) -> None:
        if module.training:
            busy = time.perf_counter() - self._t0
            self._busy.append(busy)
            if self._sink is not None:
                self._sink.append(busy)

    def after_step(self, ctx: GuardContext) -> None:
        if self._sq:
            import torch

            self._local.append(torch.stack(self._sq).sum().sqrt())
            self._sq = []
        self._steps += 1
        if self._steps <= _WARMUP_STEPS:
            self._busy.clear()
        if ctx.world_size > 1 and ctx.current_step % ctx.every == 0:
            self._compare(ctx)
        self._t0 = time.perf_counter()

    def close(self, ctx: GuardContext) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for handle in self._grad_hooks:
            handle.remove()
        self._grad_hooks = []

    # -- the comparison ------------------------------------------------------------------

    def _compare(self, ctx: GuardContext) -> None:
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        assert self._fp is not None
        params = [p for _, p in ctx.named_parameters]
        device = params[0].device if params else torch.device("cpu")
        digests = [self._fp.digest(p) for p in params]
        weights = self._fp.combine(digests, device)
        state = self._fp.combine(
            [self._fp.digest(t) for t in _state_tensors(ctx.optimizer)], device
        )
        rng = int.from_bytes(
            hashlib.blake2b(bytes(torch.get_rng_state().tolist()), digest_size=7).digest(),
            "little",
        )
        busy = Window.of(self._busy) if len(self._busy) >= _MIN_WINDOW else None
        if busy is not None:
            self._busy.clear()
        busy_us = (
            [int(v * 1e6) for v in (busy.median, busy.level, busy.sigma)] if busy else [-1] * 3
        )
        local = torch.stack(list(self._local)).median() if self._local else torch.tensor(-1.0)
        mine = torch.stack([weights, state, torch.tensor(rng, device=device),
                            torch.tensor(busy_us[0], device=device),
                            (local.to(device).double() * 1e9).round().to(torch.int64),
                            torch.tensor(busy_us[1], device=device),
                            torch.tensor(busy_us[2], device=device)])  # fmt: skip
        gathered = [torch.empty_like(mine) for _ in range(ctx.world_size)]
        dist.all_gather(gathered, mine)
        rows = [g.tolist() for g in gathered]
        self._divergence(ctx, rows, digests, device)
        windows = [Window(r[3] / 1e6, r[5] / 1e6, r[6] / 1e6, _MIN_WINDOW) for r in rows]
        self._stragglers(ctx, windows)  # (a count of at least _MIN_WINDOW: not gathered)
        self._grad_outliers(ctx, [r[4] / 1e9 for r in rows])
        if len({r[2] for r in rows}) > 1:
            ctx.event("replicas.rng_differs", {"rng_digests": [r[2] for r in rows]})

    def _divergence(
        self, ctx: GuardContext, rows: list[list[int]], digests: list[Any], device: Any
    ) -> None:
        keys = [(r[0], r[1]) for r in rows]
        if len(set(keys)) == 1:
            return
        import torch
        import torch.distributed as dist

        per = torch.stack(digests).to(device)
        everyone = [torch.empty_like(per) for _ in range(ctx.world_size)]
        dist.all_gather(everyone, per)
        tables = [e.tolist() for e in everyone]
        counts = Counter(keys)
        top, votes = counts.most_common(1)[0]
        majority = top if votes > len(keys) / 2 else None
        odd = [r for r, k in enumerate(keys) if k != majority]
        if ctx.rank not in odd:
            return
        ref = 0 if ctx.rank != 0 else 1
        names = [n for n, _ in ctx.named_parameters]
        differing = [names[i] for i in range(len(names)) if tables[ctx.rank][i] != tables[ref][i]]
        what = []
        if keys[ctx.rank][0] != keys[ref][0]:
            what.append("weights")
        if keys[ctx.rank][1] != keys[ref][1]:
            what.append("optimizer state")
        ctx.emit(
            Rule.REPLICA_DIVERGENCE,
            Severity.CRITICAL,
            f"rank {ctx.rank}'s {' and '.join(what) or 'state'} differ from "
            + (f"the majority of {len(keys)} ranks" if majority else f"rank {ref}")
            + f" at step {ctx.current_step}"
            + (f" (parameters: {', '.join(differing[:5])})" if differing else ""),
            where=f"rank:{ctx.rank}",
            evidence={
                "rank": ctx.rank,
                "ranks_differing": odd,
                "majority": majority is not None,
                "parameters": differing[:50],
                "digests": [list(k) for k in keys],
            },
        )

    def _stragglers(self, ctx: GuardContext, busy: list[Window]) -> None:
        if ctx.rank != 0 or len(busy) < 2 or any(w.median < 0 or w.sigma < 0 for w in busy):
            return  # a rank still in its warm-up, or short of samples: no window this time
        windows = dict(enumerate(busy))
        slow = slow_ranks(windows, _STRAGGLER)
        for rank in self._streaks.update(slow, windows):
            hit = slow[rank]
            ctx.emit(
                Rule.PROCESS_STRAGGLER,
                Severity.MEDIUM,
                f"rank {rank}'s faster steps spend {hit.level_s * 1e3:.0f} ms before the "
                f"backward pass (median {hit.median_s * 1e3:.0f} ms), the other ranks' "
                f"{hit.others_s * 1e3:.0f} ms (spread {hit.spread_s * 1e3:.0f} ms), on "
                f"{_STRAGGLER.confirmations} successive windows",
                where=f"straggler:rank:{rank}",
                evidence={
                    "rank": rank,
                    "busy_s": [w.median for w in busy],
                    "busy_level_s": [w.level for w in busy],
                    "spread_s": [w.sigma for w in busy],
                    "threshold_s": round(hit.threshold_s, 6),
                    "windows": _STRAGGLER.confirmations,
                },
            )

    def _grad_outliers(self, ctx: GuardContext, norms: list[float]) -> None:
        if ctx.rank != 0 or any(n <= 0 for n in norms) or len(norms) < 2:
            return
        for rank, mine in enumerate(norms):
            others = statistics.median(n for r, n in enumerate(norms) if r != rank)
            if mine > _GRAD_RATIO * others:
                ctx.emit(
                    Rule.TRAINING_ANOMALY,
                    Severity.LOW,
                    f"rank {rank}'s local gradient norm {mine:.4g} is {mine / others:.0f}x the "
                    f"other ranks' {others:.4g} (before the all-reduce)",
                    where=f"grad_norm:rank:{rank}",
                    evidence={"rank": rank, "local_grad_norms": norms},
                )


def _state_tensors(optimizer: Any) -> list[Any]:
    out = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            for _, value in sorted(optimizer.state.get(p, {}).items()):
                if hasattr(value, "numel") and value.numel() > 0:
                    out.append(value)
    return out
