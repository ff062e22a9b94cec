"""TinyGPT: exact sizes of the presets, seeded initialisation, causality."""

from __future__ import annotations

import pytest
import torch

from trainguard.drill.model import GPTConfig, TinyGPT, weights_digest


def test_preset_sizes():
    assert TinyGPT(GPTConfig.tiny()).num_parameters() == 120_576
    assert TinyGPT(GPTConfig.bench25m()).num_parameters() == 27_448_320
    untied = TinyGPT(GPTConfig(vocab=256, block=64, layers=2, heads=4, dim=64, tied=False))
    assert untied.num_parameters() == 120_576 + 256 * 64


def test_init_is_seeded_and_does_not_touch_the_global_rng():
    before = torch.get_rng_state()
    a, b, c = (TinyGPT(GPTConfig.tiny(), seed=s) for s in (1, 1, 2))
    assert torch.equal(before, torch.get_rng_state())
    assert weights_digest(a) == weights_digest(b) != weights_digest(c)
    assert a.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.all(a.blocks[0].ln1.weight == 1) and torch.all(a.blocks[0].attn.qkv.bias == 0)


def test_attention_is_causal_and_loss_starts_near_uniform():
    model = TinyGPT(GPTConfig.tiny()).eval()
    idx = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 256
    with torch.no_grad():
        a, loss = model(idx, idx.roll(1, dims=1))
        b, _ = model(changed)
    assert torch.equal(a[:, :20], b[:, :20]) and not torch.equal(a[:, 20:], b[:, 20:])
    assert loss is not None and abs(loss.item() - torch.log(torch.tensor(256.0)).item()) < 0.2


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(vocab=256, block=8, layers=1, heads=3, dim=64)
    with pytest.raises(ValueError, match="block size"):
        TinyGPT(GPTConfig.tiny())(torch.zeros(1, 65, dtype=torch.long))


def test_weights_digest_without_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch runs without numpy (a fresh `pip install torch`): the digest must too."""
    net = TinyGPT(GPTConfig.tiny(), seed=3)
    with_numpy = weights_digest(net)

    def no_numpy(self: torch.Tensor) -> None:
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch.Tensor, "numpy", no_numpy)
    assert weights_digest(net) == with_numpy
