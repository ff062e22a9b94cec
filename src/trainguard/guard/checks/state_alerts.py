"""How the state check words what it found, and how it judges normalization statistics.

Split from ``state.py`` so that the check reads as what each optimizer hook covers; the
messages and the rule behind them live here. ``runtime.weight_tamper`` names model state
(buffers, frozen parameters, module attributes, normalization statistics);
``runtime.optimizer_tamper`` names ``optimizer.state``.

Trusted: the forward counts handed to ``judge_norms`` are the ones the check's forward
pre-hooks kept (``state_model.Norm``) since the previous hook, and ``advance`` is how far
each ``num_batches_tracked`` moved over the same window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.base import GuardContext

__all__ = ["changed_alerts", "judge_norms", "optimizer_alert", "weight_alert"]


def changed_alerts(ctx: GuardContext, kind: str, names: list[str], step: int) -> None:
    """Tensors whose content a verification found changed (``kind``: "optimizer" or
    "constants")."""
    for name in names:
        if kind == "optimizer":
            what = (
                f"optimizer state {name} changed between optimizer steps {step - 1} "
                f"and {step}: it is not what the last step left"
            )
            optimizer_alert(ctx, f"optim:{name}", what, step)
        else:
            weight_alert(ctx, name, f"{name} changed (fixed since the guard attached)", step)


def judge_norms(
    ctx: GuardContext,
    norms: Sequence[Any],
    step: int,
    changed: set[int],
    counts: list[int],
    advance: list[int],
) -> None:
    """``num_batches_tracked`` advances once per training-mode forward (InstanceNorm:
    never), and running statistics move only when there was such a forward."""
    tracked = iter(advance)
    for norm, count in zip(norms, counts, strict=True):
        moved = next(tracked) if norm.tracked is not None else 0
        want = count if norm.counts else 0
        if moved != want:
            weight_alert(
                ctx,
                f"buffer:{norm.name}.num_batches_tracked",
                f"{norm.name}.num_batches_tracked advanced by {moved}, but the layer ran "
                f"{count} training-mode forwards (expected {want})",
                step,
            )
        if count == 0 and any(i in changed for i in norm.stats):
            weight_alert(
                ctx,
                f"buffer:{norm.name}.running_stats",
                f"{norm.name}'s running statistics changed without a training-mode forward",
                step,
            )


def weight_alert(ctx: GuardContext, where: str, what: str, step: int) -> None:
    ctx.emit(
        Rule.WEIGHT_TAMPER,
        Severity.CRITICAL,
        f"model state {what} (between optimizer hooks, step {step})",
        where=where,
        evidence={"state": where, "how": what},
        step=step,
    )


def optimizer_alert(ctx: GuardContext, where: str, what: str, step: int) -> None:
    ctx.emit(
        Rule.OPTIMIZER_TAMPER,
        Severity.CRITICAL,
        f"{what} (before optimizer step {step})",
        where=where,
        evidence={"state": where, "how": what},
        step=step,
    )
