"""Send findings of safe loading (``load()``/``protect()``) to the run's ledger.

Inside a job started by ``trainguard run`` (or any process with ``$TRAINGUARD_LEDGER``
set) a blocked load must be on record even when the job dies of it a moment later, so
each finding is appended (and committed) as it is reported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from trainguard.findings import Finding

__all__ = ["ledger_sink"]


def ledger_sink(path: str | os.PathLike[str] | None = None) -> Callable[[Finding], None] | None:
    """A callback that records each finding as an alert in ``path`` (default
    ``$TRAINGUARD_LEDGER``); ``None`` when there is no ledger to write to."""
    folder = path or os.environ.get("TRAINGUARD_LEDGER")
    if not folder:
        return None
    target = Path(folder)

    def record(finding: Finding) -> None:
        from trainguard.ledger.core import Ledger

        with Ledger(target, key=os.environ.get("TRAINGUARD_LEDGER_KEY") or None) as led:
            led.append_alert(finding)

    return record
