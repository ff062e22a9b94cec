"""The drill's training data: English-like text made on the spot, byte-level tokens.

The drill must run offline and give the same bytes everywhere, so the corpus is produced
by a small seeded grammar rather than downloaded. It is regular enough that a tiny model
learns it within a few dozen steps (the loss visibly falls, so an attack that stalls
training is visible too) and varied enough that it does not collapse to one sentence.

Tokens are the UTF-8 bytes of the text (the grammar uses ASCII only), so the tokenizer is
exact, needs no vocabulary file, and fits any model with ``vocab >= 256``.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

__all__ = [
    "BYTE_VOCAB",
    "BlockDataset",
    "EpochBatches",
    "decode",
    "encode",
    "generate_text",
    "make_loader",
]

BYTE_VOCAB = 256
"""Token ids are bytes: a model needs at least this many embeddings."""

_NAMES = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Oscar Peggy Trent".split()
_DETERMINERS = "the a this that every some one my your our their".split()
_ADJECTIVES = (
    "quick lazy small large old young bright dark quiet loud happy tired clever curious "
    "gentle brave green red blue warm cold careful busy patient"
).split()
_NOUNS = (
    "fox dog cat bird horse farmer teacher student doctor child river garden house city "
    "village forest machine engine lamp book letter train ship mountain window baker "
    "painter sailor king queen robot model server cluster"
).split()
_TRANSITIVE = (
    "sees finds likes follows watches builds paints reads writes carries opens fixes "
    "visits helps trains guards checks signs"
).split()
_INTRANSITIVE = "sleeps runs waits sings laughs works rests walks listens shines falls".split()
_ADVERBS = "slowly quickly quietly happily carefully often rarely early late again".split()
_PREPOSITIONS = "near under over behind beside across through into from toward".split()
_CONJUNCTIONS = ["and", "but", "because", "while", "so", "although"]
_OPENERS = ["Yesterday", "Today", "In the morning", "At night", "Later", "Once", "Sometimes"]


def _noun_phrase(rng: random.Random) -> str:
    if rng.random() < 0.15:
        return rng.choice(_NAMES)
    words = [rng.choice(_DETERMINERS)]
    if rng.random() < 0.6:
        words.append(rng.choice(_ADJECTIVES))
    words.append(rng.choice(_NOUNS))
    return " ".join(words)


def _clause(rng: random.Random) -> str:
    subject = _noun_phrase(rng)
    if rng.random() < 0.6:
        verb = f"{rng.choice(_TRANSITIVE)} {_noun_phrase(rng)}"
    else:
        verb = rng.choice(_INTRANSITIVE)
        if rng.random() < 0.5:
            verb += " " + rng.choice(_ADVERBS)
    if rng.random() < 0.35:
        verb += f" {rng.choice(_PREPOSITIONS)} {_noun_phrase(rng)}"
    return f"{subject} {verb}"


def _sentence(rng: random.Random) -> str:
    text = _clause(rng)
    if rng.random() < 0.3:
        text += f" {rng.choice(_CONJUNCTIONS)} {_clause(rng)}"
    if rng.random() < 0.15:
        text = f"{rng.choice(_OPENERS)}, {text}"
    end = "?" if rng.random() < 0.05 else "."
    return text[0].upper() + text[1:] + end


def generate_text(chars: int, seed: int = 0) -> str:
    """At least ``chars`` characters of paragraphs of English-like sentences (ASCII).

    The same ``(chars, seed)`` gives the same text in every process and on every
    platform: ``random.Random`` is specified to be reproducible for a given seed.
    """
    if chars < 1:
        raise ValueError(f"chars must be positive, got {chars}")
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < chars:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6))) + "\n"
        parts.append(paragraph)
        size += len(paragraph)
    return "".join(parts)


def encode(text: str) -> torch.Tensor:
    """Text -> 1-D int64 tensor of its UTF-8 bytes."""
    data = bytearray(text.encode("utf-8"))
    return torch.frombuffer(data, dtype=torch.uint8).to(torch.int64)


def decode(tokens: torch.Tensor) -> str:
    """Inverse of ``encode`` (ids above 255, which a larger model may sample, become '?')."""
    ids = tokens.detach().reshape(-1).tolist()
    return bytes(i if 0 <= i < BYTE_VOCAB else 63 for i in ids).decode("utf-8", "replace")


class BlockDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Fixed-length (input, target) blocks of a token stream; target = input shifted by one.

    Map-style on purpose: a sampler then decides the order, which is exactly what the
    guard's data-order check recomputes (a ``DistributedSampler`` or a ``RandomSampler``
    with its own generator).
    """

    def __init__(self, tokens: torch.Tensor, block: int, stride: int | None = None) -> None:
        if tokens.dim() != 1:
            raise ValueError("tokens must be a 1-D tensor")
        self.tokens = tokens
        self.block = block
        self.stride = stride or block
        if block < 1 or self.stride < 1:
            raise ValueError("block and stride must be positive")
        if len(tokens) < block + 1:
            raise ValueError(f"{len(tokens)} tokens cannot fill one block of {block} (+1)")

    @classmethod
    def generated(
        cls, block: int, *, chars: int = 65536, seed: int = 0, stride: int | None = None
    ) -> BlockDataset:
        """The drill's corpus: ``generate_text(chars, seed)`` as byte tokens."""
        return cls(encode(generate_text(chars, seed)), block, stride)

    def __len__(self) -> int:
        return (len(self.tokens) - 1 - self.block) // self.stride + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        start = (index % len(self)) * self.stride
        chunk = self.tokens[start : start + self.block + 1]
        return chunk[:-1], chunk[1:]


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    seed: int = 0,
    rank: int | None = None,
    world_size: int | None = None,
) -> DataLoader[Any]:
    """A shuffling ``DataLoader`` whose order is a pure function of ``seed`` (and epoch).

    In a distributed job (``torch.distributed`` initialised, world size > 1, or an
    explicit ``world_size > 1``) each rank gets its own shard through a
    ``DistributedSampler(seed=seed)``; call ``loader.sampler.set_epoch(epoch)`` each
    epoch, as usual. Otherwise a ``RandomSampler`` with its own ``torch.Generator``
    seeded with ``seed``. The loader shares that generator (``loader.generator``) for the
    seed it draws at each ``iter()``, which would otherwise come from the global RNG: the
    order neither depends on nor disturbs the global RNG, and the generator's state at the
    start of an epoch is all a checkpoint needs to replay it.
    Incomplete last batches are dropped, so every step sees ``batch_size`` samples.
    """
    if world_size is None or rank is None:
        dist_rank, dist_world = _dist_info()
        rank = dist_rank if rank is None else rank
        world_size = dist_world if world_size is None else world_size
    generator = torch.Generator()
    generator.manual_seed(seed)
    sampler: Sampler[int]
    if world_size > 1:
        sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
    else:
        sampler = RandomSampler(dataset, generator=generator)  # type: ignore[arg-type]
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True, generator=generator
    )


class EpochBatches:
    """Batches for steps ``start+1, start+2, ...`` across epochs, resumable mid-epoch.

    The position of a step is ``(epoch, index)`` = divmod(step - 1, batches per epoch).
    A ``DistributedSampler`` is positioned by ``set_epoch``; a ``RandomSampler`` (and
    the seed the loader draws per epoch) by the state of ``loader.generator`` when the
    epoch began, saved in each checkpoint. Resuming mid-epoch re-reads the skipped
    batches of that epoch, as an uninterrupted run would.
    """

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader
        self.per_epoch = len(loader)
        if self.per_epoch < 1:
            raise ValueError("the corpus is too small for one batch")
        self.epoch = 0
        self.epoch_state: torch.Tensor | None = None
        self._it: Iterator[Any] | None = None
        self._left = 0

    def _generator(self) -> torch.Generator | None:
        gen = self.loader.generator
        return gen if isinstance(gen, torch.Generator) else None

    def _begin(self, epoch: int, generator_state: torch.Tensor | None = None) -> None:
        self.epoch = epoch
        sampler = self.loader.sampler
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        gen = self._generator()
        if gen is not None:
            if generator_state is not None:
                gen.set_state(generator_state)
            self.epoch_state = gen.get_state()
        self._it = iter(self.loader)
        self._left = self.per_epoch

    def seek(self, done: int, generator_state: torch.Tensor | None = None) -> None:
        """Position after ``done`` completed steps."""
        epoch, index = divmod(done, self.per_epoch)
        self._begin(epoch, generator_state)
        for _ in range(index):
            self.next()

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._begin(0)
        elif self._left == 0:
            self._begin(self.epoch + 1)
        assert self._it is not None
        self._left -= 1
        x, y = next(self._it)
        return x, y

    def state(self) -> dict[str, Any]:
        """Where the next step's batch comes from: this epoch (and the generator state it
        began with) or, once this epoch is used up, the next one (and the generator now)."""
        if self._left == 0:
            gen = self._generator()
            return {"epoch": self.epoch + 1, "generator": gen.get_state() if gen else None}
        return {"epoch": self.epoch, "generator": self.epoch_state}


def _dist_info() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
