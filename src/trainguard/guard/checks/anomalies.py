"""Loss and gradient-norm anomalies (``training.anomaly``) and the metric series.

These are evidence, not proof: sabotage often hides behind a loss spike or a NaN, but so
does bad luck. So they are LOW (MEDIUM for NaN/Inf), never stop a job (the guard's
``stop_on`` ignores this rule), and the test is deliberately conservative: a value is an
outlier when it is above the rolling median by more than ``threshold`` robust standard
deviations (1.4826 x the median absolute deviation) *and* more than ``ratio`` times the
median, after ``warmup`` values. Only upward jumps count: falling losses and gradient
norms are what training does, and warm-up schedules, clipping and AMP skipped steps do
not raise a value above its own history by a factor.

The same series (loss, gradient norm, step time) are written to the ledger as
``guard.metrics`` events every ``every`` steps for the report's curves. The gradient norm
is the one *before* clipping, as ``clip_grad_norm_`` measured it (``clipwatch``), with the
clip threshold beside it (``clip``); where no clip was seen it is the norm of the
gradients the optimizer is about to apply.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.checks.clipwatch import ClipWatch

__all__ = ["AnomalyCheck", "Outliers"]


class Outliers:
    """A rolling robust outlier test for one series."""

    def __init__(
        self, *, window: int = 64, warmup: int = 20, threshold: float = 10.0, ratio: float = 2.0
    ) -> None:
        self.values: deque[float] = deque(maxlen=window)
        self.warmup = warmup
        self.threshold = threshold
        self.ratio = ratio

    def add(self, value: float) -> dict[str, float] | None:
        """Add ``value``; return the evidence when it is an outlier (it is then kept out of
        the history, so one spike does not widen the band for the next)."""
        verdict = None
        if len(self.values) >= self.warmup:
            med = statistics.median(self.values)
            mad = statistics.median(abs(v - med) for v in self.values)
            spread = max(1.4826 * mad, 1e-6 * abs(med), 1e-12)
            score = (value - med) / spread
            if score > self.threshold and value > self.ratio * med:
                verdict = {"value": value, "median": med, "mad": mad, "score": score}
        if verdict is None:
            self.values.append(value)
        return verdict


class AnomalyCheck(Check):
    name = "anomalies"

    def __init__(self, *, grad_norm: bool = True, **outlier_options: Any) -> None:
        self.grad_norm = grad_norm
        self._loss = Outliers(**outlier_options)
        self._grad = Outliers(**outlier_options)
        self._pending_norm: Any = None
        self._clip: float | None = None
        self._clips = ClipWatch()
        self._series: dict[str, list[Any]] = {"steps": [], "loss": [], "grad_norm": [],
                                              "clip": [], "step_time": []}  # fmt: skip

    def attach(self, ctx: GuardContext) -> None:
        if self.grad_norm:
            self._clips.install()

    def before_step(self, ctx: GuardContext) -> None:
        if not self.grad_norm:
            return
        import torch

        clipped = self._clips.take()
        if clipped is not None:  # the norm before clipping, as clip_grad_norm_ measured it
            self._pending_norm, self._clip = clipped
            return
        self._clip = None
        grads = [p.grad for _, p in ctx.named_parameters if p.grad is not None]
        if not grads:
            return
        norms = torch._foreach_norm([g.detach() for g in grads])
        self._pending_norm = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        if not info.optimizer_stepped:
            return
        norm = None
        if self._pending_norm is not None:
            pending, self._pending_norm = self._pending_norm, None
            norm = float(pending.item() if hasattr(pending, "item") else pending)
        step = ctx.current_step
        for label, value, series in (("loss", info.loss, self._loss),
                                     ("gradient norm", norm, self._grad)):  # fmt: skip
            if value is None:
                continue
            if not math.isfinite(value):
                ctx.emit(
                    Rule.TRAINING_ANOMALY,
                    Severity.MEDIUM,
                    f"{label} is {value} at step {step}",
                    where=f"metric:{label}",
                    evidence={"metric": label, "value": str(value), "step": step},
                )
                continue
            found = series.add(value)
            if found is not None:
                ctx.emit(
                    Rule.TRAINING_ANOMALY,
                    Severity.LOW,
                    f"{label} {value:.4g} at step {step} is {found['score']:.1f} robust "
                    f"deviations above its recent median {found['median']:.4g}",
                    where=f"metric:{label}:step:{step}",
                    evidence={"metric": label, "step": step, **found},
                )
        s = self._series
        s["steps"].append(step)
        s["loss"].append(_json_float(info.loss))
        s["grad_norm"].append(_json_float(norm))
        s["clip"].append(_json_float(self._clip))
        s["step_time"].append(_json_float(info.step_time))
        if step % ctx.every == 0:
            self._flush(ctx)

    def close(self, ctx: GuardContext) -> None:
        self._flush(ctx)
        for name in self._clips.close():
            ctx.event("anomalies.restore_skipped", {"name": name})

    def _flush(self, ctx: GuardContext) -> None:
        if self._series["steps"]:
            ctx.event("guard.metrics", dict(self._series))
            self._series = {k: [] for k in self._series}


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 7)
