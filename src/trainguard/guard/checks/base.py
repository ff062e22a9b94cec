"""The interface every runtime check implements, and what it may ask of the guard.

A check is a small object with hooks that the ``Guard`` calls at fixed points of a
training step. Each hook is optional (the base class does nothing)::

    attach          once, when the guard starts watching
    before_step     inside ``optimizer.step()``, before the optimizer touches anything
    after_step      inside ``optimizer.step()``, right after the update
    end_step        from ``guard.step(loss=..., batch=...)`` (or an integration callback)
    rebaseline      when a ``guard.authorized()`` block ends: accept the current state
    params_changed  the optimizer's parameters changed (``add_param_group``): extend the
                    coverage to ``ctx.named_parameters`` as it is now; called in the
                    pre-step hook after every ``before_step`` (which judged the old set),
                    or at the end of an ``authorized()`` block, before ``rebaseline``
    close           when the guard stops: undo every patch the check made

Checks never print or raise to report; they call ``ctx.emit`` (alerts) and
``ctx.event`` (evidence for the ledger). A check that cannot check something says so
with a ``guard.error`` alert, never silence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from trainguard.findings import Alert, Rule, Severity

__all__ = ["Check", "GuardContext", "StepInfo"]


@dataclass(frozen=True, slots=True)
class StepInfo:
    """What ``guard.step()`` was told about the step that just ended."""

    loss: float | None
    batch: Any
    step_time: float | None
    optimizer_stepped: bool


class GuardContext(Protocol):
    """The part of ``Guard`` that checks use."""

    model: Any
    optimizer: Any
    scheduler: Any
    dataloader: Any
    key: bytes
    rank: int
    world_size: int
    every: int
    seed: int | None
    step_call: tuple[Any, Any] | None
    """``(args, kwargs)`` of the ``optimizer.step()`` call being checked (set before the
    pre-step checks run; ``args[0]`` is the optimizer)."""

    @property
    def checks(self) -> Sequence[Check]:
        """Every check the guard runs (read-only: a guard's ``list`` satisfies it)."""

    @property
    def current_step(self) -> int:
        """The step being checked (1-based: the optimizer step running or just finished)."""

    @property
    def steps(self) -> int:
        """Optimizer steps completed under the guard."""

    @property
    def last_step(self) -> int:
        """The number of the last completed optimizer step (resumed runs start above 0)."""

    @property
    def is_authorized(self) -> bool:
        """True inside ``guard.authorized()``: changes now are the user's own."""

    @property
    def named_parameters(self) -> Sequence[tuple[str, Any]]:
        """The trainable parameters in a fixed order, with the model's names."""

    def emit(
        self,
        rule: Rule,
        severity: Severity,
        message: str,
        *,
        where: str,
        evidence: Mapping[str, Any] | None = None,
        step: int | None = None,
    ) -> Alert | None:
        """Raise an alert (ledger first). Returns None when the same rule and ``where``
        was already raised (repeats are counted, not re-recorded)."""

    def event(self, message: str, evidence: Mapping[str, Any]) -> None:
        """Record evidence (buffered; written to the ledger at the next flush)."""


class Check:
    """Base class: every hook is a no-op."""

    name: ClassVar[str] = "check"

    def attach(self, ctx: GuardContext) -> None:
        return None

    def before_step(self, ctx: GuardContext) -> None:
        return None

    def after_step(self, ctx: GuardContext) -> None:
        return None

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        return None

    def rebaseline(self, ctx: GuardContext) -> None:
        return None

    def params_changed(self, ctx: GuardContext) -> None:
        """No-op: checks that read ``ctx.named_parameters`` afresh need nothing, and
        re-running ``attach`` would re-install what a check patched."""
        return None

    def close(self, ctx: GuardContext) -> None:
        return None
