"""``nn.Embedding(max_norm=...)``: the write PyTorch makes during forward, modelled.

An ``Embedding`` or ``EmbeddingBag`` built with ``max_norm`` rescales, inside every
forward, the rows its input indexes whose norm exceeds ``max_norm``
(``torch.embedding_renorm_``: ``row *= max_norm / (norm + 1e-7)``), in place, under
``no_grad``. That forward runs between two optimizer steps, the very window the weights
check guards, so a stock model would read as tampered at its first step.

The watch puts a forward pre-hook on each such module whose weight is trained. The hook
records the call's indices and a copy of those rows as they are just before the forward
writes them. The weights check then replays the calls backwards from the live weight::

    W = live weight
    for each call j, last first:  judge W[idx_j] against the renorm of before_j
                                  W[idx_j] = before_j
    W must fingerprint as the baseline taken after the last optimizer step

so every element is accounted for: a row no call touched has not moved (the fingerprint
of ``W``), a touched row holds the renorm of what it held when its call began, and what it
held then is what the previous call left or, for its first call, the baseline (again the
fingerprint). Nothing is read back to the host; on CUDA the verdicts take the weights
check's deferred path. The cost: a copy of the rows each forward indexes (once per row
for CPU indices; with repeats for CUDA ones, where deduplicating would stall the stream),
and one clone of the weight per verification. More than ``_FOLD_CALLS`` calls, or more
rows than the weight has, in one window (an evaluation loop outside ``guard.swapped()``)
are folded into one exact entry (one stream sync), so the copies stay within about one
weight's worth.

The renorm is judged in the check's own float64 arithmetic, never by calling torch's:
a row left alone keeps its bits; a renormed row must be ``fl(x_i * s)`` for one scale ``s``
shared by the whole row (each element's rounding interval is intersected, exactly, with
``2**-22`` of slack for float16/bfloat16, whose product torch rounds twice), and ``s`` must
be within ``kappa`` of ``max_norm / (n + 1e-7)`` with ``n`` the float64 norm. ``kappa = d *
u + 4 * eps`` bounds torch's own norm of a ``d``-element row (``d`` float32 additions of
non-negative terms, then the norm rounded to the weight's dtype and the scale to float32):
the direction of every row is exact; only its length may differ from ``max_norm`` by
``kappa`` (5e-5 relative for ``d = 768``, float32). A row whose norm is within ``kappa``
of ``max_norm`` may be either left alone or renormed. Rows holding inf or NaN are not
judged (``weights.unverified`` event).

What the hook trusts, and why the insider gains nothing from it: it honours every forward,
so a forward the insider runs with indices of his choosing renorms exactly the rows torch
would, which only shrinks them to ``max_norm``: he can never write a value of his own.
``max_norm`` and the norm type are read when the guard attaches, so setting
``module.max_norm`` later makes torch's renorm disagree with the model and is caught. A
removed hook, ``torch.embedding_renorm_`` called outside a forward, or a later pre-hook
that changes the indices leave writes no recorded call explains: caught the same way.
Calls inside ``guard.authorized()`` or ``guard.swapped()`` are not recorded (the window's
end judges those). ``F.embedding(..., max_norm=...)`` on a bare parameter has no module to
hook and is reported like any other write.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._deferred import Verdicts
from trainguard.guard.checks.base import GuardContext

__all__ = ["RenormWatch", "judge_renorm"]

_FOLD_CALLS = 64
_INTS = {1: "uint8", 2: "int16", 4: "int32", 8: "int64"}


@dataclass(frozen=True, slots=True)
class _Module:
    name: str  # the weight's parameter name
    weight: Any
    max_norm: float
    norm_type: float


@dataclass(frozen=True, slots=True)
class _Call:
    idx: Any  # int64 row indices, as the forward received them
    before: Any  # those rows just before the forward wrote them
    max_norm: float
    norm_type: float
    after: Any = None  # a folded entry: the rows must be exactly these


class RenormWatch:
    """The calls of every hooked embedding since the weights check's last baseline."""

    def __init__(self) -> None:
        self.suspended = False  # inside a guard window: calls are not recorded
        self.step = 0  # the optimizer step the current window leads to (for alerts)
        self._modules: dict[int, list[_Module]] = {}
        self._calls: dict[int, list[_Call]] = {}
        self._hooks: list[Any] = []
        self._verdicts = Verdicts()
        self._said = False

    def attach(self, model: Any, named: Sequence[tuple[str, Any]]) -> set[int]:
        """Hook the max_norm embeddings whose weight is trained; the ids of those weights."""
        self.close()
        if model is None or not hasattr(model, "modules"):
            return set()
        import torch

        names = {id(p): n for n, p in named}
        kinds = (torch.nn.Embedding, torch.nn.EmbeddingBag)
        for module in model.modules():
            weight = getattr(module, "weight", None)
            limit = getattr(module, "max_norm", None)
            if not isinstance(module, kinds) or limit is None or id(weight) not in names:
                continue  # no renorm, or a frozen weight the weights check does not watch
            watched = _Module(names[id(weight)], weight, float(limit), float(module.norm_type))
            self._modules.setdefault(id(weight), []).append(watched)
            self._hooks.append(
                module.register_forward_pre_hook(self._hook(watched), with_kwargs=True)
            )
        return set(self._modules)

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        self._modules = {}
        self._calls = {}

    def reset(self) -> None:
        """A new baseline was taken: the calls so far are part of it."""
        self._calls = {}

    def written(self, param: Any) -> bool:
        return bool(self._calls.get(id(param)))

    # -- recording ---------------------------------------------------------------------

    def _hook(self, watched: _Module) -> Any:
        def record(module: Any, args: Any, kwargs: Any) -> None:
            if self.suspended:
                return
            indices = args[0] if args else kwargs.get("input")
            if indices is None or not hasattr(indices, "reshape"):
                return  # torch will refuse the call itself
            import torch

            weight = watched.weight.detach()
            idx = indices.detach().reshape(-1).to(torch.long, copy=True)
            if idx.device.type == "cpu":
                idx = torch.unique(idx)  # no device sync on the CPU: one copy per row
            try:
                before = weight.index_select(0, idx)
            except (IndexError, RuntimeError):
                return  # out-of-range indices: the forward fails the same way
            calls = self._calls.setdefault(id(watched.weight), [])
            if len(calls) >= _FOLD_CALLS or sum(int(c.idx.numel()) for c in calls) > int(
                weight.shape[0]
            ):
                self._fold(watched)
                calls = self._calls[id(watched.weight)]
            calls.append(_Call(idx, before, watched.max_norm, watched.norm_type))

        return record

    def _fold(self, watched: _Module) -> None:
        """Judge the calls so far and keep them as one exact entry (the window's net
        effect on the rows they touched)."""
        import torch

        key = id(watched.weight)
        base = self._replay(watched.name, watched.weight, self._calls[key], self.step)
        live = watched.weight.detach()
        idx = torch.unique(torch.cat([c.idx for c in self._calls[key]]))
        self._calls[key] = [
            _Call(idx, base.index_select(0, idx), 0.0, 0.0, after=live.index_select(0, idx))
        ]

    # -- verification ------------------------------------------------------------------

    def restored(self, named: Sequence[tuple[str, Any]]) -> dict[int, Any]:
        """For each watched parameter (by index in ``named``) written since the baseline,
        the weight as it must have been at the baseline; the judgments are queued."""
        out: dict[int, Any] = {}
        for i, (name, p) in enumerate(named):
            calls = self._calls.get(id(p))
            if calls:
                out[i] = self._replay(name, p, calls, self.step)
        return out

    def _replay(self, name: str, weight: Any, calls: list[_Call], step: int) -> Any:
        import torch

        w = weight.detach().clone()
        bad = torch.zeros((), dtype=torch.int64, device=w.device)
        first = torch.full((), -1, dtype=torch.int64, device=w.device)
        unjudged = torch.zeros((), dtype=torch.int64, device=w.device)
        for call in reversed(calls):
            now = w.index_select(0, call.idx)
            if call.after is not None:
                ok = _ints(now).reshape(len(call.idx), -1) == _ints(call.after).reshape(
                    len(call.idx), -1
                )
                ok, odd = ok.all(dim=1), torch.zeros_like(ok[:, 0])
            else:
                ok, odd = judge_renorm(call.before, now, call.max_norm, call.norm_type)
            wrong = ~ok
            bad = bad + wrong.sum()
            first = torch.where(wrong.any(), call.idx[wrong.to(torch.int32).argmax()], first)
            unjudged = unjudged + odd.sum()
            w.index_copy_(0, call.idx, call.before)
        self._verdicts.push((step, name), torch.stack([bad, first, unjudged]))
        return w

    def poll(self, ctx: GuardContext, *, wait: bool = False) -> None:
        """Report the judgments that have reached the host (all of them with ``wait``)."""
        for (step, name), (bad, first, unjudged) in self._verdicts.ready(wait=wait):
            if unjudged and not self._said:
                self._said = True
                ctx.event(
                    "weights.unverified",
                    {"check": "weights", "parameter": name, "reason": "non-finite rows"},
                )
            if bad:
                self._report(ctx, step, name, bad, first)

    def _report(self, ctx: GuardContext, step: int, name: str, bad: int, first: int) -> None:
        limits = sorted({m.max_norm for ms in self._modules.values() for m in ms if m.name == name})
        ctx.emit(
            Rule.WEIGHT_TAMPER,
            Severity.CRITICAL,
            f"embedding {name}: {bad} rows a forward touched between optimizer steps "
            f"{step - 1} and {step} are not the max_norm renorm of what they held "
            f"(row {first} first)",
            where=f"param:{name}",
            evidence={
                "parameter": name,
                "how": "not the max_norm renorm of the rows the forward indexed",
                "rows": bad,
                "first_row": first,
                "max_norm": limits,
            },
            step=step,
        )


def judge_renorm(before: Any, after: Any, max_norm: float, norm_type: float) -> tuple[Any, Any]:
    """Per row: may ``after`` be torch's max_norm renorm of ``before``? And which rows
    were not judged (non-finite). Float64, on the rows' device (module docstring)."""
    import torch

    k = before.shape[0]
    x, a = before.reshape(k, -1), after.reshape(k, -1)
    d = max(int(x.shape[1]), 1)
    xi, ai = _ints(x), _ints(a)
    same = (xi == ai).all(dim=1)
    x64, a64 = x.to(torch.float64), a.to(torch.float64)
    finite = x64.isfinite().all(dim=1)
    n = _norm(x64, norm_type)
    wide = x.dtype == torch.float64
    kappa = d * (2.0**-53 if wide else 2.0**-24) + 4 * float(torch.finfo(x.dtype).eps)
    s = max_norm / (n + 1e-7)
    surely_scaled = n > max_norm * (1 + kappa)
    surely_kept = n <= max_norm * (1 - kappa)
    scaled = _one_scale(x, a, xi, ai, x64, a64, s, kappa)
    ok = torch.where(surely_scaled, scaled, torch.where(surely_kept, same, same | scaled))
    return ok | ~finite, ~finite


def _one_scale(x: Any, a: Any, xi: Any, ai: Any, x64: Any, a64: Any, s: Any, kappa: float) -> Any:
    """Rows where one positive scale ``sigma`` within ``kappa`` of ``s`` gives
    ``fl(x_i * sigma) == a_i`` for every element: the intersection of the elements'
    rounding intervals, divided by ``|x_i|``, meets ``[s(1-kappa), s(1+kappa)]``."""
    import torch

    zero = x64 == 0
    signs = torch.where(zero, xi == ai, torch.signbit(x) == torch.signbit(a)).all(dim=1)
    mag = _ints(a.abs())
    up = _floats(mag + 1, a.dtype).to(torch.float64)
    down = torch.where(mag > 0, _floats(mag - 1, a.dtype).to(torch.float64), 0.0)
    rho = 2.0**-50 if a.dtype in (torch.float32, torch.float64) else 2.0**-22
    xa, aa = x64.abs(), a64.abs()
    inf = torch.tensor(math.inf, dtype=torch.float64, device=x.device)
    lo = torch.where(zero, -inf, (aa + down) / 2 / xa * (1 - rho)).amax(dim=1)
    hi = torch.where(zero, inf, (aa + up) / 2 / xa * (1 + rho)).amin(dim=1)
    fits = (lo <= hi) & (lo <= s * (1 + kappa)) & (hi >= s * (1 - kappa))
    return signs & fits


def _norm(x64: Any, p: float) -> Any:
    if math.isinf(p):
        return x64.abs().amax(dim=1)
    if p == 2.0:
        return x64.pow(2).sum(dim=1).sqrt()
    if p == 1.0:
        return x64.abs().sum(dim=1)
    return x64.abs().pow(p).sum(dim=1).pow(1.0 / p)


def _ints(t: Any) -> Any:
    import torch

    return t.contiguous().view(getattr(torch, _INTS[t.element_size()]))


def _floats(i: Any, dtype: Any) -> Any:
    return i.view(dtype)
