"""Keyed fingerprints of the tensors and arrays a dataset holds, verified on a rotation.

Why: ``dataset.tensors[1].data[7] = 3`` or a write through ``untyped_storage()``
relabels samples without any object being replaced and without bumping the tensor's
version counter (``.data`` has its own), so only the bytes themselves show it.

What is fingerprinted: the tensors (and numpy arrays, read through a zero-copy tensor
view) that a watched dataset holds at attach, as attributes or as elements of list and
tuple attributes (``TensorDataset.tensors``, a list of sample tensors), cut into units
of at most ``CHUNK`` bytes; each unit's fingerprint is ``sum(x_i * r_i)`` over its bytes
read as int32 with secret odd ``r`` derived from the guard's key (as ``data_contents``).
Only content present at attach: attributes added later (a lazy cache), dict values and
list elements appended later are not looked at, so honest caches stay silent.

Schedule: every step, each item's identity (data pointer, version counter, shape) is
compared (up to ``IDENTITY_ITEMS`` items; beyond, the items under verification); a
change triggers a full verification of that item, so honest moves (``share_memory_()``
when spawn-context workers pickle the dataset, an in-place op that leaves the values)
stay silent while real edits alert at once. Then a keyed rotation verifies up to
``budget`` bytes (and ``UNITS_PER_STEP`` units): a small dataset is verified in full at
every step, a large one once every ``total / budget`` steps, in an order the insider
cannot predict without the key. Units off the CPU are compared when ``resolve`` reads
them back (the guard's flush cadence), never with a sync per step.

What it trusts: the bytes at attach are honest (a dataset edited before ``Guard()``
starts is the baseline), the key is secret, and torch's own tensor arithmetic (taken
when this module is imported) is not patched. Contents beyond ``cap`` bytes are not
fingerprinted (a keyed choice of units up to ``cap`` is; ``skipped`` says how much).
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["CHUNK", "Change", "ContentWatch"]

CHUNK = 1 << 16
UNITS_PER_STEP = 16
IDENTITY_ITEMS = 64
_Generator = torch.Generator
_randint = torch.randint
_randperm = torch.randperm


@dataclass(frozen=True, slots=True)
class Change:
    """One watched item whose bytes differ from their fingerprint at attach."""

    where: str
    step: int
    what: str
    evidence: dict[str, Any]


class _Item:
    __slots__ = ("bytes", "ptr", "shape", "tensor", "version", "where")

    def __init__(self, where: str, tensor: torch.Tensor, view: torch.Tensor) -> None:
        self.where = where
        self.tensor = tensor  # what identity is read from
        self.bytes = view  # a flat uint8 view of the same memory
        self.ptr, self.version, self.shape = _identity(tensor)


class ContentWatch:
    """The tensors and arrays of the watched datasets, with their fingerprints."""

    def __init__(self, key: bytes, *, budget: int = 1 << 18, cap: int = 1 << 28) -> None:
        self.budget = budget
        self.cap = cap
        self.skipped = 0
        self.notes: list[tuple[str, str]] = []
        self._key = key
        self._items: list[_Item] = []
        self._units: list[tuple[int, int, int]] = []  # (item, start, end)
        self._expected: list[int] = []
        self._order: list[int] = []
        self._cursor = 0
        self._r: dict[Any, torch.Tensor] = {}
        self._pending: list[tuple[int, list[int], torch.Tensor]] = []
        self._seen: set[int] = set()

    # -- building --------------------------------------------------------------------

    def add(self, where: str, value: Any) -> bool:
        """Watch a tensor or a numpy array (False: neither, or not fingerprintable)."""
        tensor = _as_tensor(value)
        if tensor is None:
            return False
        if id(value) in self._seen:
            return True
        try:
            view = _bytes_view(tensor)
        except (RuntimeError, TypeError, ValueError) as exc:
            self.notes.append((where, f"not fingerprinted: {type(exc).__name__}: {exc}"))
            return True
        self._seen.add(id(value))
        self._items.append(_Item(where, tensor, view))
        return True

    def seal(self) -> None:
        """Cut the items into units, choose those within ``cap``, fingerprint them."""
        units = [
            (i, s, min(s + CHUNK, item.bytes.numel()))
            for i, item in enumerate(self._items)
            for s in range(0, item.bytes.numel(), CHUNK)
        ]
        order = self._permutation(len(units), b"units")
        kept, total = [], 0
        for u in order:
            size = units[u][2] - units[u][1]
            if total + size > self.cap:
                self.skipped += size
                continue
            total += size
            kept.append(units[u])
        self._units = sorted(kept)
        self._expected = self._project(list(range(len(self._units))))
        self._order = self._permutation(len(self._units), b"order")

    # -- checking --------------------------------------------------------------------

    def check(self, step: int) -> list[Change]:
        """Identity of every item, then the next units of the rotation (CPU units are
        compared now, others when ``resolve`` runs)."""
        if not self._units:
            return []
        due = self._next_units()
        changes: list[Change] = []
        items = range(len(self._items))
        if len(self._items) > IDENTITY_ITEMS:
            items = sorted({self._units[u][0] for u in due})  # type: ignore[assignment]
        for i in items:
            item = self._items[i]
            now = _identity(item.tensor)
            if now != (item.ptr, item.version, item.shape):
                if now[2] != item.shape:
                    changes.append(self._change(item, step, "its shape changed", now))
                    item.shape = now[2]
                    continue
                item.ptr, item.version = now[0], now[1]
                due += [u for u, unit in enumerate(self._units) if unit[0] == i]
        due = sorted(set(due))
        values = torch.stack([self._one(u) for u in due]) if due else None
        if values is not None:
            self._pending.append((step, due, values))
        return changes + self.resolve(cpu_only=True)

    def resolve(self, *, cpu_only: bool = False) -> list[Change]:
        """Compare the projections computed so far (one read-back per device)."""
        keep, out = [], []
        reported: set[int] = set()
        for step, units, values in self._pending:
            if cpu_only and values.device.type != "cpu":
                keep.append((step, units, values))
                continue
            for u, got in zip(units, values.tolist(), strict=True):
                item = self._units[u][0]
                if got != self._expected[u] and item not in reported:
                    reported.add(item)
                    what = f"its bytes differ from the fingerprint at attach (unit {u})"
                    out.append(self._change(self._items[item], step, what, None))
        self._pending = keep
        return out

    def rebaseline(self) -> None:
        """Accept the current bytes (``guard.authorized()``)."""
        self._pending = []
        for item in self._items:
            item.ptr, item.version, item.shape = _identity(item.tensor)
        self._expected = self._project(list(range(len(self._units))))

    # -- internals -------------------------------------------------------------------

    def _next_units(self) -> list[int]:
        n = len(self._order)
        if n == 0:
            return []
        due: list[int] = []
        size = 0
        while len(due) < min(n, UNITS_PER_STEP) and (not due or size < self.budget):
            u = self._order[self._cursor]
            self._cursor = (self._cursor + 1) % n
            due.append(u)
            size += self._units[u][2] - self._units[u][1]
        return due

    def _change(self, item: _Item, step: int, what: str, now: Any) -> Change:
        evidence: dict[str, Any] = {
            "dtype": str(item.tensor.dtype),
            "shape": list(item.shape),
            "device": str(item.tensor.device),
        }
        if now is not None:
            evidence["shape_now"] = list(now[2])
        return Change(item.where, step, what, evidence)

    def _project(self, units: list[int]) -> list[int]:
        if not units:
            return []
        return [int(v) for v in torch.stack([self._one(u) for u in units]).tolist()]

    def _one(self, u: int) -> torch.Tensor:
        i, start, end = self._units[u]
        chunk = self._items[i].bytes[start:end]
        aligned = chunk.numel() % 4 == 0
        x = chunk.view(torch.int32) if aligned else chunk.to(torch.int32)
        r = self._r_on(x.device)
        return (x * r[: x.numel()]).sum(dtype=torch.int64)

    def _r_on(self, device: Any) -> torch.Tensor:
        r = self._r.get(device)
        if r is None:
            base = self._r.get("cpu")
            if base is None:
                g = _Generator()
                g.manual_seed(self._seed(b"r"))
                drawn = _randint(-(2**31), 2**31 - 1, (CHUNK,), generator=g, dtype=torch.int64)
                base = self._r["cpu"] = (drawn | 1).to(torch.int32)
            r = self._r[device] = base.to(device)
        return r

    def _permutation(self, n: int, what: bytes) -> list[int]:
        g = _Generator()
        g.manual_seed(self._seed(what))
        return [int(v) for v in _randperm(n, generator=g).tolist()]

    def _seed(self, what: bytes) -> int:
        digest = hashlib.blake2b(what, key=self._key[:64], digest_size=8, person=b"tg.dataset")
        return int.from_bytes(digest.digest()) & ((1 << 63) - 1)


def _identity(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    return t.data_ptr(), t._version, tuple(t.shape)


def _as_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.ndarray):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # read-only arrays: only read here
                return torch.from_numpy(value)
        except (TypeError, ValueError, RuntimeError):
            return None
    return None


def _bytes_view(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 tensor over ``t``'s memory (its storage when not contiguous)."""
    if t.is_sparse or t.is_quantized or t.is_meta:
        raise TypeError(f"a {t.layout} tensor")
    t = t.detach()
    if t.is_contiguous():
        return t.reshape(-1).view(torch.uint8)
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage())
