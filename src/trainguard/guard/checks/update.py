"""Update verification: every optimizer step must be the optimizer's own formula.

The 2024 insider changed the optimizers in the cluster's shared PyTorch. Whatever the
means (edited source, a rebuilt ``.so``, a monkeypatch), the effect is a step whose numbers
are not SGD's or Adam's. So the check recomputes the step independently and compares.

Recomputing every element would double the optimizer's cost; instead each step samples a
few parameters (``tensors_per_step``, a keyed rotation: every parameter is visited once per
cycle of ``ceil(n / tensors_per_step)`` steps) and, in each, ``elements_per_tensor`` flat
positions drawn from a generator seeded by the run's secret key and the step. Code that
cannot read the key cannot know which elements are watched: an attack that touches a
fraction ``f`` of every parameter's elements escapes one step with probability about
``(1 - f) ** (tensors_per_step * elements_per_tensor)`` (``f = 1%``: 3e-5 with the
defaults), and one that touches every element (a scaled ``lr``, a dropped weight decay)
is caught at its first step.

``before_step`` (the optimizer's pre-step hook) reads, at the sampled positions, the old
parameter, its gradient, the optimizer state (``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ``step``) and the param group's hyper-parameters;
``after_step`` reads the new values and compares them with
``trainguard.guard.checks.optim_math``, plain float64 Python that shares no code with
torch (its docstring derives the error bound: ``16`` machine epsilons of the dtype times
the magnitude of the formula's terms, valid for the single-tensor, foreach and fused code
paths). Samples cross to the host in one transfer per device per hook. On CUDA devices
(or with ``deferred=True``) that transfer is asynchronous, into pinned memory, and the
comparison runs at a later hook once the copy has landed: the training stream never waits
for the check, and a mismatch is reported (with the step it happened at) one step later
at most.

Also verified: a parameter without a gradient is left bit-identical, and Adam's ``step``
count advances by one. Under ``GradScaler`` the hooks either see unscaled gradients (the
scaler unscales before calling ``step``, and does not call it on overflow) or, for fused
optimizers, ``optimizer.grad_scale``/``found_inf``: gradients are divided by the scale and
an overflow step must change nothing. A step with a closure recomputes the gradients
inside ``step``, so their samples are read after the step.

What cannot be modelled is recorded as an ``update.unverified`` event, never passed
silently: optimizer classes other than exactly ``torch.optim.SGD``/``Adam``/``AdamW``
(subclasses and wrappers may change the step), ``capturable``/``differentiable`` groups,
complex parameters, sparse gradients, non-finite or overflowing values, and fused SGD on
CPU with float16/bfloat16 parameters (PyTorch's own kernel skips part of that update,
pytorch/pytorch#191763: an honest job would be flagged for PyTorch's bug).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from trainguard.findings import Rule, Severity
from trainguard.guard.checks import optim_math as om
from trainguard.guard.checks.base import Check, GuardContext

__all__ = ["UpdateCheck"]

UNVERIFIED = "update.unverified"
_ADAM_STATE = ("exp_avg", "exp_avg_sq")


@dataclass(slots=True)
class _Sample:
    """One sampled parameter of the step being checked."""

    name: str
    param: Any
    index: Any  # flat positions on the parameter's device; None: every element
    positions: Any  # the same positions on the CPU (for evidence); None: every element
    hyper: om.SgdHyper | om.AdamHyper | None  # None: no gradient, must not change
    prec: om.Precision
    before: dict[str, int] = field(default_factory=dict)
    after: dict[str, int] = field(default_factory=dict)
    old_step: float | None = None
    new_step: float | None = None


@dataclass(slots=True)
class _Pending:
    """What ``before_step`` saw, kept for ``after_step``."""

    step: int
    optimizer: str
    samples: list[_Sample]
    closure: bool
    grad_scale: int | None  # slot of optimizer.grad_scale in the "before" fetch
    found_inf: int | None
    old: list[list[float]] = field(default_factory=list)
    old_fetch: _Fetch | None = None


class _Fetch:
    """Samples on their way to the host: on a CUDA device an asynchronous copy into
    pinned memory with an event to ask, so the training stream never waits for it."""

    def __init__(self, sizes: list[int], plan: list[tuple[list[int], Any, Any]]) -> None:
        self.sizes = sizes
        self.plan = plan  # (slots in order, host tensor, event or None) per device

    def ready(self) -> bool:
        return all(event is None or event.query() for _, _, event in self.plan)

    def values(self) -> list[list[float]]:
        out: list[list[float]] = [[] for _ in self.sizes]
        for order, host, event in self.plan:
            if event is not None:
                event.synchronize()
            values = host.tolist()
            at = 0
            for i in order:
                out[i] = values[at : at + self.sizes[i]]
                at += self.sizes[i]
        return out


class _Batch:
    """Small gathered samples, brought to the host with one transfer per device."""

    def __init__(self) -> None:
        self.parts: list[Any] = []

    def add(self, tensor: Any) -> int:
        self.parts.append(tensor.reshape(-1))
        return len(self.parts) - 1

    def start(self, *, deferred: bool = False) -> _Fetch:
        """Start the transfer; with ``deferred`` CUDA copies are not waited for here."""
        import torch

        by_device: dict[Any, dict[Any, list[int]]] = {}
        for i, part in enumerate(self.parts):
            by_device.setdefault(part.device, {}).setdefault(part.dtype, []).append(i)
        plan: list[tuple[list[int], Any, Any]] = []
        for device, by_dtype in by_device.items():
            wide = torch.float32 if device.type == "mps" else torch.float64
            order = [i for ids in by_dtype.values() for i in ids]
            chunks = [torch.cat([self.parts[i] for i in ids]).to(wide) for ids in by_dtype.values()]
            flat = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
            if deferred and device.type == "cuda":
                host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
                host.copy_(flat, non_blocking=True)
                event = torch.cuda.Event()  # type: ignore[no-untyped-call]
                event.record()
                plan.append((order, host, event))
            else:
                plan.append((order, flat, None))
        return _Fetch([int(p.numel()) for p in self.parts], plan)

    def fetch(self) -> list[list[float]]:
        return self.start().values()


def _take(tensor: Any, index: Any) -> Any:
    """The flat elements ``index`` of ``tensor`` (all when None), without a full copy."""
    t = tensor.detach()
    if index is None:
        return t.reshape(-1)
    if t.is_contiguous():
        return t.view(-1).index_select(0, index)
    import torch

    return t[torch.unravel_index(index, t.shape)]


def _seed(key: bytes, label: bytes, n: int) -> int:
    secret = key if len(key) <= 64 else hashlib.sha512(key).digest()
    digest = hashlib.blake2b(
        label + n.to_bytes(8, "little", signed=False),
        key=secret,
        digest_size=8,
        person=b"trainguard.upd",
    ).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def _clean(x: float) -> float | str:
    """A float for JSON evidence (non-finite values as text)."""
    return x if math.isfinite(x) else repr(x)


class UpdateCheck(Check):
    """Recompute sampled elements of each SGD/Adam/AdamW step and compare (module doc)."""

    name: ClassVar[str] = "update"

    def __init__(
        self,
        *,
        tensors_per_step: int = 8,
        elements_per_tensor: int = 128,
        ulps: float = om.ULPS,
        deferred: bool | None = None,
    ) -> None:
        if tensors_per_step < 1 or elements_per_tensor < 1:
            raise ValueError("tensors_per_step and elements_per_tensor must be at least 1")
        if not ulps > 0:
            raise ValueError("ulps must be positive")
        self.tensors_per_step = tensors_per_step
        self.elements_per_tensor = elements_per_tensor
        self.ulps = ulps
        self.deferred = deferred  # None: on CUDA devices (module doc)
        self._queue: list[tuple[_Pending, _Fetch]] = []
        self._pending: _Pending | None = None
        self._order: list[int] = []
        self._cursor = 0
        self._cycle = 0
        self._said: set[str] = set()
        self._classes: dict[type, str] = {}
        self._finfo: dict[tuple[Any, ...], om.Precision] = {}
        self.verified_steps = 0
        self.checked_elements = 0

    # -- hooks -------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        import torch.optim

        self._classes = {
            torch.optim.SGD: "sgd",
            torch.optim.Adam: "adam",
            torch.optim.AdamW: "adamw",
        }
        if type(ctx.optimizer) not in self._classes:
            self._unverified(ctx, "optimizer class not modelled")
        if self.deferred is None:
            self.deferred = any(getattr(p, "is_cuda", False) for _, p in ctx.named_parameters)

    def before_step(self, ctx: GuardContext) -> None:
        self._drain(ctx)
        self._pending = None
        closure = _has_closure(ctx.optimizer, getattr(ctx, "step_call", None))
        opt = ctx.optimizer
        kind = self._classes.get(type(opt))
        if kind is None:
            self._unverified(ctx, "optimizer class not modelled")
            return
        named = ctx.named_parameters
        picked = self._choose(ctx, named, closure)
        if not picked:
            return
        groups = {id(p): g for g in opt.param_groups for p in g["params"]}
        batch = _Batch()
        samples = [
            s
            for i in picked
            if (s := self._plan(ctx, kind, opt, groups, named[i], closure)) is not None
        ]
        self._draw(ctx, samples)
        for s in samples:
            self._gather_before(opt, s, closure, batch)
        scale = getattr(opt, "grad_scale", None)
        inf = getattr(opt, "found_inf", None)
        pending = _Pending(
            step=ctx.current_step,
            optimizer=type(opt).__name__,
            samples=samples,
            closure=closure,
            grad_scale=batch.add(_as_tensor(scale, samples)) if scale is not None else None,
            found_inf=batch.add(_as_tensor(inf, samples)) if inf is not None else None,
        )
        pending.old_fetch = batch.start(deferred=bool(self.deferred))
        self._pending = pending

    def after_step(self, ctx: GuardContext) -> None:
        pending, self._pending = self._pending, None
        if pending is None or pending.step != ctx.current_step or not pending.samples:
            return
        opt = ctx.optimizer
        batch = _Batch()
        for s in pending.samples:
            self._gather_after(ctx, opt, pending, s, batch)
        self._queue.append((pending, batch.start(deferred=bool(self.deferred))))
        self._drain(ctx, wait=not self.deferred)

    def _drain(self, ctx: GuardContext, *, wait: bool = False) -> None:
        """Judge the steps whose samples have reached the host (all of them with
        ``wait``). Deferred judgments report the step they belong to."""
        while self._queue:
            pending, fetch = self._queue[0]
            old_fetch = pending.old_fetch
            assert old_fetch is not None
            if not wait and not (old_fetch.ready() and fetch.ready()):
                return
            self._queue.pop(0)
            pending.old = old_fetch.values()
            self._judge_step(ctx, pending, fetch.values())

    def _judge_step(self, ctx: GuardContext, pending: _Pending, new: list[list[float]]) -> None:
        old = pending.old
        scale = old[pending.grad_scale][0] if pending.grad_scale is not None else 1.0
        skipped = pending.found_inf is not None and old[pending.found_inf][0] != 0.0
        unjudged = 0
        for s in pending.samples:
            verdict, n = self._judge(s, old, new, scale, skipped)
            unjudged += n
            self.checked_elements += len(old[s.before["param"]])
            if verdict is not None:
                self._report(ctx, pending, s, verdict)
        self.verified_steps += 1
        if unjudged:
            self._unverified(ctx, "non-finite or overflowing values", elements=unjudged)

    def close(self, ctx: GuardContext) -> None:
        self._drain(ctx, wait=True)
        ctx.event(
            "update.summary",
            {
                "check": self.name,
                "verified_steps": self.verified_steps,
                "checked_elements": self.checked_elements,
                "tensors_per_step": self.tensors_per_step,
                "elements_per_tensor": self.elements_per_tensor,
                "ulps": self.ulps,
            },
        )

    def params_changed(self, ctx: GuardContext) -> None:
        """``add_param_group``: start a fresh keyed rotation over the new parameter list
        (samples already taken hold their tensors, not positions in the list)."""
        self._order = []

    # -- choosing what to watch --------------------------------------------------------

    def _choose(self, ctx: GuardContext, named: Any, closure: bool) -> list[int]:
        """The next ``tensors_per_step`` parameters with a gradient in the keyed rotation,
        plus (at most as many) parameters without one met on the way."""
        import torch

        n = len(named)
        with_grad: list[int] = []
        without: list[int] = []
        visited = 0
        while visited < n and len(with_grad) < self.tensors_per_step:
            if self._cursor >= len(self._order) or len(self._order) != n:
                gen = torch.Generator().manual_seed(_seed(ctx.key, b"order", self._cycle))
                self._order = torch.randperm(n, generator=gen).tolist()
                self._cursor = 0
                self._cycle += 1
            i = self._order[self._cursor]
            self._cursor += 1
            visited += 1
            if closure or named[i][1].grad is not None:
                with_grad.append(i)
            elif len(without) < self.tensors_per_step:
                without.append(i)
        return with_grad + without

    def _plan(
        self,
        ctx: GuardContext,
        kind: str,
        opt: Any,
        groups: dict[int, Any],
        named: tuple[str, Any],
        closure: bool,
    ) -> _Sample | None:
        name, p = named
        group = groups.get(id(p))
        if group is None or not p.is_floating_point():
            if group is not None and p.is_complex():
                self._unverified(ctx, "complex parameter", param=name)
            return None
        grad = p.grad
        hyper: om.SgdHyper | om.AdamHyper | None = None
        dtypes = [p.dtype]
        if grad is not None or closure:
            if group.get("capturable") or group.get("differentiable"):
                self._unverified(ctx, "capturable or differentiable param group", param=name)
                return None
            if grad is not None:
                if grad.is_sparse or grad.shape != p.shape or not grad.is_floating_point():
                    self._unverified(ctx, "sparse or mismatched gradient", param=name)
                    return None
                dtypes.append(grad.dtype)
            if kind == "sgd" and group.get("fused") and _lowp_cpu(p):
                self._unverified(ctx, "fused SGD with float16/bfloat16 on CPU", param=name)
                return None
            hyper = _hyper(kind, group)
            bad = _bad_state(hyper, opt.state.get(p) or {}, p)
            if bad:
                self._unverified(
                    ctx, "optimizer state not as the optimizer writes it", param=name, state=bad
                )
                return None
            dtypes.extend(_state_dtypes(hyper, opt.state.get(p) or {}))
        return _Sample(name, p, None, None, hyper, self._precision(dtypes, p.device.type))

    def _draw(self, ctx: GuardContext, samples: list[_Sample]) -> None:
        """Keyed element positions for every sample larger than ``elements_per_tensor``:
        one draw on the CPU, one copy per device."""
        import torch

        k = self.elements_per_tensor
        big = [s for s in samples if s.param.numel() > k]
        if not big:
            return
        gen = torch.Generator().manual_seed(_seed(ctx.key, b"index", ctx.current_step))
        sizes = torch.tensor([float(s.param.numel()) for s in big], dtype=torch.float64)
        u = torch.rand((len(big), k), generator=gen, dtype=torch.float64)
        idx = torch.minimum((u * sizes[:, None]).long(), (sizes[:, None] - 1).long())
        moved: dict[Any, Any] = {}
        for row, s in enumerate(big):
            device = s.param.device
            if device not in moved:
                moved[device] = idx if device.type == "cpu" else idx.to(device, non_blocking=True)
            s.positions = idx[row]
            s.index = moved[device][row]

    def _gather_before(self, opt: Any, s: _Sample, closure: bool, batch: _Batch) -> None:
        s.before["param"] = batch.add(_take(s.param, s.index))
        if s.hyper is None:
            return
        if not closure:
            s.before["grad"] = batch.add(_take(s.param.grad, s.index))
        state = opt.state.get(s.param) or {}
        if isinstance(s.hyper, om.SgdHyper):
            buf = state.get("momentum_buffer")
            if s.hyper.momentum and buf is not None:
                s.before["momentum_buffer"] = batch.add(_take(buf, s.index))
            return
        if not state:
            s.old_step = 0.0
            return
        s.old_step = self._step_value(state.get("step"), s.before, "old_step", batch)
        for key in _adam_keys(s.hyper):
            s.before[key] = batch.add(_take(state[key], s.index))

    @staticmethod
    def _step_value(step: Any, slots: dict[str, int], slot: str, batch: _Batch) -> float | None:
        """Adam's step count: a tensor joins the batch, a plain number is read now."""
        if step is None:
            return None
        if hasattr(step, "reshape"):
            slots[slot] = batch.add(step.detach())
            return None
        return float(step)

    def _gather_after(
        self, ctx: GuardContext, opt: Any, pending: _Pending, s: _Sample, batch: _Batch
    ) -> None:
        s.after["param"] = batch.add(_take(s.param, s.index))
        if s.hyper is None:
            return
        if pending.closure:
            grad = s.param.grad
            if grad is None or grad.shape != s.param.shape or grad.is_sparse:
                s.hyper = None  # the closure left no gradient: the optimizer skips it
                return
            s.after["grad"] = batch.add(_take(grad, s.index))
        state = opt.state.get(s.param) or {}
        keys = _sgd_keys(s.hyper) if isinstance(s.hyper, om.SgdHyper) else _adam_keys(s.hyper)
        if isinstance(s.hyper, om.AdamHyper):
            s.new_step = self._step_value(state.get("step"), s.after, "new_step", batch)
        for key in keys:
            tensor = state.get(key)
            if tensor is not None and tensor.shape == s.param.shape:
                s.after[key] = batch.add(_take(tensor, s.index))

    # -- judging -----------------------------------------------------------------------

    def _judge(
        self,
        s: _Sample,
        old: list[list[float]],
        new: list[list[float]],
        scale: float,
        skipped: bool,
    ) -> tuple[om.Mismatch | None, int]:
        def before(key: str) -> list[float] | None:
            slot = s.before.get(key)
            return old[slot] if slot is not None else None

        def after(key: str) -> list[float] | None:
            slot = s.after.get(key)
            return new[slot] if slot is not None else None

        p_old, p_new = old[s.before["param"]], new[s.after["param"]]
        if s.hyper is None or skipped:
            checks = [(om.expect_unchanged("param", p_old), p_new)]
            if skipped and isinstance(s.hyper, om.AdamHyper):
                checks.insert(0, self._step_check(s, old, new, advance=0.0))
            return self._run(s, checks)
        grad = before("grad") if "grad" in s.before else after("grad")
        if grad is None:
            return None, 0
        if isinstance(s.hyper, om.SgdHyper):
            new_buf = after("momentum_buffer")
            if s.hyper.momentum and new_buf is None:
                return _missing("momentum_buffer"), 0
            expected = om.expect_sgd(
                s.hyper,
                s.prec,
                param=p_old,
                grad=grad,
                buf=before("momentum_buffer"),
                new_buf=new_buf,
                grad_scale=scale,
            )
            return self._run(s, [(e, new[s.after[e.quantity]]) for e in expected])
        for key in _adam_keys(s.hyper):
            if key not in s.after:
                return _missing(key), 0
        step_check = self._step_check(s, old, new, advance=1.0)
        verdict, unjudged = self._run(s, [step_check])
        if verdict is not None:
            return verdict, unjudged
        zeros = [0.0] * len(p_old)
        expected = om.expect_adam(
            s.hyper,
            s.prec,
            step_check[1][0],
            param=p_old,
            grad=grad,
            exp_avg=before("exp_avg") or zeros,
            exp_avg_sq=before("exp_avg_sq") or zeros,
            max_exp_avg_sq=(before("max_exp_avg_sq") or zeros) if s.hyper.amsgrad else None,
            new_exp_avg=new[s.after["exp_avg"]],
            new_exp_avg_sq=new[s.after["exp_avg_sq"]],
            new_max_exp_avg_sq=after("max_exp_avg_sq"),
            grad_scale=scale,
        )
        return self._run(s, [(e, new[s.after[e.quantity]]) for e in expected])

    def _step_check(
        self, s: _Sample, old: list[list[float]], new: list[list[float]], *, advance: float
    ) -> tuple[om.Expected, list[float]]:
        before = s.old_step if "old_step" not in s.before else old[s.before["old_step"]][0]
        after = s.new_step if "new_step" not in s.after else new[s.after["new_step"]][0]
        start = 0.0 if before is None else before
        actual = math.nan if after is None else after
        want = start + advance
        # a float32 count stops at 2**24; allow its rounding, nothing more
        tolerance = (
            self.ulps * 2.0**-23 * (abs(want) + abs(actual)) if math.isfinite(actual) else 0.0
        )
        return om.Expected("step", [want], [tolerance]), [actual]

    def _run(
        self, s: _Sample, checks: list[tuple[om.Expected, list[float]]]
    ) -> tuple[om.Mismatch | None, int]:
        unjudged = 0
        for expected, actual in checks:
            verdict, n = om.compare(expected, actual)
            unjudged += n
            if verdict is not None:
                return verdict, unjudged
        return None, unjudged

    # -- reporting ---------------------------------------------------------------------

    def _report(self, ctx: GuardContext, pending: _Pending, s: _Sample, m: om.Mismatch) -> None:
        if m.position < 0:
            index: int | None = None
        elif s.positions is None or m.quantity == "step":
            index = 0 if m.quantity == "step" else m.position
        else:
            index = int(s.positions[m.position])
        sampled = len(pending.old[s.before["param"]])
        if m.position < 0:
            message = (
                f"{pending.optimizer} step left no {m.quantity} state for {s.name}; "
                "the real optimizer always writes it"
            )
        elif s.hyper is None:
            message = (
                f"{s.name} has no gradient, yet {pending.optimizer}.step() changed it "
                f"(element {index}: {m.expected!r} -> {m.actual!r})"
            )
        else:
            message = (
                f"{pending.optimizer} step does not match its formula: {m.quantity} of "
                f"{s.name} at element {index} is {m.actual!r}, expected {m.expected!r} "
                f"(tolerance {m.tolerance:.3g}); {m.count} of {sampled} sampled elements differ"
            )
        ctx.emit(
            Rule.UPDATE_MISMATCH,
            Severity.CRITICAL,
            message,
            where=f"param:{s.name}",
            step=pending.step,
            evidence={
                "optimizer": pending.optimizer,
                "quantity": m.quantity,
                "index": index,
                "expected": _clean(m.expected),
                "actual": _clean(m.actual),
                "tolerance": _clean(m.tolerance),
                "mismatched": m.count,
                "sampled": sampled,
                "hyper": _hyper_evidence(s.hyper),
            },
        )

    def _unverified(self, ctx: GuardContext, reason: str, **evidence: Any) -> None:
        """Say once per reason that something is not verified (evidence, not an alert)."""
        if reason in self._said:
            return
        self._said.add(reason)
        ctx.event(
            UNVERIFIED,
            {
                "check": self.name,
                "reason": reason,
                "optimizer": type(ctx.optimizer).__qualname__,
                **evidence,
            },
        )

    def _precision(self, dtypes: list[Any], device: str) -> om.Precision:
        """The coarsest of the dtypes involved (a bfloat16 state bounds a float32 param);
        off the CPU, kernels may derive their scalars in float32 (optim_math docstring)."""
        key = (*dtypes, device)
        prec = self._finfo.get(key)
        if prec is None:
            import torch

            infos = [torch.finfo(d) for d in dtypes]
            prec = om.Precision.of(
                max(float(f.eps) for f in infos),
                max(float(f.tiny) for f in infos),
                min(float(f.max) for f in infos),
                ulps=self.ulps,
                float32_scalars=device != "cpu",
            )
            self._finfo[key] = prec
        return prec


def _lowp_cpu(p: Any) -> bool:
    """PyTorch's fused CPU SGD kernel skips the vectorised part of float16/bfloat16
    updates (pytorch/pytorch#191763, seen in 2.12-2.13): the real step is not SGD, and an
    honest job would be flagged for PyTorch's bug, so these are left unverified."""
    import torch

    return bool(p.device.type == "cpu" and p.dtype in (torch.float16, torch.bfloat16))


def _adam_keys(h: om.SgdHyper | om.AdamHyper | None) -> list[str]:
    if not isinstance(h, om.AdamHyper):
        return []
    return [*_ADAM_STATE, "max_exp_avg_sq"] if h.amsgrad else list(_ADAM_STATE)


def _sgd_keys(h: om.SgdHyper | om.AdamHyper | None) -> list[str]:
    return ["momentum_buffer"] if isinstance(h, om.SgdHyper) and h.momentum else []


def _bad_state(h: om.SgdHyper | om.AdamHyper, state: Any, p: Any) -> str | None:
    """The first state entry the step would read that is missing or misshapen."""
    if isinstance(h, om.SgdHyper):
        buf = state.get("momentum_buffer") if h.momentum else None
        return "momentum_buffer" if buf is not None and buf.shape != p.shape else None
    if not state:
        return None
    if "step" not in state:
        return "step"
    for key in _adam_keys(h):
        tensor = state.get(key)
        if tensor is None or tensor.shape != p.shape:
            return key
    return None


def _state_dtypes(h: om.SgdHyper | om.AdamHyper, state: Any) -> list[Any]:
    keys = _sgd_keys(h) if isinstance(h, om.SgdHyper) else _adam_keys(h)
    return [state[k].dtype for k in keys if state.get(k) is not None]


def _missing(quantity: str) -> om.Mismatch:
    return om.Mismatch(quantity, -1, math.nan, math.nan, 0.0, 1)


def _as_tensor(value: Any, samples: list[_Sample]) -> Any:
    import torch

    if hasattr(value, "reshape"):
        return value.detach()
    device = samples[0].param.device if samples else "cpu"
    return torch.tensor([float(value)], dtype=torch.float64, device=device)


def _hyper(kind: str, group: Any) -> om.SgdHyper | om.AdamHyper:
    """The group's hyper-parameters as floats, read before the step runs."""
    if kind == "sgd":
        return om.SgdHyper(
            lr=float(group["lr"]),
            momentum=float(group.get("momentum", 0.0)),
            dampening=float(group.get("dampening", 0.0)),
            weight_decay=float(group.get("weight_decay", 0.0)),
            nesterov=bool(group.get("nesterov", False)),
            maximize=bool(group.get("maximize", False)),
        )
    beta1, beta2 = group["betas"]
    return om.AdamHyper(
        lr=float(group["lr"]),
        beta1=float(beta1),
        beta2=float(beta2),
        eps=float(group["eps"]),
        weight_decay=float(group.get("weight_decay", 0.0)),
        amsgrad=bool(group.get("amsgrad", False)),
        maximize=bool(group.get("maximize", False)),
        # AdamW is decoupled by definition (torch forces the flag on load); a group
        # flag saying otherwise on an AdamW is itself a change of the algorithm.
        decoupled=kind == "adamw" or bool(group.get("decoupled_weight_decay", False)),
    )


def _hyper_evidence(h: om.SgdHyper | om.AdamHyper | None) -> dict[str, Any] | None:
    if h is None:
        return None
    return {k: getattr(h, k) for k in h.__dataclass_fields__}


def _has_closure(optimizer: Any, call: tuple[Any, Any] | None) -> bool:
    """Whether ``optimizer.step()`` was called with a closure (the gradients are then
    computed inside the step, after the pre-step hook)."""
    if call is None:
        return False
    args, kwargs = call
    rest = args[1:] if args and args[0] is optimizer else args  # torch passes self first
    return (rest[0] if rest else (kwargs or {}).get("closure")) is not None
