"""Chained schedulers: a ``LinearLR`` warm-up and a ``CosineAnnealingLR`` on the same
optimizer, both stepped after every optimizer step (the chaining ``ChainedScheduler``
does, written out by hand as many training scripts do). The guard is given both
(``scheduler=[warmup, cosine]``) and must accept the learning rate they produce together.
"""

from __future__ import annotations

import torch

import trainguard


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    warmup = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=3)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=8)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = x.sum(dim=1, keepdim=True)

    guard = trainguard.Guard(model, opt, scheduler=[warmup, cosine])
    lrs = []
    for i in range(8):
        loss = torch.nn.functional.mse_loss(model(x[i * 8 : (i + 1) * 8]), y[i * 8 : (i + 1) * 8])
        opt.zero_grad()
        loss.backward()
        opt.step()
        warmup.step()
        cosine.step()
        guard.step(loss=loss)
        lrs.append(opt.param_groups[0]["lr"])
    guard.close()
    assert lrs[0] < lrs[2] and lrs[-1] < lrs[3], lrs  # warmed up, then annealed
    print("compat: chained_schedulers ok")


if __name__ == "__main__":
    main()
