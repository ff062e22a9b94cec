"""The runtime checks, one module each. ``default_checks`` is what ``Guard`` runs."""

from __future__ import annotations

from trainguard.guard.checks.base import Check

__all__ = ["Check", "default_checks"]


def default_checks(*, process: bool = True) -> list[Check]:
    """A fresh instance of every check, cheapest first. ``process=False`` leaves out the
    audit-hook and signal watch (for hosts that own signal handling themselves)."""
    from trainguard.guard.checks.anomalies import AnomalyCheck
    from trainguard.guard.checks.code import CodeCheck
    from trainguard.guard.checks.data import DataCheck
    from trainguard.guard.checks.gradients import GradientCheck
    from trainguard.guard.checks.hyper import HyperCheck
    from trainguard.guard.checks.replicas import ReplicaCheck
    from trainguard.guard.checks.rng import RngCheck
    from trainguard.guard.checks.state import StateCheck
    from trainguard.guard.checks.update import UpdateCheck
    from trainguard.guard.checks.weights import WeightsCheck

    checks: list[Check] = [
        WeightsCheck(),
        StateCheck(),
        HyperCheck(),
        UpdateCheck(),
        RngCheck(),
        DataCheck(),
        CodeCheck(),
        ReplicaCheck(),
        GradientCheck(),
        AnomalyCheck(),
    ]
    if process:
        from trainguard.guard.checks.process import ProcessCheck

        checks.append(ProcessCheck())
    return checks
