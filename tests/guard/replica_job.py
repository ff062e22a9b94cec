"""A 2-rank DDP job for the replica tests (run by torchrun; ATTACK picks the sabotage)."""

from __future__ import annotations

import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainguard.guard import Guard
from trainguard.guard.checks.replicas import ReplicaCheck


def main() -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    attack = os.environ.get("ATTACK", "")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    ddp = DistributedDataParallel(net)
    opt = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    guard = Guard(ddp, opt, checks=[ReplicaCheck()], ledger=sys.argv[1], every=4)
    gen = torch.Generator().manual_seed(100 + rank)
    for step in range(1, 13):
        if attack == "tamper" and rank == 1 and step == 6:
            net[2].weight.data.view(-1)[0] += 1e-6
        if attack == "sleep" and rank == 1:
            time.sleep(0.15)
        x = torch.randn(8, 16, generator=gen)
        if attack == "poison" and rank == 1:
            x = x * 100  # one rank's data poisoned: its local gradients explode
        loss = ddp(x).pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        guard.step(loss=loss)
    guard.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
