"""Declared post-step constraints: weight writes the guard makes itself, and verifies.

Some training writes weights on purpose right after ``optimizer.step()``: WGAN weight
clipping (``p.clamp_(-c, c)``), non-negative factors, max-norm limits. Written by the
training loop, they land in the window the weights check guards (between two optimizer
steps) and read as tampering. Declared instead::

    Guard(model, opt, constraints=[Clamp(-0.01, 0.01, params=["critic.*"])])

the guard applies them itself, inside the optimizer's post-step hook: after the update
check has read what the optimizer wrote (the formula is judged on the unconstrained
result) and before the weights check takes its baseline (``trainguard.guard.writes``).

Each constraint computes its result out of place in the guard's own arithmetic, with
elementary ops that share no kernel with what a training loop would call (``where`` and a
comparison for the clamps; a float64 norm for ``MaxNorm``), rounded once to the
parameter's dtype. The guard writes it with ``copy_`` and reads it back: the parameter must
then hold exactly those bits, else ``runtime.weight_tamper``. ``Clamp`` and ``NonNegative``
match ``torch.clamp`` bit for bit (ties keep the input, ``-0.0`` included), so a training
loop that still clamps after the guard changes nothing and raises nothing; ``MaxNorm``
follows ``torch.renorm``'s formula but not its float32 norm, so re-applying it in the loop
can move a last bit, which is reported: drop it from the loop.

``params`` are ``fnmatch`` patterns over the guard's parameter names (the model's
``named_parameters`` names); ``None`` is every parameter the optimizer trains. A pattern
that matches nothing is a ``ConfigError`` when the guard starts.

What this trusts: the declaration (made in the user's script, recorded as a
``guard.constraints`` event) and torch's elementary ops (``lt``, ``where``, float64 ``sum``,
``sqrt``, ``mul``): a native edit of those is beyond any in-process check.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from trainguard.errors import ConfigError

__all__ = ["Clamp", "Constraint", "MaxNorm", "NonNegative", "select"]


class Constraint(Protocol):
    """What ``Guard(constraints=...)`` accepts: a pure function of one parameter."""

    @property
    def params(self) -> tuple[str, ...] | None:
        """``fnmatch`` patterns over parameter names; ``None``: every trained parameter."""

    def apply(self, tensor: Any) -> Any:
        """The constrained values, out of place, in ``tensor``'s dtype and device."""

    def describe(self) -> dict[str, Any]:
        """The declaration as JSON-able evidence."""


def _patterns(params: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if params is None:
        return None
    if isinstance(params, str):
        return (params,)
    out = tuple(params)
    if not out or not all(isinstance(p, str) for p in out):
        raise ConfigError("constraint params must be parameter-name patterns (str)")
    return out


def _bound(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    value = float(value)
    if math.isnan(value):
        raise ConfigError(f"constraint bound {name} is NaN")
    return value


@dataclass(frozen=True, slots=True, init=False)
class Clamp:
    """``p.clamp_(min, max)`` after every optimizer step (WGAN clipping, box constraints).
    Either bound may be ``None``; bounds are rounded to the parameter's dtype as
    ``torch.clamp`` rounds them."""

    min: float | None = None
    max: float | None = None
    params: tuple[str, ...] | None = None

    def __init__(
        self,
        min: float | None = None,  # torch.clamp's own names
        max: float | None = None,
        *,
        params: Sequence[str] | str | None = None,
    ) -> None:
        lo, hi = _bound(min, "min"), _bound(max, "max")
        if lo is None and hi is None:
            raise ConfigError("Clamp needs a min or a max")
        if lo is not None and hi is not None and lo > hi:
            raise ConfigError(f"Clamp min {lo} is above max {hi}")
        object.__setattr__(self, "min", lo)
        object.__setattr__(self, "max", hi)
        object.__setattr__(self, "params", _patterns(params))

    def apply(self, tensor: Any) -> Any:
        import torch

        out = tensor.detach()
        if self.min is not None:
            lo = torch.tensor(self.min, dtype=out.dtype, device=out.device)
            out = torch.where(out < lo, lo, out)  # ties and NaN keep the input, as clamp
        if self.max is not None:
            hi = torch.tensor(self.max, dtype=out.dtype, device=out.device)
            out = torch.where(out > hi, hi, out)
        return out

    def describe(self) -> dict[str, Any]:
        return {"constraint": "Clamp", "min": self.min, "max": self.max, "params": self.params}


def NonNegative(*, params: Sequence[str] | str | None = None) -> Clamp:
    """``p.clamp_(min=0)``: non-negative factors (NMF-style), variances, mixing weights."""
    return Clamp(0.0, None, params=params)


@dataclass(frozen=True, slots=True, init=False)
class MaxNorm:
    """Every slice ``p.select(dim, i)`` has an L2 norm of at most ``max_norm``: slices above
    it are scaled by ``max_norm / (norm + 1e-7)`` (``torch.renorm(p, 2, dim, max_norm)``'s
    formula); ``dim=None`` bounds the norm of the whole tensor. The norm and the product
    are float64, rounded once to the parameter's dtype; slices within the bound keep their
    bits."""

    max_norm: float
    dim: int | None = 0
    params: tuple[str, ...] | None = None

    def __init__(
        self,
        max_norm: float,
        dim: int | None = 0,
        *,
        params: Sequence[str] | str | None = None,
    ) -> None:
        value = float(max_norm)
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"MaxNorm needs a positive finite max_norm, got {max_norm}")
        object.__setattr__(self, "max_norm", value)
        object.__setattr__(self, "dim", dim)
        object.__setattr__(self, "params", _patterns(params))

    def apply(self, tensor: Any) -> Any:
        import torch

        x = tensor.detach()
        if x.dim() == 0:
            dims: list[int] = []
        elif self.dim is None:
            dims = list(range(x.dim()))
        else:
            keep = self.dim % x.dim()
            dims = [d for d in range(x.dim()) if d != keep]
        x64 = x.to(torch.float64)
        norm = x64.pow(2).sum(dim=dims, keepdim=True).sqrt() if dims else x64.abs()
        over = norm > self.max_norm
        scaled = (x64 * (self.max_norm / (norm + 1e-7))).to(x.dtype)
        return torch.where(over, scaled, x)

    def describe(self) -> dict[str, Any]:
        return {
            "constraint": "MaxNorm",
            "max_norm": self.max_norm,
            "dim": self.dim,
            "params": self.params,
        }


def select(patterns: tuple[str, ...] | None, names: Sequence[str], what: str) -> list[int]:
    """Indices of ``names`` that match any pattern (all when ``patterns`` is None); a
    pattern matching nothing is a configuration error, never a silent no-op."""
    if patterns is None:
        return list(range(len(names)))
    hits: set[int] = set()
    for pattern in patterns:
        found = [i for i, n in enumerate(names) if fnmatch.fnmatchcase(n, pattern)]
        if not found:
            raise ConfigError(f"{what}: no trained parameter matches {pattern!r}")
        hits.update(found)
    return sorted(hits)
