"""DistributedDataParallel on gloo, one ``Guard`` per rank, for ``torchrun``: with a
static rendezvous (``--rdzv-backend static --master-addr ... --master-port ...``) or
``--standalone`` (a c10d rendezvous on a free local port). A ``DistributedSampler`` feeds
each rank its share; the ranks' weights must agree bit for bit at the end.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import trainguard


def main() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert world == int(os.environ.get("COMPAT_WORLD_SIZE", "2"))
    torch.manual_seed(0)
    model = DistributedDataParallel(
        torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    sampler = torch.utils.data.DistributedSampler(data, shuffle=True, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=8, sampler=sampler)

    guard = trainguard.Guard(model, opt, dataloader=loader)
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.step(loss=loss)
    guard.close()

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    assert all(torch.equal(gathered[0], other) for other in gathered)
    dist.destroy_process_group()
    print(f"compat: ddp_gloo rank {rank} ok")


if __name__ == "__main__":
    main()
