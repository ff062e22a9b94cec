"""Weights & Biases in offline mode (``WANDB_MODE=offline``: nothing leaves the machine):
``wandb.init`` starts its service process, the guarded loop logs loss and learning rate
each step, ``finish`` writes the offline run under ``./wandb``.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_DIR", os.getcwd())
os.environ.setdefault("WANDB_SILENT", "true")

import torch
import wandb

import trainguard


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    run = wandb.init(project="trainguard-compat", config={"lr": 1e-2})
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=run.config["lr"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 8, generator=g)
    y = x.sum(dim=1, keepdim=True)

    guard = trainguard.Guard(model, opt)
    for i in range(6):
        loss = torch.nn.functional.mse_loss(model(x[i * 8 : (i + 1) * 8]), y[i * 8 : (i + 1) * 8])
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss=loss)
        run.log({"loss": loss.item(), "lr": opt.param_groups[0]["lr"]}, step=i)
    guard.close()
    run.finish()
    assert list(Path("wandb").glob("offline-run-*/run-*.wandb")), "no offline run written"
    print("compat: wandb_offline ok")


if __name__ == "__main__":
    main()
