"""TensorBoard through ``torch.utils.tensorboard.SummaryWriter``: scalars every step and a
weight histogram at the end, written by the writer's background thread while the guard
watches; the event file is read back with TensorBoard's own reader.
"""

from __future__ import annotations

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import trainguard


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 8, generator=g)
    y = x.sum(dim=1, keepdim=True)

    writer = SummaryWriter("tb")
    guard = trainguard.Guard(model, opt)
    for i in range(6):
        loss = torch.nn.functional.mse_loss(model(x[i * 8 : (i + 1) * 8]), y[i * 8 : (i + 1) * 8])
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss=loss)
        writer.add_scalar("train/loss", loss.item(), i)
        writer.add_scalar("train/lr", opt.param_groups[0]["lr"], i)
    for name, p in model.named_parameters():
        writer.add_histogram(name, p.detach(), 6)
    writer.close()
    guard.close()

    events = EventAccumulator("tb")
    events.Reload()
    assert len(events.Scalars("train/loss")) == 6
    print("compat: tensorboard_writer ok")


if __name__ == "__main__":
    main()
