"""The expected index order of torch's standard samplers, recomputed independently.

``DataCheck`` compares what a sampler yields with these plans: ``RandomSampler`` from
the RNG state it will draw its seed from (or its own generator's), ``DistributedSampler``
from its seed, epoch, rank and padding, ``SequentialSampler`` as a range. Torch's
functions are captured at import, so a later patch of ``torch.randperm`` changes the
sampler's behaviour but not this recomputation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.utils.data import (
    BatchSampler,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

__all__ = [
    "Plan",
    "equal",
    "plain",
    "plain_batch",
    "plan_for",
    "same",
    "standard_batch_sampler",
    "unverified_reason",
]

# Our own references, so that a later patch of torch's functions changes the sampler's
# behaviour but not the guard's recomputation.
_randperm = torch.randperm
_arange = torch.arange
_cat = torch.cat
_empty = torch.empty
_random_ = torch.Tensor.random_
_Generator = torch.Generator
_get_rng_state = torch.get_rng_state

_CHUNK = 8192  # expected indices materialised as Python ints at a time


class Plan:
    """The expected index stream, produced in segments. ``_segment`` is called right
    before the first index of the segment is pulled from the real sampler, which is when
    the real sampler consumes its RNG for that segment."""

    def __init__(self) -> None:
        self.evidence: dict[str, Any] = {}
        self._seg: torch.Tensor | None = None
        self._seg_start = 0
        self._offset = 0
        self._done = False

    def _segment(self) -> torch.Tensor | None:
        raise NotImplementedError

    def chunk(self, pos: int) -> list[Any]:
        if self._done:
            return []
        if self._seg is None or self._offset >= len(self._seg):
            self._seg = self._segment()
            if self._seg is None:
                self._done = True
                return []
            self._seg_start, self._offset = pos, 0
        part = self._seg[self._offset : self._offset + _CHUNK].tolist()
        self._offset += len(part)
        return part if part else self.chunk(pos)

    def finish(self) -> None:
        """The real sampler ran to its end (not called for a pass broken off)."""
        return None

    def kind(self, pos: int, got: Any, want: Any) -> str:
        """A hint for the reader: ``duplicated`` (already yielded this segment),
        ``skipped`` (an index due later: samples dropped or moved), ``foreign`` (not
        due at all), ``early_end`` or ``extra``."""
        if got is None:
            return "early_end"
        if want is None:
            return "extra"
        seg, off = self._seg, pos - self._seg_start
        try:
            value = int(got)
            if seg is not None and 0 <= off < len(seg):
                if off > 0 and bool((seg[:off] == value).any()):
                    return "duplicated"
                if bool((seg[off + 1 :] == value).any()):
                    return "skipped"
        except (TypeError, ValueError, RuntimeError, OverflowError):
            pass
        return "foreign"


class _Fixed(Plan):
    def __init__(self, order: torch.Tensor) -> None:
        super().__init__()
        self._order: torch.Tensor | None = order

    def _segment(self) -> torch.Tensor | None:
        order, self._order = self._order, None
        return order


class _Random(Plan):
    """``RandomSampler(replacement=False)``: ``num_samples // n`` permutations and a
    partial one. Without a generator it seeds a private one from the global RNG at its
    first draw; with one, each permutation draws from it when it is reached."""

    def __init__(self, sampler: RandomSampler) -> None:
        super().__init__()
        self._sampler = sampler
        self._n = self._full = self._rest = self._made = 0
        self._own: torch.Generator | None = None
        self._shared: torch.Generator | None = None

    def _segment(self) -> torch.Tensor | None:
        if self._made == 0:  # the moment the real sampler starts its body
            n = len(self._sampler.data_source)
            if n == 0:  # the real sampler fails on its own; nothing to compare
                return None
            m = self._sampler.num_samples
            self._n, self._full, self._rest = n, m // n, m % n
            self._shared = self._sampler.generator
            if self._shared is None:
                state = _get_rng_state()
                replica = _Generator()
                replica.set_state(state)
                seed = int(_random_(_empty((), dtype=torch.int64), generator=replica).item())
                self._own = _Generator()
                self._own.manual_seed(seed)
        index = self._made
        if index > self._full or (index == self._full and not self._rest):
            return None
        self._made += 1
        if self._own is not None:
            perm = _randperm(self._n, generator=self._own)
        else:
            shared = self._shared
            assert shared is not None
            replica = _Generator(device=shared.device)
            replica.set_state(shared.get_state())
            perm = _randperm(self._n, generator=replica)
        return perm if index < self._full else perm[: self._rest]


def unverified_reason(sampler: Any) -> str:
    """Why the order of ``sampler`` cannot be recomputed ("" when it can)."""
    kind = type(sampler)
    if kind is RandomSampler:
        if sampler.replacement:
            return "replacement=True: draws are not a permutation, fingerprinted only"
        if torch.get_default_device().type != "cpu":
            return "RandomSampler draws on a non-CPU default device: fingerprinted only"
        return ""
    if kind is DistributedSampler or kind is SequentialSampler:
        return ""
    return "sampler class the guard cannot recompute (only torch's own): fingerprinted only"


def plan_for(sampler: Any) -> Plan:
    """The recomputation for exactly the samplers torch ships."""
    kind = type(sampler)
    if kind is SequentialSampler:
        return _Fixed(_arange(len(sampler.data_source)))
    if kind is RandomSampler:
        return _Random(sampler)
    plan = _Fixed(_distributed_order(sampler))
    plan.evidence = {
        "sampler_epoch": int(sampler.epoch),
        "rank": int(sampler.rank),
        "num_replicas": int(sampler.num_replicas),
    }
    return plan


def _distributed_order(s: Any) -> torch.Tensor:
    """``DistributedSampler.__iter__`` from its inputs, not its cached sizes."""
    n = len(s.dataset)
    replicas, rank, drop_last = int(s.num_replicas), int(s.rank), bool(s.drop_last)
    if drop_last and n % replicas != 0:
        per_rank = math.ceil((n - replicas) / replicas)
    else:
        per_rank = math.ceil(n / replicas)
    total = per_rank * replicas
    if s.shuffle:
        g = _Generator()
        g.manual_seed(int(s.seed) + int(s.epoch))
        order = _randperm(n, generator=g)
    else:
        order = _arange(n)
    if drop_last:
        order = order[:total]
    else:
        pad = total - n
        if pad <= n:
            order = _cat([order, order[:pad]])
        else:
            order = _cat([order, order.repeat(math.ceil(pad / n))[:pad]])
    return order[rank:total:replicas]


def standard_batch_sampler(sampler: Any) -> BatchSampler | None:
    """The ``BatchSampler`` whose stock ``__iter__`` pulls from ``.sampler``, looking
    through wrappers that keep the real one as ``.batch_sampler`` (accelerate's shards)."""
    for _ in range(4):
        if not isinstance(sampler, BatchSampler):
            return None
        if type(sampler).__iter__ is BatchSampler.__iter__:
            return sampler
        sampler = getattr(sampler, "batch_sampler", None)
    return None


# -- comparing what was drawn with what was due ---------------------------------------


def same(item: Any, want: Any) -> bool:
    try:
        return type(item) is not bool and bool(item == want) and int(item) == want
    except Exception:  # noqa: BLE001 - a hostile item may raise anything: not equal
        return False


def equal(got: list[Any], want: list[Any]) -> bool:
    """List equality at C speed; equal values select the same sample, whatever their
    int-like type. Items that cannot be compared plainly go through ``same``."""
    if len(got) != len(want):
        return False
    try:
        return bool(got == want)
    except Exception:  # noqa: BLE001 - a hostile item may raise anything: compare slowly
        return all(map(same, got, want))


def plain(value: Any) -> Any:
    if value is None or type(value) is int:
        return value
    try:
        return int(value)
    except Exception:  # noqa: BLE001 - evidence only: fall back to its repr
        return repr(value)[:200]


def plain_batch(batch: Any) -> Any:
    """A batch of indices for the evidence: its first 64 items, plain."""
    if batch is None:
        return None
    try:
        return [plain(i) for i in list(batch)[:64]]
    except Exception:  # noqa: BLE001 - evidence only: fall back to its repr
        return repr(batch)[:200]
