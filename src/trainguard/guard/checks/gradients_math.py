"""The arithmetic of the gradient check (``gradients``), kept apart so it is tested alone.

Three pure pieces, all on small host tensors (a few thousand float64 elements):

``plan`` / ``draw``
    the keyed coordinates of one step: each parameter gets a share of the ``budget``
    proportional to its size, at least ``_MIN_PER`` elements (all of a smaller one), so
    every parameter is sampled at every step; ``HMAC(key, step)`` seeds a generator of
    the module's own (``torch.Generator`` taken at import) that picks them afresh.
``judge``
    the final gradient ``F`` at those coordinates against the mean ``M`` of the ranks'
    local gradients (what an averaging all-reduce yields). Honest code may scale every
    gradient by ONE factor ``s`` in ``(0, 1]`` (``clip_grad_norm_``,
    ``GradScaler.unscale_``) and clamp every element to one bound ``c``
    (``clip_grad_value_``); ``s`` is the median of ``F/M`` over the elements below the
    largest magnitude, and each element must then satisfy ``|F - s M| <= tol`` with
    ``tol = s * slack + 4 eps |F|``, ``slack`` the caller's rounding allowance (the float
    error of summing the ranks' values, or of an honest fp16/bf16 comm hook). Elements off
    by more are explained only as a clamp: all at the one magnitude ``c = max |F|``, with
    the sign of ``M`` and ``s |M| >= c``. Anything else is a verdict with the worst
    element.
``odd_ranks``
    which rank's local gradients stand out over the last steps. It trusts only relative
    evidence: a rank whose median norm is ``_NORM_RATIO`` times the others' mean, or (three
    ranks or more) whose median cosine to the others' mean is negative while the others
    agree (median at least ``_COS_MARGIN`` above it). With two ranks the cosine is one
    symmetric number (``cos(g0, g1)``): it cannot say which rank is odd, so only the norm
    ratio names a rank there.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Plan", "Verdict", "draw", "judge", "odd_ranks", "plan"]

_Generator = torch.Generator  # taken at import: a later patch of torch cannot steer the draw
_MIN_PER = 8
_MAX_SCALE = 1.0 + 1e-3  # honest rescaling only shrinks (clip) or unscales (GradScaler)
_NORM_RATIO = 4.0
_COS_MARGIN = 0.5


@dataclass(frozen=True, slots=True)
class Plan:
    """How many coordinates each parameter gets (fixed while the parameters are)."""

    counts: tuple[int, ...]
    scale: torch.Tensor  # each coordinate's parameter size, float64


def plan(sizes: Sequence[int], budget: int) -> Plan:
    """Each parameter's share of ``budget``, proportional to its size, at least
    ``_MIN_PER`` (all of a smaller parameter)."""
    total = max(1, sum(sizes))
    counts = tuple(min(n, max(_MIN_PER, round(budget * n / total))) for n in sizes)
    scale = torch.repeat_interleave(
        torch.tensor(sizes, dtype=torch.float64), torch.tensor(counts, dtype=torch.int64)
    )
    return Plan(counts, scale)


def draw(key: bytes, step: int, sizes: Plan) -> list[torch.Tensor]:
    """Flat int64 coordinates into each parameter for ``step`` (one tensor per parameter)."""
    digest = hmac.new(key, b"trainguard.gradients:%d" % step, hashlib.sha256).digest()
    gen = _Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    u = torch.rand(sizes.scale.numel(), generator=gen, dtype=torch.float64)
    flat = torch.minimum(u * sizes.scale, sizes.scale - 1).to(torch.int64)
    return list(torch.split(flat, list(sizes.counts)))


@dataclass(frozen=True, slots=True)
class Verdict:
    """How the final gradient relates to the mean of the local ones at the sampled elements."""

    ok: bool
    scale: float  # the one factor s with F = s M (1.0 when nothing could be estimated)
    clip: float | None  # the clamp bound c, when elements were clamped
    bad: int  # elements that neither s nor c explain
    worst: int  # index (into the sample) of the worst such element; -1 when none
    excess: float  # |F - s M| / tol at the worst element
    reason: str


def judge(final: torch.Tensor, mean: torch.Tensor, slack: torch.Tensor) -> Verdict:
    """``final`` (F), ``mean`` (M) and ``slack`` are float64 vectors of equal length."""
    eps = float(torch.finfo(torch.float32).eps)
    mag = final.abs()
    top = float(mag.max()) if mag.numel() else 0.0
    usable = (mean != 0) & (final != 0) & (mag < top * (1 - 1e-6))
    if not bool(usable.any()):
        usable = (mean != 0) & (final != 0)
    if bool(usable.any()):
        scale = float((final[usable] / mean[usable]).median())
    elif bool((final == 0).all()) and bool((mean == 0).all()):
        return Verdict(True, 1.0, None, 0, -1, 0.0, "")
    else:
        scale = 0.0
    tol = abs(scale) * slack + 4 * eps * mag + 1e-30
    off = (final - scale * mean).abs() / tol
    failing = off > 1
    if not bool(failing.any()):
        if 0 < scale <= _MAX_SCALE:
            return Verdict(True, scale, None, 0, -1, float(off.max()), "")
        return Verdict(False, scale, None, 0, -1, 0.0, _scale_reason(scale))
    clamped = (
        ((mag - top).abs() <= tol)
        & (torch.sign(final) == torch.sign(mean))
        & (scale * mean.abs() >= top - tol)
    )
    unexplained = failing & ~clamped
    if not bool(unexplained.any()) and 0 < scale <= _MAX_SCALE:
        return Verdict(True, scale, top, 0, -1, 0.0, "")
    worst_off = torch.where(unexplained, off, torch.zeros_like(off))
    worst = int(worst_off.argmax()) if bool(unexplained.any()) else -1
    reason = (
        _scale_reason(scale)
        if not 0 < scale <= _MAX_SCALE
        else f"{int(unexplained.sum())} of {final.numel()} sampled elements differ from "
        f"{scale:.6g} x the mean of the ranks' local gradients"
    )
    return Verdict(
        False,
        scale,
        None,
        int(unexplained.sum()),
        worst,
        float(off[worst]) if worst >= 0 else 0.0,
        reason,
    )


def _scale_reason(scale: float) -> str:
    if scale <= 0:
        return f"the gradients were multiplied by {scale:.6g} (zeroed or reversed)"
    return f"the gradients were scaled up by {scale:.6g} after the backward pass"


def odd_ranks(history: Sequence[Sequence[tuple[float, float]]]) -> list[tuple[int, str]]:
    """``history``: per step, per rank ``(cosine to the others' mean, norm / the others'
    mean norm)``. Returns ``(rank, why)`` for each rank that stands out."""
    if not history:
        return []
    ranks = len(history[0])
    out: list[tuple[int, str]] = []
    cos = [statistics.median(step[r][0] for step in history) for r in range(ranks)]
    ratio = [statistics.median(step[r][1] for step in history) for r in range(ranks)]
    for r in range(ranks):
        if math.isfinite(ratio[r]) and ratio[r] > _NORM_RATIO:
            out.append((r, f"its local gradient norm is {ratio[r]:.3g}x the other ranks' mean"))
            continue
        if ranks < 3:
            continue
        others = statistics.median(c for q, c in enumerate(cos) if q != r)
        if cos[r] < 0 and others - cos[r] >= _COS_MARGIN:
            out.append(
                (
                    r,
                    f"its local gradients point away from the other ranks' (median cosine "
                    f"{cos[r]:.3f}, the others {others:.3f})",
                )
            )
    return out
