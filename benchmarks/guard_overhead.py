"""What the runtime guard costs per training step, per check and in total.

Run by hand from the repository root::

    .venv/bin/python benchmarks/guard_overhead.py [--model bench25m] [--batch 8] [--steps 8]
        [--device cpu|cuda] [--amp] [--checks weights,update,...] [--every 16]

Two copies of the same GPT-style model (``trainguard.drill.model``, ``bench25m`` is about
27M parameters) train side by side in this one process with AdamW, a cosine-with-warm-up
``LambdaLR`` and a ``DataLoader``: copy A under a ``Guard`` with one configuration, copy
B unguarded (the baseline). Steps alternate A, B, A, B... so drift (thermal, page cache,
other load) hits both alike; each configuration gets ``--warmup`` untimed and ``--steps``
timed steps per copy. The script prints, for each configuration (every check alone, then
all default checks), the median step time of both copies and the ratio A/B; the issue's
target is <= 1.02 at defaults on CPU (and < 1.01 on GPU). ``--device cuda`` synchronises
before reading the clock.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any

import torch

from trainguard.drill.model import GPTConfig, TinyGPT
from trainguard.guard import Guard
from trainguard.guard.checks import default_checks

CHECKS = [
    "weights", "state", "hyper", "update", "rng", "data", "code", "replicas", "gradients",
    "anomalies", "process",
]  # fmt: skip


class Side:
    """One model copy with its optimizer, schedule and data."""

    def __init__(self, config: GPTConfig, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.model = TinyGPT(config, seed=0).to(self.device)
        self.opt = torch.optim.AdamW(self.model.param_groups(0.1), lr=3e-4)
        total = 10_000
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt,
            lambda e: min(1.0, (e + 1) / 100) * 0.5 * (1 + math.cos(math.pi * e / total)),
        )
        gen = torch.Generator().manual_seed(1)
        tokens = torch.randint(0, config.vocab, (args.batch * 64, config.block + 1), generator=gen)
        data = torch.utils.data.TensorDataset(tokens[:, :-1], tokens[:, 1:])
        self.loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True)
        self.batches = iter(self.loader)
        self.amp = args.amp
        self.guard: Guard | None = None

    def step(self) -> float:
        try:
            x, y = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            x, y = next(self.batches)
        _sync(self.device)
        start = time.perf_counter()
        x, y = x.to(self.device), y.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            _, loss = self.model(x, y)
        assert loss is not None
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sched.step()
        if self.guard is not None:
            self.guard.step(loss=loss)
        _sync(self.device)
        return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _checks(names: list[str]) -> list[Any]:
    return [c for c in default_checks() if c.name in names]


def measure(
    a: Side, b: Side, names: list[str] | None, args: argparse.Namespace
) -> tuple[float, ...]:
    checks = None if names is None else _checks(names)
    a.guard = Guard(
        a.model, a.opt, scheduler=a.sched, dataloader=a.loader, ledger=False,
        checks=checks, every=args.every,
    )  # fmt: skip
    a.batches = iter(a.loader)
    ta: list[float] = []
    tb: list[float] = []
    for i in range(args.warmup + args.steps):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t1, t2 = first.step(), second.step()
        if i >= args.warmup:
            ta.append(t1 if first is a else t2)
            tb.append(t2 if first is a else t1)
    alerts = len(a.guard.alerts)
    a.guard.close()
    a.guard = None
    ma, mb = statistics.median(ta), statistics.median(tb)
    return ma, mb, ma / mb, alerts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bench25m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--every", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--checks", default=",".join(CHECKS), help="checks to time alone")
    parser.add_argument("--skip-single", action="store_true", help="only the full guard")
    args = parser.parse_args(argv)

    config = GPTConfig.preset(args.model)
    a, b = Side(config, args), Side(config, args)
    params = sum(p.numel() for p in a.model.parameters())
    print(
        f"model {args.model}: {params / 1e6:.1f}M parameters, batch {args.batch}x{config.block}, "
        f"device {args.device}{' bf16' if args.amp else ''}, torch {torch.__version__}, "
        f"{args.steps} timed steps per copy and configuration, every={args.every}",
        file=sys.stderr,
    )
    for _ in range(args.warmup):
        a.step()
        b.step()
    rows: list[tuple[str, tuple[float, ...]]] = []
    if not args.skip_single:
        for name in args.checks.split(","):
            rows.append((name, measure(a, b, [name], args)))
            print(f"  {name:10s} done", file=sys.stderr)
    rows.append(("ALL (defaults)", measure(a, b, None, args)))
    print(f"{'configuration':16s} {'guarded s':>10s} {'baseline s':>10s} {'ratio':>7s} alerts")
    for name, (ma, mb, ratio, alerts) in rows:
        print(f"{name:16s} {ma:10.4f} {mb:10.4f} {ratio:7.3f} {int(alerts):6d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
