"""Keyed fingerprints of what a loader yields: batch indices and batch tensors.

``DataCheck`` records them as ``data.fingerprints`` events for a later replay: a keyed
BLAKE2b of each batch's indices, and a keyed projection of the tensors handed to
``guard.step(batch=...)`` (two tensor operations per tensor, computed where the tensor
lives, read back once per event, equal on every device).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["Projector", "hex_digest", "index_digest", "read_back"]

_Generator = torch.Generator  # captured at import, as in sampler_order


def index_digest(items: list[Any], key: bytes) -> str:
    try:
        return hex_digest(key, b"q" + struct.pack(f"<{len(items)}q", *items))
    except (struct.error, TypeError, OverflowError, ValueError):  # not plain int indices
        return hex_digest(key, b"r" + repr(items).encode())


class Projector:
    """Keyed projections of batch tensors: ``sum(x_i * r_i)`` over the tensor's bits
    read as int32 (products wrap mod 2^32, the sum is int64), with ``r`` secret odd
    integers. Integer arithmetic is exact and order-free, so CPU and GPU agree; one
    changed element always changes the sum, and cancelling changes need ``r``. A tensor
    over the budget is read on an even stride (recorded in the layout)."""

    def __init__(self, key: bytes, budget: int) -> None:
        self.limit = max(1, budget // 4)
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"tg.data").digest())
        g = _Generator()
        g.manual_seed(seed & ((1 << 63) - 1))
        r = torch.randint(-(2**31), 2**31 - 1, (self.limit,), generator=g, dtype=torch.int64)
        self._r = {torch.device("cpu"): (r | 1).to(torch.int32)}

    def batch(self, batch: Any) -> tuple[bytes, list[torch.Tensor]] | None:
        """The layout (names, dtypes, shapes, strides) of the tensors in a batch (nested
        lists, tuples, mappings) and their projections, left on their devices."""
        tensors: list[torch.Tensor] = []
        layout: list[str] = []
        _collect(batch, tensors, layout, 0)
        if not tensors:
            return None
        digests = []
        for t in tensors:
            try:
                x = _int32(t.detach().reshape(-1))
                stride = max(1, math.ceil(x.numel() / self.limit))
                x = x[::stride]
                r = self._r.get(x.device)
                if r is None:
                    r = self._r[x.device] = self._r[torch.device("cpu")].to(x.device)
                digests.append((x * r[: x.numel()]).sum(dtype=torch.int64))
                layout.append(f"/{stride}")
            except (RuntimeError, TypeError):  # sparse, quantized, meta tensors
                layout.append("/unhashed")
        return "|".join(layout).encode(), digests


def _int32(flat: torch.Tensor) -> torch.Tensor:
    """The bits of a flat tensor as int32 (bytes widened when the size is not a multiple
    of 4)."""
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    if flat.numel() * flat.element_size() % 4:
        return flat.contiguous().view(torch.uint8).to(torch.int32)
    try:
        return flat.view(torch.int32)
    except RuntimeError:  # a storage offset not aligned to 4 bytes
        return flat.clone().view(torch.int32)


def _collect(obj: Any, tensors: list[torch.Tensor], layout: list[str], depth: int) -> None:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        layout.append(f"{obj.dtype}{tuple(obj.shape)}")
    elif depth < 4 and isinstance(obj, Mapping):
        for k, v in list(obj.items())[:256]:
            layout.append(repr(k)[:100])
            _collect(v, tensors, layout, depth + 1)
    elif depth < 4 and isinstance(obj, list | tuple):
        for v in obj[:256]:
            _collect(v, tensors, layout, depth + 1)


def read_back(values: list[torch.Tensor]) -> list[int]:
    """0-d tensors to ints with one transfer per device."""
    out = [0] * len(values)
    by_device: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        by_device.setdefault(v.device, []).append(i)
    for where in by_device.values():
        for i, number in zip(where, torch.stack([values[i] for i in where]).tolist(), strict=True):
            out[i] = int(number)
    return out


def hex_digest(key: bytes, data: bytes) -> str:
    return hashlib.blake2b(data, key=key, digest_size=16).hexdigest()
