"""The run's ledger as a job process finds it: a folder given, else ``$TRAINGUARD_LEDGER``
(set by ``trainguard run``), signed with ``$TRAINGUARD_LEDGER_KEY`` when that is set.

``open_ledger`` is how the guard and the drill's job open it; ``ledger_sink`` sends
findings of safe loading (``load()``/``protect()``) to it: inside a job a blocked load must
be on record even when the job dies of it a moment later, so each finding is appended
(and committed) as it is reported.

Under ``trainguard run`` the job's processes hold no key: ``$TRAINGUARD_LEDGER_KEY`` is
removed from their environment, and the ledger (mode ``run``) refuses one. They append
(each append is durable when it returns) and the supervisor, which alone holds the run's
key, signs heads over what they appended (``trainguard.launch.signer``). Nothing a job's
process does can make a head; what it appended is protected from the head that next
covers it. Outside ``trainguard run`` (a job that opens its own ledger) the key variable
works as before.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from trainguard.findings import Finding

__all__ = ["LEDGER_ENV", "LEDGER_KEY_ENV", "ledger_sink", "open_ledger"]

LEDGER_ENV = "TRAINGUARD_LEDGER"
LEDGER_KEY_ENV = "TRAINGUARD_LEDGER_KEY"


def open_ledger(ledger: Any, rank: int | None = None) -> tuple[Any, bool]:
    """``(ledger, owned)``: ``ledger`` as given when it is an open ``Ledger``, none for
    ``False``, else a new ``Ledger`` on the folder (or ``$TRAINGUARD_LEDGER`` for
    ``None``/empty; none when that is unset too). ``owned``: the caller must close it."""
    from trainguard.ledger.core import Ledger

    if ledger is False:
        return None, False
    if isinstance(ledger, Ledger):
        return ledger, False
    folder = ledger or os.environ.get(LEDGER_ENV)
    if not folder:
        return None, False
    key = os.environ.get(LEDGER_KEY_ENV) or None
    return Ledger(folder, key=key, rank=rank), True


def ledger_sink(path: str | os.PathLike[str] | None = None) -> Callable[[Finding], None] | None:
    """A callback that records each finding as an alert in ``path`` (default
    ``$TRAINGUARD_LEDGER``); ``None`` when there is no ledger to write to."""
    folder = path or os.environ.get(LEDGER_ENV)
    if not folder:
        return None

    def record(finding: Finding) -> None:
        led, _ = open_ledger(folder)
        with led:
            led.append_alert(finding)

    return record
