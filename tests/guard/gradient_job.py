"""A 2-rank DDP job for the gradient tests (run by torchrun; ATTACK picks the sabotage).

Honest: two micro-batches accumulated under ``no_sync`` and clipped by norm; ``fp16``
adds torch's fp16 compress hook (``fp16_inner``: with the guard given the module inside
DDP); ``bucket_view`` keeps the gradients as views of DDP's
buckets, zeroed in place; ``synced_accumulation`` forgets ``no_sync`` (both micro-batches
all-reduced). ``noise_labels``: rank 1 trains on labels replaced by
loud random noise. ``comm_noise``: a DDP comm hook that adds noise to the averaged bucket.
"""

from __future__ import annotations

import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainguard.guard import Guard
from trainguard.guard.checks.gradients import GradientCheck


def _noisy_allreduce(state, bucket):  # type: ignore[no-untyped-def]  # DDP reads annotations
    buffer = bucket.buffer()
    buffer.div_(dist.get_world_size())
    future = dist.all_reduce(buffer, async_op=True).get_future()
    return future.then(lambda f: f.value()[0] + 1e-3 * torch.randn_like(f.value()[0]))


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    attack = os.environ.get("ATTACK", "")
    torch.manual_seed(0)
    teacher = torch.nn.Linear(16, 4)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    ddp = DistributedDataParallel(net, gradient_as_bucket_view=attack == "bucket_view")
    if attack in ("fp16", "fp16_inner"):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
    if attack == "comm_noise":
        ddp.register_comm_hook(None, _noisy_allreduce)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-2)
    watched = net if attack == "fp16_inner" else ddp  # the guard given the inner module
    guard = Guard(watched, opt, checks=[GradientCheck()], ledger=sys.argv[1], every=4)
    gen = torch.Generator().manual_seed(100 + rank)
    for _ in range(12):
        for micro in range(2):
            x = torch.randn(8, 16, generator=gen)
            with torch.no_grad():
                y = teacher(x)
            if attack == "noise_labels" and rank == 1:
                y = 30 * torch.randn(8, 4, generator=gen)
            accumulate = micro == 0 and attack != "synced_accumulation"
            sync = ddp.no_sync() if accumulate else contextlib.nullcontext()
            with sync:
                loss = (ddp(x) - y).pow(2).mean() / 2
                loss.backward()
        torch.nn.utils.clip_grad_norm_(ddp.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=attack != "bucket_view")
        guard.step(loss=loss)
    guard.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
