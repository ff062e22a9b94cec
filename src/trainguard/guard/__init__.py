"""The in-job runtime guard (see ``trainguard.guard.core.Guard``)."""

from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.constraints import Clamp, Constraint, MaxNorm, NonNegative
from trainguard.guard.core import DEFAULT_EVERY, Guard
from trainguard.guard.signals import watch_early

__all__ = [
    "DEFAULT_EVERY",
    "Check",
    "Clamp",
    "Constraint",
    "Guard",
    "GuardContext",
    "MaxNorm",
    "NonNegative",
    "StepInfo",
    "watch_early",
]
