"""The drill corpus and loaders: reproducible bytes, correct blocks, seeded orders."""

from __future__ import annotations

import torch
from torch.utils.data import DistributedSampler, RandomSampler

from trainguard.drill.data import BlockDataset, decode, encode, generate_text, make_loader


def test_text_is_reproducible_ascii_and_varied():
    a = generate_text(5000, seed=3)
    assert a == generate_text(5000, seed=3)
    assert a != generate_text(5000, seed=4)
    assert len(a) >= 5000 and a.isascii()
    sentences = {s.strip() for s in a.replace("?", ".").split(".") if s.strip()}
    assert len(sentences) > 50  # not one sentence repeated


def test_bytes_round_trip():
    text = generate_text(300)
    tokens = encode(text)
    assert tokens.dtype == torch.int64 and int(tokens.max()) < 128
    assert decode(tokens) == text


def test_blocks_are_shifted_pairs():
    ds = BlockDataset(torch.arange(100), block=8)
    assert len(ds) == (100 - 1 - 8) // 8 + 1
    x, y = ds[3]
    assert torch.equal(x, torch.arange(24, 32)) and torch.equal(y, torch.arange(25, 33))
    x, y = ds[len(ds) - 1]
    assert int(y[-1]) <= 99


def test_single_process_order_is_seeded_and_leaves_global_rng_alone():
    ds = BlockDataset.generated(16, chars=4000)
    before = torch.get_rng_state()
    a = make_loader(ds, 4, seed=1, rank=0, world_size=1)
    b = make_loader(ds, 4, seed=1, rank=0, world_size=1)
    assert isinstance(a.sampler, RandomSampler) and a.sampler.generator is not None
    first = [x for x, _ in a]
    assert all(torch.equal(p, q) for p, q in zip(first, [x for x, _ in b], strict=True))
    second = [x for x, _ in a]  # the next epoch is a different permutation
    assert not all(torch.equal(p, q) for p, q in zip(first, second, strict=True))
    assert torch.equal(before, torch.get_rng_state())


def test_distributed_ranks_get_disjoint_shards():
    ds = BlockDataset.generated(16, chars=4000)
    shards = []
    for rank in (0, 1):
        loader = make_loader(ds, 2, seed=5, rank=rank, world_size=2)
        assert isinstance(loader.sampler, DistributedSampler)
        shards.append(set(loader.sampler))
    assert shards[0] and not shards[0] & shards[1]
