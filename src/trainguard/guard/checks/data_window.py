"""The window of batch fingerprints that ``DataCheck`` writes as ``data.fingerprints``.

Why: a later replay must be able to rebuild each batch and compare it with what the job
trained on. So each step's entry holds the keyed BLAKE2b of the batch's sample indices
(all of them), the indices themselves in a compact form, and, when the loop passes
``guard.step(batch=...)``, a keyed projection of the batch's tensors.

Compact indices: a run of three or more consecutive indices ``a, a+1, ..., a+n-1`` is
written ``[a, n]``, any other index as itself; a batch of more than ``MAX_INDICES``
indices keeps the first ``MAX_INDICES`` and its step is listed under ``truncated`` (the
digest covers the full list). Indices that are not plain ints (a custom sampler yielding keys) are
``null``: the digest alone then stands for them. A loader without indices (an
``IterableDataset``, a loader that is not a ``DataLoader``) writes ``"indices": null``
with ``indices_unavailable`` saying why.

What it trusts: the indices handed to ``add`` are the ones the loader drew (the sampler
proxy passes them through unchanged) and the key is the guard's; the ledger's own chain
protects what is written.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Mapping
from itertools import islice
from typing import Any

import torch

from trainguard.guard.checks.data_contents import hex_digest, index_digest, read_back

__all__ = ["MAX_INDICES", "FingerprintWindow", "compact_indices"]

MAX_INDICES = 1024  # indices written per step; the digest covers every one
MAX_WINDOW = 4096  # entries buffered before an event is written regardless of steps


def compact_indices(items: list[Any]) -> tuple[list[Any] | None, bool]:
    """``items`` as runs and single ints (``None`` when they are not plain ints), and
    whether the list was cut at ``MAX_INDICES``."""
    cut = len(items) > MAX_INDICES
    head = items[:MAX_INDICES]
    if not all(type(i) is int for i in head):
        return None, cut
    out: list[Any] = []
    k = 0
    while k < len(head):
        n = 1
        while k + n < len(head) and head[k + n] == head[k] + n:
            n += 1
        if n >= 3:
            out.append([head[k], n])
        else:
            out.extend(head[k : k + n])
        k += n
    return out, cut


class FingerprintWindow:
    """Entries since the last event, thread-safe (the loader's pin-memory thread and the
    training loop both add)."""

    def __init__(self, key: bytes, emit: Callable[[str, Mapping[str, Any]], None]) -> None:
        self._key = key
        self._emit = emit
        self._lock = threading.Lock()
        self._epoch: int | None = None
        self._digests: list[str] = []
        self._steps: list[int] = []
        self._indices: list[list[Any] | None] = []
        self._truncated: list[int] = []
        self._contents: list[tuple[int, bytes, list[torch.Tensor]]] = []
        self.unavailable = ""  # why this loader has no indices ("" when it has)

    def new_pass(self, epoch: int) -> None:
        self.flush()
        with self._lock:
            self._epoch = epoch

    def add(self, step: int, items: list[Any]) -> None:
        digest = index_digest(items, self._key)
        compact, cut = compact_indices(items)
        with self._lock:
            if cut:
                self._truncated.append(step)
            self._digests.append(digest)
            self._steps.append(step)
            self._indices.append(compact)
            full = len(self._digests) >= MAX_WINDOW
        if full:
            self.flush()

    def add_contents(self, step: int, layout: bytes, projections: list[torch.Tensor]) -> None:
        with self._lock:
            self._contents.append((step, layout, projections))

    def flush(self) -> None:
        with self._lock:
            if not self._digests and not self._contents:
                return
            steps = self._steps + [c[0] for c in self._contents]
            evidence: dict[str, Any] = {
                "epoch": self._epoch,
                "first_step": min(steps),
                "digests": self._digests,
                "steps": self._steps,
                "indices": self._indices if not self.unavailable else None,
            }
            if self.unavailable:
                evidence["indices_unavailable"] = self.unavailable
            if self._truncated:
                evidence["truncated"] = self._truncated
            contents = self._contents
            self._digests, self._steps, self._indices = [], [], []
            self._truncated, self._contents = [], []
        if contents:  # one read-back per device per event, never one per step
            values = iter(read_back([t for c in contents for t in c[2]]))
            rows = []
            for step, layout, digests in contents:
                numbers = struct.pack(f"<{len(digests)}q", *islice(values, len(digests)))
                rows.append([step, hex_digest(self._key, layout + numbers)])
            evidence["contents"] = rows
        self._emit("data.fingerprints", evidence)
