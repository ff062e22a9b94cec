"""``DataLoader(num_workers=2, multiprocessing_context="spawn")``: each worker is a fresh
interpreter that unpickles the dataset and sends batches back as pickles over a queue,
for two epochs (new workers for each), under a ``Guard`` that recomputes the
sampler's order.
"""

from __future__ import annotations

import torch

import trainguard


class Squares(torch.utils.data.Dataset):  # type: ignore[misc]
    """Computed in the worker, so batches really come from the worker processes."""

    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.full((4,), float(i) / 48)
        return x, x.pow(2).sum(dim=0, keepdim=True)


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(
        Squares(),
        batch_size=8,
        shuffle=True,
        num_workers=2,
        multiprocessing_context="spawn",
    )
    guard = trainguard.Guard(model, opt, dataloader=loader)
    steps = 0
    for _ in range(2):
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            guard.step(loss=loss)
            steps += 1
    guard.close()
    assert steps == 12
    print("compat: dataloader_spawn ok")


if __name__ == "__main__":
    main()
