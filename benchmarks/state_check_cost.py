"""What the state check costs per optimizer step, next to the weights check alone.

Run by hand from the repository root::

    .venv/bin/python benchmarks/state_check_cost.py [--steps 50] [--dim 128] [--every 16]

Two copies of a small GPT-style model (``trainguard.drill.model``: 2 layers, d=128, about
470k parameters, AdamW) train side by side in this process, steps interleaved A, B, A,
B...: copy A under a ``Guard`` with ``[WeightsCheck(), StateCheck()]``, copy B under one
with ``[WeightsCheck()]``. Only the time spent inside the guard (its optimizer pre- and
post-step hooks and ``guard.step()``) is clocked, with ``time.perf_counter``; the script
prints the medians over ``--steps`` steps, their difference (the state check's cost), the
median full step time and the cost as a share of it. It also clocks ``StateCheck``'s own
hooks directly.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch

from trainguard.drill.model import GPTConfig, TinyGPT
from trainguard.guard import Guard
from trainguard.guard.checks.state import StateCheck
from trainguard.guard.checks.weights import WeightsCheck


class Timed(Guard):
    """A Guard that adds the time spent in its hooks and ``step`` to ``spent``."""

    spent = 0.0

    def _pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        start = time.perf_counter()
        super()._pre_hook(optimizer, args, kwargs)
        self.spent += time.perf_counter() - start

    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        start = time.perf_counter()
        super()._post_hook(optimizer, args, kwargs)
        self.spent += time.perf_counter() - start

    def step(self, loss: Any = None, *, batch: Any = None) -> None:
        start = time.perf_counter()
        super().step(loss, batch=batch)
        self.spent += time.perf_counter() - start


class Side:
    def __init__(self, config: GPTConfig, state: Any, every: int) -> None:
        self.model = TinyGPT(config, seed=0)
        self.opt = torch.optim.AdamW(self.model.param_groups(0.1), lr=3e-4)
        self.state = state
        checks: list[Any] = [WeightsCheck()] + ([self.state] if self.state else [])
        self.guard = Timed(self.model, self.opt, ledger=False, every=every, checks=checks)
        self.gen = torch.Generator().manual_seed(1)
        self.block, self.vocab = config.block, config.vocab
        self.own = 0.0
        if self.state is not None:
            for hook in ("before_step", "after_step", "end_step"):
                setattr(self.state, hook, self._clock(getattr(self.state, hook)))

    def _clock(self, fn: Any) -> Any:
        def timed(*args: Any) -> None:
            start = time.perf_counter()
            fn(*args)
            self.own += time.perf_counter() - start

        return timed

    def step(self) -> tuple[float, float, float]:
        tokens = torch.randint(0, self.vocab, (8, self.block + 1), generator=self.gen)
        self.guard.spent, self.own = 0.0, 0.0
        start = time.perf_counter()
        _, loss = self.model(tokens[:, :-1], tokens[:, 1:])
        assert loss is not None
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.guard.step(loss=loss)
        return time.perf_counter() - start, self.guard.spent, self.own


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--block", type=int, default=64)
    parser.add_argument("--every", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig(
        vocab=args.vocab, block=args.block, layers=args.layers, heads=4, dim=args.dim
    )
    torch.manual_seed(0)
    a, b = Side(config, StateCheck(), args.every), Side(config, None, args.every)
    params = sum(p.numel() for p in a.model.parameters())
    rows_a: list[tuple[float, float, float]] = []
    rows_b: list[tuple[float, float, float]] = []
    for i in range(args.warmup + args.steps):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        r1, r2 = first.step(), second.step()
        if i >= args.warmup:
            rows_a.append(r1 if first is a else r2)
            rows_b.append(r2 if first is a else r1)
    alerts = len(a.guard.alerts) + len(b.guard.alerts)
    a.guard.close()
    b.guard.close()

    def med(rows: list[tuple[float, float, float]], k: int) -> float:
        return statistics.median(r[k] for r in rows) * 1e3

    step = med(rows_b, 0)
    cost = med(rows_a, 1) - med(rows_b, 1)
    print(
        f"{params / 1e3:.0f}k parameters, {args.steps} steps, every={args.every}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"guard time, weights+state: {med(rows_a, 1):8.3f} ms")
    print(f"guard time, weights only:  {med(rows_b, 1):8.3f} ms")
    print(f"state check hooks (own):   {med(rows_a, 2):8.3f} ms")
    print(f"difference:                {cost:8.3f} ms  ({100 * cost / step:.2f}% of a step)")
    print(f"step (weights only guard): {step:8.3f} ms   alerts: {alerts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
