"""Heartbeats from a guarded rank to the ``trainguard run`` supervisor.

The launcher sets ``TRAINGUARD_RUN_DIR``; each guarded process then keeps one small JSON
file ``<run dir>/heartbeats/<pid>.json`` up to date (atomically replaced, at most a few
times a second): rank, pid, last step, recent step times, alert count and whether the
guard is still attached. A rank whose file never appears has no guard (``guard.missing``);
one whose file stops changing is hung or gone.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["HEARTBEAT_DIR", "RUN_DIR_ENV", "Heartbeat"]

RUN_DIR_ENV = "TRAINGUARD_RUN_DIR"
HEARTBEAT_DIR = "heartbeats"
_MIN_INTERVAL = 0.25
_KEEP_TIMES = 16


class Heartbeat:
    """Writes this process's heartbeat file."""

    def __init__(self, run_dir: Path, rank: int) -> None:
        self.path = run_dir / HEARTBEAT_DIR / f"{os.getpid()}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.started = time.time()
        self.step = 0
        self.alerts = 0
        self.times: list[float] = []
        self.busy: list[float] = []
        self._last_write = 0.0
        self._write(state="attached")

    @classmethod
    def from_env(cls, rank: int) -> Heartbeat | None:
        run_dir = os.environ.get(RUN_DIR_ENV)
        return cls(Path(run_dir), rank) if run_dir else None

    def beat(self, step: int, step_time: float | None, busy: Iterable[float] = ()) -> None:
        self.step = step
        self.busy = [round(b, 6) for b in list(busy)[-_KEEP_TIMES:]]
        if step_time is not None:
            self.times = [*self.times[-(_KEEP_TIMES - 1) :], round(step_time, 6)]
        now = time.monotonic()
        if now - self._last_write >= _MIN_INTERVAL:
            self._write(state="attached")

    def alert(self, alert: Any) -> None:
        self.alerts += 1
        self._write(state="attached")

    def close(self, step: int) -> None:
        self.step = step
        self._write(state="closed")

    def _write(self, *, state: str) -> None:
        self._last_write = time.monotonic()
        body = {
            "pid": os.getpid(),
            "rank": self.rank,
            "step": self.step,
            "time": time.time(),
            "started": self.started,
            "step_times": self.times,
            "busy_times": self.busy,
            "alerts": self.alerts,
            "state": state,
        }
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps(body))
            os.replace(tmp, self.path)
        except OSError:  # the supervisor's folder is gone: the job must go on
            pass
