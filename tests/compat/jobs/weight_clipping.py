"""Weight clipping (a WGAN critic): after every optimizer step each weight is clamped to
``[-0.05, 0.05]`` in place, outside the optimizer.

The clamp is declared (``Guard(constraints=[Clamp(-CLIP, CLIP)])``) and the loop still
clamps as WGAN code does: the guard applies the same clamp in its own arithmetic and
verifies the weights hold exactly that.
"""

from __future__ import annotations

import torch

import trainguard
from trainguard.guard import Clamp

CLIP = 0.05


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    critic = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LeakyReLU(), torch.nn.Linear(16, 1)
    )
    opt = torch.optim.RMSprop(critic.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    real = torch.randn(48, 8, generator=g) + 1.0
    fake = torch.randn(48, 8, generator=g)

    guard = trainguard.Guard(critic, opt, constraints=[Clamp(-CLIP, CLIP)])
    for i in range(6):
        batch = slice(i * 8, (i + 1) * 8)
        loss = critic(fake[batch]).mean() - critic(real[batch]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for p in critic.parameters():
                p.clamp_(-CLIP, CLIP)
        guard.step(loss=loss)
    guard.close()
    assert all(p.abs().max() <= CLIP for p in critic.parameters())
    print("compat: weight_clipping ok")


if __name__ == "__main__":
    main()
