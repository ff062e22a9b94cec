"""Helpers of the launcher tests: small jobs, and what a launcher run left behind."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from trainguard.ledger import Record, read_records

PY = sys.executable


GUARD_JOB = """
import sys, time, torch
from trainguard.guard import Guard
torch.manual_seed(0)
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
guard = Guard(model, opt, checks=[])
for i in range({steps}):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step(); guard.step(loss)
{after_steps}
guard.close()
{after_close}
"""


HEARTBEAT_JOB = """
import time
from trainguard.guard.heartbeat import Heartbeat
beat = Heartbeat.from_env(rank=0)
for step in range(1, {steps} + 1):
    time.sleep(0.3)  # slower than the heartbeat's 4 writes a second: every step shows
    beat.beat(step, 0.3)
{after_steps}
beat.close({steps})
{after_close}
"""


def heartbeat_job(steps: int = 3, after_steps: str = "", after_close: str = "") -> str:
    """A job that speaks the guard's heartbeat protocol without importing torch."""
    return HEARTBEAT_JOB.format(steps=steps, after_steps=after_steps, after_close=after_close)


def guard_job(steps: int = 6, after_steps: str = "", after_close: str = "") -> str:
    return GUARD_JOB.format(steps=steps, after_steps=after_steps, after_close=after_close)


@dataclass
class Launched:
    code: int
    stderr: str
    stdout: str
    ledger: Path

    @property
    def records(self) -> list[Record]:
        return read_records(self.ledger)

    def alerts(self, rule: str | None = None) -> list[Record]:
        return [r for r in self.records if r.kind == "alert" and (rule is None or r.alert == rule)]

    def events(self, message: str) -> list[Record]:
        return [r for r in self.records if r.kind == "event" and r.message == message]
