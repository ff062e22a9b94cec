"""The alerts of ``DataCheck``: order mismatches, changed data, and its own failures.

Why a module of its own: the loader calls into the data check from its sampler (possibly
on another thread); every report made from there must be built without raising, so the
builders live together and each swallows (and reports) its own failure.

What it trusts: nothing beyond what the caller hands it; the expected order comes from
``sampler_order`` or ``accelerate_batches`` and the changes from ``data_watch``.
"""

from __future__ import annotations

import logging
import traceback
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.base import GuardContext
from trainguard.guard.checks.sampler_order import Plan, plain, plain_batch, same

__all__ = ["batch_alert", "content_alert", "internal_error", "order_alert"]

log = logging.getLogger("trainguard.guard")

WHERE_SAMPLER = "dataloader.sampler"
WHERE_BATCHES = "dataloader.batch_sampler"


def order_alert(
    ctx: GuardContext,
    plan: Plan,
    name: str,
    epoch: int,
    start: int,
    got: list[Any],
    want: list[Any],
    step: int,
) -> None:
    """``got`` was drawn from ``start`` on where ``want`` was due (``want`` may run
    longer: the sampler ended early). Reports the first differing position."""
    try:
        k = next(
            (
                i
                for i in range(max(len(got), len(want)))
                if i >= len(got) or i >= len(want) or not same(got[i], want[i])
            ),
            0,
        )
        actual = got[k] if k < len(got) else None
        expected = want[k] if k < len(want) else None
        pos = start + k
        kind = plan.kind(pos, actual, expected)
        evidence: dict[str, Any] = {
            "epoch": epoch,
            "position": pos,
            "expected": plain(expected),
            "actual": plain(actual),
            "kind": kind,
            "sampler": name,
        }
        evidence.update(plan.evidence)
        ctx.emit(
            Rule.DATA_ORDER,
            Severity.HIGH,
            f"the sampler's order differs from its recomputation at epoch {epoch} "
            f"position {pos}: expected {expected!r}, got {actual!r} ({kind})",
            where=WHERE_SAMPLER,
            evidence=evidence,
            step=step,
        )
    except Exception as exc:  # noqa: BLE001 - report, let the loader go on
        internal_error(ctx, "alert", exc)


def batch_alert(
    ctx: GuardContext,
    replay_evidence: dict[str, Any],
    name: str,
    epoch: int,
    pos: int,
    got: Any,
    kind: str,
    want: Any,
    step: int,
) -> None:
    """Batch ``pos`` of accelerate's wrappers was ``got`` where ``want`` was due
    (``None``: nothing was due, or nothing came)."""
    try:
        expected, actual = plain_batch(want), plain_batch(got)
        evidence: dict[str, Any] = {
            "epoch": epoch,
            "batch": pos,
            "expected": expected,
            "actual": actual,
            "kind": kind,
            "sampler": name,
        }
        evidence.update(replay_evidence)
        ctx.emit(
            Rule.DATA_ORDER,
            Severity.HIGH,
            f"the batches of {name} differ from their recomputation at epoch {epoch} "
            f"batch {pos}: expected {expected!r:.200}, got {actual!r:.200} ({kind})",
            where=WHERE_BATCHES,
            evidence=evidence,
            step=step,
        )
    except Exception as exc:  # noqa: BLE001 - report, let the loader go on
        internal_error(ctx, "alert", exc)


def content_alert(
    ctx: GuardContext, where: str, what: str, evidence: dict[str, Any], step: int
) -> None:
    """What the model is fed changed: ``where`` names the object (``dataloader.collate_fn``,
    ``dataset.tensors[0]``...), ``what`` says how."""
    try:
        ctx.emit(
            Rule.DATA_CONTENT,
            Severity.HIGH,
            f"{where}: {what} (step {step})",
            where=where,
            evidence={**evidence, "change": what},
            step=step,
        )
    except Exception as exc:  # noqa: BLE001 - report, let training go on
        internal_error(ctx, "alert", exc)


def internal_error(ctx: GuardContext | None, what: str, exc: Exception) -> None:
    """A guard bug inside the loader must not stop training: report, keep going."""
    try:
        if ctx is not None:
            ctx.emit(
                Rule.GUARD_ERROR,
                Severity.MEDIUM,
                f"check data failed in {what}: {type(exc).__name__}: {exc}",
                where="check:data",
                evidence={"traceback": "".join(traceback.format_exception(exc, limit=8))},
            )
    except Exception:
        log.exception("trainguard data check could not report its own failure")
