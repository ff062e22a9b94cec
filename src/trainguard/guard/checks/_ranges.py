"""Ranges of the trained parameters: how the weights check splits and batches its work.

A ``Range`` is a flat element span of one parameter (by its index in the check's list).
``plan`` cuts the parameters into slots of about equal size (one slot is verified per
step on a large CPU model); ``batches`` groups ranges for the batched (GPU) fingerprint;
``ranges_at`` maps a changed position of a digest vector back to its ranges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainguard.guard.checks.fingerprint import SEGMENT

__all__ = ["BATCH_ELEMENTS", "WIDTH", "Range", "batches", "plan", "ranges_at"]


@dataclass(frozen=True, slots=True)
class Range:
    index: int
    start: int
    end: int


BATCH_ELEMENTS = 1 << 26  # 256 MB of int32 per concatenation on the GPU
WIDTH = 4096  # segment width of the batched path: each range is padded to whole segments


def batches(ranges: list[Range], params: list[tuple[str, Any]]) -> list[list[Range]]:
    """Group ranges by device and element width, at most ``BATCH_ELEMENTS`` per group."""
    groups: dict[tuple[Any, int], list[list[Range]]] = {}
    for r in ranges:
        p = params[r.index][1]
        key = (p.device, p.element_size())
        runs = groups.setdefault(key, [[]])
        if runs[-1] and sum(x.end - x.start for x in runs[-1]) + r.end - r.start > BATCH_ELEMENTS:
            runs.append([])
        runs[-1].append(r)
    return [run for runs in groups.values() for run in runs if run]


def ranges_at(batch: list[Range], hits: list[int], segment: int) -> list[Range]:
    """The ranges of ``batch`` that the changed positions ``hits`` fall in: positions are
    ranges (``segment`` 0) or segments of the concatenation."""
    if not segment:
        return [batch[i] for i in hits]
    out, first = [], 0
    for r in batch:
        count = -(-(r.end - r.start) // segment)
        if any(first <= h < first + count for h in hits):
            out.append(r)
        first += count
    return out


def plan(
    params: list[tuple[str, Any]], slots: int, skip: set[int] | None = None
) -> list[list[Range]]:
    """Split the parameters (but those in ``skip``) into ``slots`` groups of about equal
    element counts, cutting big tensors at segment boundaries."""
    skip = skip or set()
    total = sum(int(p.numel()) for i, (_, p) in enumerate(params) if i not in skip)
    share = max(SEGMENT, -(-total // max(slots, 1)))
    share = -(-share // SEGMENT) * SEGMENT
    out: list[list[Range]] = [[]]
    room = share
    for i, (_, p) in enumerate(params):
        if i in skip:
            continue
        n, start = int(p.numel()), 0
        while start < n:
            if room == 0:
                out.append([])
                room = share
            take = min(n - start, room)
            out[-1].append(Range(i, start, start + take))
            start += take
            room -= take
    return [s for s in out if s] or [[]]
