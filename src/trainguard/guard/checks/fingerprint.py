"""Keyed fingerprints of tensors: exact, cheap, and unforgeable without the run's key.

A tensor's bits are read as integers (``int16``/``int32``/``int64`` views of the same
memory, so a 1-ulp flip is a change of 1) and projected on a secret random vector of odd
integers: ``h = sum_s c_s * sum_i x[s, i] * r[i]`` with wrap-around arithmetic, where
``s`` numbers segments of ``SEGMENT`` elements and ``c_s`` are secret odd multipliers.

Why this shape: a plain sum or norm misses offsetting edits (``+d`` here, ``-d`` there)
and permutations, and is at the mercy of float rounding. Here one changed element moves
``h`` by ``d * r_i * c_s``, which is never 0 modulo 2^32 for an odd ``r_i`` and a
non-zero ``d``; several changes cancel only if the attacker can solve for secret
multipliers; swapping elements or whole segments changes which multiplier each value
meets. The random vector is one segment long and reused, so memory stays flat.
"""

from __future__ import annotations

import hashlib
from typing import Any

__all__ = ["SEGMENT", "Fingerprinter"]

SEGMENT = 1 << 16
_INT_VIEW = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


class Fingerprinter:
    """Fingerprints for one run key; caches the random vectors per device."""

    def __init__(self, key: bytes, *, segment: int = SEGMENT) -> None:
        self.key = key
        self.segment = segment
        self._vectors: dict[Any, tuple[Any, Any]] = {}

    def _tables(self, device: Any, segments: int) -> tuple[Any, Any]:
        import torch

        cached = self._vectors.get(device)
        if cached is not None and cached[1].numel() >= segments:
            return cached
        seed = int.from_bytes(hashlib.blake2b(self.key, digest_size=8).digest(), "little")
        gen = torch.Generator().manual_seed(seed & ((1 << 63) - 1))
        r = torch.randint(-(2**31), 2**31 - 1, (self.segment,), generator=gen, dtype=torch.int64)
        r = (r | 1).to(torch.int32)
        count = max(segments, 1024, 2 * (cached[1].numel() if cached else 0))
        c = torch.randint(-(2**62), 2**62, (count,), generator=gen, dtype=torch.int64) | 1
        tables = (r.to(device), c.to(device))
        self._vectors[device] = tables
        return tables

    def combine(self, digests: list[Any], device: Any) -> Any:
        """One digest of several, position-sensitive: swapping the contents of two
        same-shaped tensors changes it (a plain sum would not)."""
        import torch

        if not digests:
            return torch.zeros((), dtype=torch.int64, device=device)
        _, c = self._tables(device, len(digests) + 1)
        stacked = torch.stack([d.to(device) for d in digests])
        return (stacked * c[: len(digests)]).sum()

    def segments(self, pieces: list[Any], width: int = 4096) -> Any:
        """Keyed sums of ``width``-element segments of the integer views ``pieces``, each
        piece padded to whole segments (so a segment belongs to one piece) and all laid
        end to end: one vector from a handful of kernels, however many pieces. This is
        the GPU path, where one launch per piece per operation would cost more than the
        arithmetic."""
        import torch

        flat = []
        for p in pieces:
            x = p if p.dtype != torch.uint8 else p.to(torch.int32)
            flat.append(x)
            pad = -int(x.numel()) % width
            if pad:
                flat.append(torch.zeros(pad, dtype=x.dtype, device=x.device))
        x = torch.cat(flat).view(-1, width)
        r, _ = self._tables(x.device, 1)
        r = r[:width].to(x.dtype) if x.dtype != torch.int32 else r[:width]
        return (x * r).sum(dim=1, dtype=torch.int64)

    def ints(self, tensor: Any) -> Any:
        """The tensor's memory as a flat integer tensor (no copy when contiguous)."""
        flat = tensor.detach().reshape(-1)
        name = _INT_VIEW[flat.element_size()]
        import torch

        return flat.view(getattr(torch, name))

    def digest(self, tensor: Any, start: int = 0, end: int | None = None) -> Any:
        """A 0-d int64 tensor on the tensor's device: the keyed projection of the flat
        elements ``[start, end)``. Segments are numbered from ``start`` so a range's
        digest does not depend on how the rest of the tensor is split."""
        import torch

        x = self.ints(tensor)[start:end]
        if x.dtype == torch.uint8:
            x = x.to(torch.int32)
        n = x.numel()
        full, tail = divmod(n, self.segment)
        r, c = self._tables(x.device, full + 1)
        r = r.to(x.dtype) if x.dtype != torch.int32 else r
        total = torch.zeros((), dtype=torch.int64, device=x.device)
        if full:
            body = x[: full * self.segment].view(full, self.segment)
            sums = (body * r).sum(dim=1, dtype=torch.int64)
            total = total + (sums * c[:full]).sum()
        if tail:
            part = (x[full * self.segment :] * r[:tail]).sum(dtype=torch.int64)
            total = total + part * c[full]
        return total
