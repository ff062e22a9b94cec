"""Hugging Face ``accelerate``: a hand-written loop over ``Accelerator.prepare``'d model,
optimizer, scheduler and DataLoader, with the ``Guard`` given the objects as prepared
(accelerate's ``AcceleratedOptimizer`` and ``AcceleratedScheduler`` wrappers).

Run as one process (``python accelerate_loop.py``) or two
(``torchrun --nproc-per-node 2 accelerate_loop.py``: accelerate then trains on gloo;
``accelerate launch --cpu --num_processes 2`` needs ``mpirun`` for several CPU processes
and without it starts one); the job checks the world size ``COMPAT_WORLD_SIZE`` says.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator

import trainguard


def main() -> None:
    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == int(os.environ.get("COMPAT_WORLD_SIZE", "1"))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    model, opt, loader, sched = accelerator.prepare(model, opt, loader, sched)

    guard = trainguard.Guard(model, opt, scheduler=sched, dataloader=loader)
    steps = 0
    for x, y in loader:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        guard.step(loss=loss)
        steps += 1
    guard.close()
    assert steps == 64 // 8 // accelerator.num_processes
    accelerator.wait_for_everyone()
    accelerator.end_training()
    print(f"compat: accelerate_loop rank {accelerator.process_index} ok")


if __name__ == "__main__":
    main()
