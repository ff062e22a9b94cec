"""``nn.Embedding(max_norm=...)``: every forward renormalises, in place, the rows it looks
up whose norm exceeds ``max_norm`` (``torch.embedding_renorm_``), so the embedding's
weight changes between optimizer steps by design.

The guard models it: the rows each forward looked up must be exactly their renorm, every
other row must not move.
"""

from __future__ import annotations

import torch

import trainguard


class Bag(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(64, 16, max_norm=1.0)
        self.head = torch.nn.Linear(16, 64)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(dim=1))


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = Bag()
    with torch.no_grad():
        model.embed.weight.mul_(4.0)  # most rows start above max_norm: the renorm has work
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (48, 6), generator=g)
    targets = torch.randint(0, 64, (48,), generator=g)

    guard = trainguard.Guard(model, opt)
    for i in range(6):
        batch = slice(i * 8, (i + 1) * 8)
        logits = model(tokens[batch])
        loss = torch.nn.functional.cross_entropy(logits, targets[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss=loss)
    guard.close()
    seen = model.embed.weight[tokens[:8].unique()].norm(dim=1)
    assert seen.max() < 1.5, seen  # renormalised to 1 at the first forward, then trained
    print("compat: embedding_max_norm ok")


if __name__ == "__main__":
    main()
