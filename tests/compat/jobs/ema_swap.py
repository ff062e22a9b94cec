"""An exponential moving average of the weights (``torch.optim.swa_utils.AveragedModel``
with ``get_ema_multi_avg_fn``), swapped into the live model for an evaluation every 3
steps and swapped back before training goes on (store, copy in, evaluate, restore: what
diffusers' ``EMAModel`` and timm do).

The swap is declared with ``guard.swapped(shadow)``: the guard copies the EMA weights in,
and at the end of the block restores the model's own and verifies them bit for bit.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import trainguard


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 8, generator=g)
    y = x.sum(dim=1, keepdim=True)

    guard = trainguard.Guard(model, opt)
    evaluations = []
    for i in range(6):
        batch = slice(i * 8, (i + 1) * 8)
        loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        guard.step(loss=loss)
        if i % 3 == 2:
            with guard.swapped(list(ema.module.parameters())), torch.no_grad():
                evaluations.append(torch.nn.functional.mse_loss(model(x), y).item())
    guard.close()
    assert len(evaluations) == 2
    print("compat: ema_swap ok")


if __name__ == "__main__":
    main()
