"""``runtime.gradient_divergence``: the gradient the optimizer uses is the gradient the
backward pass computed, reduced the way data parallelism reduces it.

The update check verifies ``p -= f(p.grad, state)``, taking ``p.grad`` as given; this check
closes that gap. A tensor hook on every trained parameter, kept FIRST among the parameter's
tensor hooks (the C++ side runs them in the dict's insertion order, so the dict is refilled
with it first, at attach and before every step), sees each backward's local gradient
before any other hook can change it and before it is accumulated into ``.grad`` (DDP's
reducer and post-accumulate hooks run after). It keeps a keyed sample: coordinates drawn
afresh each step from ``HMAC(key, step)`` (``gradients_math``; about ``samples`` elements
over all parameters, at least 8 per parameter), and the sampled ``.grad`` as it was just
before that accumulation. ``autograd.grad()`` and ``backward(inputs=...)`` that leave a
parameter out accumulate nothing and are not counted. At the optimizer's pre-step hook
(for ``optimizer.step(closure)``, as Lightning steps, at the post-step hook instead):

* the backward passes since the last step are chained: the ``.grad`` a backward found must
  be what the previous one left (``pre + local``), ``None`` or zero (``zero_grad``), or,
  for the first, what was sampled after the last step (gradients kept across steps); a
  parameter no backward reached must keep its ``.grad`` too;
* the ranks' post-accumulation samples are summed in ONE all-reduce, together with their
  absolute values (the rounding allowance), which parameters fired, and the previous
  step's per-rank statistics (``gradients_ranks``: no second collective). The final
  ``.grad`` must be their mean up to one factor in ``(0, 1]`` and one clamp
  (``gradients_math.judge``): ``clip_grad_norm_``, ``GradScaler.unscale_`` and
  ``clip_grad_value_`` (a ``gradients.value_clipped`` event) are honest;
* with two ranks or more a rank whose local gradients stand out for eight steps is named
  (``gradients_ranks``; with two ranks only by its norm).

What it trusts: that its hook runs first and receives the autograd engine's gradient (a
removed hook is an alert and is put back; who registered what is the code check's), the
run key, and DDP's default contract: the reduced gradient is the mean of the ranks'
accumulated ``.grad``. torch's own ``fp16_compress_hook``/``bf16_compress_hook`` (the very
function objects, on the DDP wrapper the guard was given or, found once by a heap scan,
the one around the module it was given) widen the tolerance to their precision, which an
attacker who also registers one could spend (about 1e-2 of each element); any other comm
hook, PowerSGD included, is judged as a plain average and alerts. FSDP/ZeRO (sharded
``.grad``) are not modelled. Not modelled either, so they alert: per-group or per-layer
clipping (several factors), a gradient scaled up or by zero, gradient edits outside
``guard.authorized()``. Skipped: sparse gradients, steps with non-finite gradients
(``gradients.unverified`` event), and on multi-rank jobs a reduced ``.grad`` accumulated
onto by a further synced backward (no ``no_sync``; a ``gradients.unjudged`` event).

Cost per step: one ``torch.take`` of the sample per parameter per backward (two when
``.grad`` already exists), one per parameter to read ``.grad`` at the step and one after
it, about 30 vector operations on the few thousand sampled elements, one small all-reduce
(world size > 1). On CUDA the sample is copied to the host at the step (one stream sync per
step) and the chain's checks sync once per parameter when ``.grad`` is kept or zeroed in
place; deferring those verdicts is not done yet.
"""

from __future__ import annotations

from typing import Any

import torch

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._codehash import register_own_wrapper, unregister_own_wrapper
from trainguard.guard.checks.base import Check, GuardContext
from trainguard.guard.checks.gradients_math import Plan, draw, judge, plan
from trainguard.guard.checks.gradients_ranks import RankWatch, all_reduce, ddp_of, precision

__all__ = ["GradientCheck"]

_will_execute = torch._C._will_engine_execute_node
_UNKNOWN = object()  # no step sampled the .grad yet (the first step, after a rebaseline)


class GradientCheck(Check):
    name = "gradients"

    def __init__(self, *, samples: int = 4096) -> None:
        self.samples = samples
        self._params: list[tuple[str, Any]] = []
        self._acc: list[Any] = []
        self._taps: list[Any] = []
        self._handles: list[Any] = []
        self._index: list[Any] = []
        self._record: list[Any] = []
        self._calls: list[list[tuple[Any, Any]]] = []
        self._sparse: set[int] = set()
        self._ranks = RankWatch()
        self._clip_seen = False
        self._unjudged_seen = False
        self._key = b""
        self._zeros: list[Any] = []
        self._owner: Any = None
        self._plan: Plan | None = None
        self._wrapper: Any = None

    # -- hooks ---------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        self._key = ctx.key
        self._params = [(n, p) for n, p in ctx.named_parameters if p.requires_grad]
        for i, (_, p) in enumerate(self._params):
            with torch.enable_grad():  # the guard may be built under no_grad
                self._acc.append(p.view_as(p).grad_fn.next_functions[0][0])

            def tap(grad: Any, i: int = i) -> None:
                self._tap(i, grad)

            register_own_wrapper(self, tap)
            self._taps.append(tap)
            self._handles.append(p.register_hook(tap))
            self._first(i)
        self._calls = [[] for _ in self._params]
        self._record = [_UNKNOWN] * len(self._params)
        self._redraw(ctx.last_step + 1)

    def _first(self, i: int) -> None:
        """Make this parameter's tap the first of its tensor hooks. The C++ side walks the
        dict in its insertion order (``move_to_end`` would not change that), so the same
        dict object is refilled with the tap first."""
        hooks = self._params[i][1]._backward_hooks
        key = self._handles[i].id
        if hooks is None or next(iter(hooks), None) == key:
            return
        items = list(hooks.items())
        hooks.clear()
        hooks[key] = self._taps[i]
        for k, v in items:
            if k != key:
                hooks[k] = v

    def _tap(self, i: int, grad: Any) -> None:
        try:
            if not _will_execute(self._acc[i]):
                return  # backward(inputs=...) without this parameter: nothing accumulates
        except RuntimeError:
            return  # torch.autograd.grad(): the gradient is returned, not accumulated
        if grad.layout != torch.strided:
            self._sparse.add(i)
            return
        idx = self._index[i]
        p = self._params[i][1]
        held = p.grad
        pre = None if held is None or held.layout != torch.strided else _take(held, idx)
        self._calls[i].append((pre, _take(grad, idx)))

    def _redraw(self, step: int) -> None:
        if self._plan is None:
            self._plan = plan([int(p.numel()) for _, p in self._params], self.samples)
        drawn = draw(self._key, step, self._plan) if self._params else []
        self._index = [d.to(p.device) for d, (_, p) in zip(drawn, self._params, strict=True)]
        if len(self._zeros) != len(self._index):
            self._zeros = [
                torch.zeros(d.numel(), dtype=p.dtype, device=p.device)
                for d, (_, p) in zip(drawn, self._params, strict=True)
            ]
            counts = torch.tensor([d.numel() for d in drawn], dtype=torch.int64)
            self._owner = torch.repeat_interleave(torch.arange(len(drawn)), counts)

    def after_step(self, ctx: GuardContext) -> None:
        if any(self._calls):
            # optimizer.step(closure) (Lightning): the backward ran inside the step, after
            # the pre-hook; the gradient it left is the one the update just used
            self._judge_window(ctx)
        self._redraw(ctx.last_step + 1)
        self._record = [
            None if p.grad is None or p.grad.layout != torch.strided else _take(p.grad, idx)
            for (_, p), idx in zip(self._params, self._index, strict=True)
        ]
        self._calls = [[] for _ in self._params]

    def rebaseline(self, ctx: GuardContext) -> None:
        self._record = [_UNKNOWN] * len(self._params)
        self._calls = [[] for _ in self._params]

    def params_changed(self, ctx: GuardContext) -> None:
        self.close(ctx)
        self._acc, self._taps, self._handles, self._zeros = [], [], [], []
        self._plan = None
        self.attach(ctx)

    def close(self, ctx: GuardContext) -> None:
        for handle in self._handles:
            handle.remove()
        for tap in self._taps:
            unregister_own_wrapper(tap)
        self._handles = []

    # -- the judgment --------------------------------------------------------------------

    def before_step(self, ctx: GuardContext) -> None:
        self._verify_hooks(ctx)
        self._judge_window(ctx)

    def _judge_window(self, ctx: GuardContext) -> None:
        """Judge the backward passes since the last step against ``.grad`` now."""
        calls, self._calls = self._calls, [[] for _ in self._params]
        if ctx.is_authorized or not self._params:
            self._record = [_UNKNOWN] * len(self._params)
            return
        ws = max(1, ctx.world_size)
        parts = [self._chain(ctx, i, c, ws) for i, c in enumerate(calls)]
        pre, loc, base = (_cat([part[j] for part in parts]) for j in range(3))
        now = [
            None if p.grad is None or p.grad.layout != torch.strided else _take(p.grad, ix)
            for (_, p), ix in zip(self._params, self._index, strict=True)
        ]
        # a backward before the next step continues from these
        previous, self._record = self._record, list(now)
        final = _cat([self._zeros[i] if t is None else t for i, t in enumerate(now)])
        # one copy to the host: the accumulated value in the gradients' own arithmetic
        host = torch.stack([pre + loc, pre, loc, base, final]).to("cpu", torch.float64)
        xs, final = host[0], host[4]
        slack, local = host[1].abs() + host[2].abs(), xs - host[3]
        fired = torch.tensor([1.0 if c else 0.0 for c in calls], dtype=torch.float64)
        packed = torch.cat([xs, slack, fired, self._ranks.slots(ctx.rank, ws)])
        if ws > 1:
            packed = all_reduce(packed)
        k, n = xs.numel(), len(calls)
        mean = packed[:k] / ws
        allowance = packed[k : 2 * k] / ws
        fired_any = packed[2 * k : 2 * k + n] > 0
        self._ranks.observe(ctx, packed[2 * k + n :].view(ws, 3), local, mean - (xs - local))
        owner = self._owner
        judged = fired_any[owner]
        for i in self._sparse:
            judged[owner == i] = False
        idle = [i for i in range(n) if not bool(fired_any[i])]
        self._idle(ctx, idle, final, owner, previous)
        self._sparse.clear()
        if not bool(torch.isfinite(final).all()) or not bool(torch.isfinite(mean).all()):
            ctx.event("gradients.unverified", {"reason": "non-finite gradients"})
            return
        self._judge(ctx, final[judged], mean[judged], allowance[judged], owner[judged], ws)

    def _chain(
        self, ctx: GuardContext, i: int, calls: list[tuple[Any, Any]], ws: int
    ) -> tuple[Any, Any, Any]:
        """Judge the chain of this parameter's backward passes since the last step, and
        return what the last one found in ``.grad``, what it added, and where the current
        accumulation started (zeros for ``None``), in the gradients' dtype."""
        zero = self._zeros[i]
        if not calls:
            return zero, zero, zero
        expected = self._record[i]
        base: Any = None
        for n, (pre, loc) in enumerate(calls):
            if pre is None or not bool(pre.any()):
                base = None  # zero_grad (to None or to zeros): a new accumulation
            elif expected is _UNKNOWN or (expected is not None and torch.equal(pre, expected)):
                if n == 0:
                    base = pre  # the gradient kept from before: the chain starts on it
            elif n > 0 and ws > 1:
                base = pre  # a synced backward accumulated onto: accepted unjudged
                if not self._unjudged_seen:
                    self._unjudged_seen = True
                    ctx.event("gradients.unjudged", {"parameter": self._params[i][0]})
            else:
                self._edited(ctx, i, pre, expected, n)
                base = pre
            expected = loc if pre is None else pre + loc
        last_pre, last_loc = calls[-1]
        return (
            zero if last_pre is None else last_pre,
            last_loc,
            zero if base is None else base,
        )

    def _edited(self, ctx: GuardContext, i: int, pre: Any, expected: Any, n: int) -> None:
        name = self._params[i][0]
        if expected is None:
            expected = torch.zeros_like(pre)  # there was no .grad after the last step
        diff = (pre.double() - expected.double()).abs()
        at = int(diff.argmax())
        ctx.emit(
            Rule.GRADIENT_DIVERGENCE,
            Severity.HIGH,
            f"the gradient of {name} was changed between "
            + ("the last optimizer step and the backward pass" if n == 0 else "two backward passes")
            + f" at step {ctx.current_step}",
            where="gradients:reduction",
            evidence={
                "parameter": name,
                "backward": n,
                "found": float(pre[at]),
                "expected": float(expected[at]),
                "elements_changed": int((diff > 0).sum()),
            },
            step=ctx.current_step,
        )

    def _idle(
        self, ctx: GuardContext, idle: list[int], final: Any, owner: Any, previous: list[Any]
    ) -> None:
        """A parameter no backward reached on any rank must keep the ``.grad`` it had (or
        none, or zeros)."""
        for i in idle:
            name, p = self._params[i]
            if p.grad is None or i in self._sparse:
                continue
            now = final[owner == i]
            was = previous[i]
            if not bool(now.any()) or was is _UNKNOWN:
                continue
            if was is not None and torch.equal(now, was.double().cpu()):
                continue
            ctx.emit(
                Rule.GRADIENT_DIVERGENCE,
                Severity.HIGH,
                f"the gradient of {name} was written without a backward pass reaching it "
                f"at step {ctx.current_step}",
                where="gradients:reduction",
                evidence={"parameter": name, "elements": int(now.numel())},
                step=ctx.current_step,
            )

    def _judge(
        self, ctx: GuardContext, final: Any, mean: Any, allowance: Any, owner: Any, ws: int
    ) -> None:
        eps, floor = precision(self._wrapper or ctx.model, self._params[0][1].dtype)
        verdict = judge(final, mean, 4 * eps * (ws + 2) * allowance + floor * ws)
        if not verdict.ok and ws > 1 and self._wrapper is None:
            # the guard may have been given the module inside DistributedDataParallel:
            # find the wrapper once (only now, it scans the heap) for its comm hooks
            self._wrapper = ddp_of(ctx.model)
            if self._wrapper:
                eps, floor = precision(self._wrapper, self._params[0][1].dtype)
                verdict = judge(final, mean, 4 * eps * (ws + 2) * allowance + floor * ws)
        if verdict.clip is not None and not self._clip_seen:
            self._clip_seen = True
            ctx.event("gradients.value_clipped", {"clip": verdict.clip, "scale": verdict.scale})
        if verdict.ok:
            return
        names = [n for n, _ in self._params]
        where = verdict.worst
        evidence: dict[str, Any] = {
            "scale": verdict.scale,
            "elements_judged": int(final.numel()),
            "elements_unexplained": verdict.bad,
            "world_size": ws,
        }
        if where >= 0:
            evidence |= {
                "parameter": names[int(owner[where])],
                "final": float(final[where]),
                "expected": float(verdict.scale * mean[where]),
                "excess": verdict.excess,
            }
        ctx.emit(
            Rule.GRADIENT_DIVERGENCE,
            Severity.HIGH,
            f"the gradient the optimizer was given is not the reduced backward gradient at "
            f"step {ctx.current_step}: {verdict.reason}"
            + (f" (first: {evidence['parameter']})" if "parameter" in evidence else ""),
            where="gradients:reduction",
            evidence=evidence,
            step=ctx.current_step,
        )

    def _verify_hooks(self, ctx: GuardContext) -> None:
        for i, (name, p) in enumerate(self._params):
            hooks = p._backward_hooks
            handle = self._handles[i]
            if hooks is not None and hooks.get(handle.id) is self._taps[i]:
                self._first(i)
                continue
            ctx.emit(
                Rule.GRADIENT_DIVERGENCE,
                Severity.HIGH,
                f"the guard's gradient hook on {name} was removed",
                where="gradients:hooks",
                evidence={"parameter": name},
            )
            self._handles[i] = p.register_hook(self._taps[i])
            self._first(i)


def _take(tensor: Any, index: Any) -> Any:
    """The flat elements ``index`` of ``tensor`` (any strides), one op and a copy."""
    return torch.take(tensor.detach() if tensor.requires_grad else tensor, index)


def _cat(parts: list[Any]) -> Any:
    """One flat tensor on the first part's device (parameters may live on several)."""
    device = parts[0].device
    return torch.cat([t if t.device == device else t.to(device) for t in parts])
