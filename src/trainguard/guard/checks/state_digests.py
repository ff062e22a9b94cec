"""Baselines of any list of named tensors, for the state check: copies and keyed digests.

The state check (``state.py``) watches tensors the weights check does not (buffers,
frozen parameters, optimizer state). Most such sets are small and made of many tensors
(AdamW keeps a ``step`` scalar and two moments per parameter), where one digest per tensor
costs a dozen kernel launches each; an exact copy of their integer views, laid end to end
(``Snap``), is taken with one ``torch.cat`` and verified with another and one
``torch.equal``, at the price of the memory. Large sets are hashed (``Hashed`` over
``Digests``: the weights check's ``Fingerprinter`` keyed with the run's secret, its
``Range`` plans, one digest per range on the CPU and a few batched kernels per device on
CUDA). ``layout`` decides which, ``keyed`` which rotating share is due. A verdict travels
through ``_deferred.Verdicts`` (read at once on the CPU, at a later hook on CUDA, without
stalling the stream), labelled with what names the tensors that changed.

Trusted: the tensors handed in are the ones to watch (the caller re-reads their owners'
dicts for identity, and their addresses: a ``Snap`` keeps the views it was built over, so
memory swapped in under a tensor is not what it compares), and their element size is 1,
2, 4 or 8 bytes on a strided layout; anything else is returned by ``unwatchable`` so the
caller can say it is not checked. A copy compares bits (NaN payloads, -0.0), never values.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from trainguard.guard.checks._ranges import WIDTH, Range, batches, plan, ranges_at
from trainguard.guard.checks.fingerprint import Fingerprinter

__all__ = ["Baseline", "Digested", "Digests", "Hashed", "Snap", "keyed", "layout", "unwatchable"]

Named = list[tuple[str, Any]]


@dataclass(frozen=True, slots=True)
class Digested:
    """Digests of ``ranges`` of ``tensors`` (one per range, or a segment vector)."""

    tensors: Named
    parts: tuple[tuple[tuple[Range, ...], Any], ...]

    @property
    def elements(self) -> int:
        return sum(r.end - r.start for batch, _ in self.parts for r in batch)


class Digests:
    """Take and compare keyed digests; ``batched`` is the CUDA path."""

    def __init__(self, fp: Fingerprinter, *, batched: bool) -> None:
        self.fp = fp
        self.batched = batched

    def take(self, tensors: Named, ranges: list[Range]) -> Digested:
        fp = self.fp
        if not self.batched:
            parts = [((r,), fp.digest(tensors[r.index][1], r.start, r.end)) for r in ranges]
            return Digested(tensors, tuple(parts))
        out = []
        for batch in batches(ranges, tensors):
            pieces = [fp.ints(tensors[r.index][1])[r.start : r.end] for r in batch]
            out.append((tuple(batch), fp.segments(pieces, WIDTH)))
        return Digested(tensors, tuple(out))

    def diffs(self, old: Digested) -> list[Any]:
        """Per-part boolean vectors: where the content now differs from ``old``."""
        again = self.take(old.tensors, [r for batch, _ in old.parts for r in batch])
        return [(o != n).reshape(-1) for (_, o), (_, n) in zip(old.parts, again.parts, strict=True)]

    def changed(self, old: Digested, diffs: list[Any]) -> list[int]:
        """Indices (into ``old.tensors``) of the tensors whose digests differ (host read:
        only called once a verdict said something changed)."""
        out: set[int] = set()
        for (batch, _), diff in zip(old.parts, diffs, strict=True):
            hits = diff.nonzero().reshape(-1).tolist()
            if hits:
                segment = WIDTH if self.batched else 0
                out.update(r.index for r in ranges_at(list(batch), hits, segment))
        return sorted(out)


class Baseline(Protocol):
    """What the state check verifies against: ``diffs`` compares the content now with
    the baseline (None: known unchanged, read on the host at no cost), ``retake`` also
    makes the content now the new baseline; ``changed`` names the tensors behind diffs."""

    tensors: Named

    def take(self) -> None: ...

    def diffs(self, *, retake: bool = False) -> list[Any] | None: ...

    def changed(self, diffs: list[Any]) -> list[int]: ...


Store = dict[tuple[Any, int], Any]
_DIRECT = 4  # parts of this few ranges are compared range by range, without a copy


class Snap:
    """An exact copy of ``ranges`` of ``tensors``: their integer views laid end to end,
    one ``torch.cat`` per (device, element size). Verifying is another ``cat`` and one
    ``torch.equal`` on the CPU (an element-wise compare and a per-range count on CUDA,
    read later); ``retake`` keeps the second copy as the baseline. Memory: twice the
    elements covered, at most. ``store``/``spare`` hold the copies, and may be shared by
    snapshots never alive together (rotating shares: one copy, of the share due)."""

    def __init__(
        self, tensors: Named, ranges: list[Range], store: Store | None = None,
        spare: Store | None = None,
    ) -> None:  # fmt: skip
        self.tensors = tensors
        groups: dict[tuple[Any, int], list[Range]] = {}
        for r in ranges:
            t = tensors[r.index][1]
            groups.setdefault((t.device, t.element_size()), []).append(r)
        self.parts = [(key, tuple(rs)) for key, rs in groups.items()]
        self._store: Store = {} if store is None else store
        self._spare: Store = {} if spare is None else spare
        self._cache: list[list[Any] | None] = [None] * len(self.parts)
        self._bounds: list[tuple[Any, Any] | None] = [None] * len(self.parts)
        self._taken = False

    def _views(self, k: int) -> list[Any]:
        """The integer views of part ``k``'s ranges; those of contiguous tensors are built
        once (a storage swapped under them is the identity checks' finding)."""
        cached = self._cache[k]
        if cached is None:
            ranges = self.parts[k][1]
            views = [_flat(self.tensors[r.index][1])[r.start : r.end] for r in ranges]
            contiguous = all(self.tensors[r.index][1].is_contiguous() for r in ranges)
            if contiguous:
                self._cache[k] = views
            return views
        return cached

    def _fill(self, store: Store, k: int) -> Any:
        import torch

        key = self.parts[k][0]
        store[key] = out = torch.cat(self._views(k))
        return out

    def take(self) -> None:
        for k in range(len(self.parts)):
            self._fill(self._store, k)
        self._taken = True

    def diffs(self, *, retake: bool = False) -> list[Any] | None:
        import torch

        if not self._taken:
            self.take()
            return None
        out: list[Any] = []
        clean = True
        for k, (key, ranges) in enumerate(self.parts):
            old = self._store[key]
            direct = not retake and key[0].type == "cpu" and len(ranges) <= _DIRECT
            if direct and self._equal(k, old):  # a few large ranges: no copy
                out.append(None)
                continue
            now = self._fill(self._spare, k)
            if key[0].type == "cpu" and torch.equal(old, now):
                out.append(None)
            else:
                clean = False
                out.append(self._per_range(k, old != now))
            if retake:
                self._store[key], self._spare[key] = self._spare[key], self._store[key]
        if clean:
            return None
        return [
            d if d is not None else _zeros(len(rs))
            for d, (_, rs) in zip(out, self.parts, strict=True)
        ]

    def _per_range(self, k: int, ne: Any) -> Any:
        """Which ranges of part ``k`` hold a differing element (a bool per range); the
        bounds are built once per device, so CUDA never waits on a host copy."""
        import torch

        bounds = self._bounds[k]
        if bounds is None:
            lengths = [r.end - r.start for r in self.parts[k][1]]
            ends = torch.tensor(lengths, dtype=torch.int64).cumsum(0)
            starts = torch.cat([ends.new_zeros(1), ends[:-1]])
            self._bounds[k] = bounds = (starts.to(ne.device), ends.to(ne.device))
        starts, ends = bounds
        counts = torch.cat([ne.new_zeros(1, dtype=torch.int64), ne.to(torch.int64).cumsum(0)])
        return (counts[ends] - counts[starts]) > 0

    def _equal(self, k: int, old: Any) -> bool:
        import torch

        start = 0
        for view in self._views(k):
            n = int(view.numel())
            if not torch.equal(view, old[start : start + n]):
                return False
            start += n
        return True

    def changed(self, diffs: list[Any]) -> list[int]:
        out: set[int] = set()
        for (_, ranges), diff in zip(self.parts, diffs, strict=True):
            out.update(ranges[i].index for i in diff.nonzero().reshape(-1).tolist())
        return sorted(out)


class Hashed:
    """Keyed digests of ``ranges`` (``Digests``) behind the ``Baseline`` interface: no
    copy is kept, for sets too large to copy."""

    def __init__(self, dg: Digests, tensors: Named, ranges: list[Range]) -> None:
        self.dg = dg
        self.tensors = tensors
        self.ranges = ranges
        self.old: Digested | None = None

    def take(self) -> None:
        self.old = self.dg.take(self.tensors, self.ranges)

    def diffs(self, *, retake: bool = False) -> list[Any] | None:
        if self.old is None:
            self.take()
            return None
        again = self.dg.take(self.tensors, self.ranges)
        out = [
            (o != n).reshape(-1) for (_, o), (_, n) in zip(self.old.parts, again.parts, strict=True)
        ]
        if retake:
            self.old = again
        return out

    def changed(self, diffs: list[Any]) -> list[int]:
        assert self.old is not None
        return self.dg.changed(self.old, diffs)


_ZEROS: dict[int, Any] = {}


def _zeros(n: int) -> Any:
    """An all-false vector (cached): a part that a CPU compare found equal."""
    if n not in _ZEROS:
        import torch

        _ZEROS[n] = torch.zeros(n, dtype=torch.bool)
    return _ZEROS[n]


def _flat(t: Any) -> Any:
    flat = t.detach().reshape(-1)
    return flat.view(_int(flat.element_size()))


def _int(size: int) -> Any:
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[size]


def layout(
    tensors: Named, limit: int, small: int, every: int, *, hash_all: bool
) -> tuple[list[Range], list[list[Range]]]:
    """The ranges to copy (verified completely at every hook) and the shares to hash or
    copy in rotation (``state.py``'s docstring): everything is copied up to ``limit``
    elements (unless ``hash_all``, the batched CUDA path); beyond it, the tensors of up to
    ``small`` elements, and the rest is one share with ``hash_all``, else at most
    ``every`` shares (``_ranges.plan``: whole segments)."""
    whole = [Range(i, 0, int(t.numel())) for i, (_, t) in enumerate(tensors)]
    if sum(r.end for r in whole) <= limit and not hash_all:
        return whole, []
    tiny = {r.index for r in whole if r.end <= small}
    rest = [r for r in whole if r.index not in tiny]
    copied = [r for r in whole if r.index in tiny]
    if not rest:
        return copied, []
    return copied, ([rest] if hash_all else plan(tensors, every, skip=tiny))


def keyed(key: bytes, salt: bytes, counter: int, n: int) -> int:
    """The share due at ``counter``: one fixed order of the ``n`` shares, drawn from the
    run's key and repeated, so every share is due exactly once in any ``n`` consecutive
    steps and code that cannot read the key cannot tell which one the next window
    watches."""
    return 0 if n <= 1 else _order(key, salt, n)[counter % n]


@functools.lru_cache(maxsize=64)
def _order(key: bytes, salt: bytes, n: int) -> tuple[int, ...]:
    head = hashlib.blake2b(salt, key=key[:64], digest_size=8).digest()
    return tuple(
        sorted(
            range(n),
            key=lambda i: hashlib.blake2b(head + i.to_bytes(8, "little"), digest_size=8).digest(),
        )
    )


def unwatchable(t: Any) -> str | None:
    """Why ``t`` cannot be fingerprinted, or None when it can."""
    import torch

    if not isinstance(t, torch.Tensor):
        return "not a tensor"
    if t.layout != torch.strided:
        return f"layout {t.layout}"
    if t.device.type == "meta":
        return "meta tensor"
    if t.element_size() not in (1, 2, 4, 8):
        return f"element size {t.element_size()}"
    if type(t).__name__.startswith("Uninitialized"):
        return "uninitialized (lazy module)"
    return None
