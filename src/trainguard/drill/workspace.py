"""Where one drill runs: a scratch folder, and how to start the job in it.

Every run of the job is a real process tree: ``trainguard run`` (the supervisor, with the
start-up bootstrap) over ``python -m trainguard.drill.job`` or ``torchrun`` of it, with
one ledger per scenario so each attack's alerts are its own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.drill.insider import AT_ENV, ATTACK_ENV, RANK_ENV
from trainguard.drill.job import HOOKS_ENV

__all__ = ["JOB_STEPS", "Workspace", "free_port"]

JOB_STEPS = 16
_JOB_FLAGS = ("--every", "4", "--corpus-chars", "4096", "--threads", "1")


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path
    python: str = sys.executable
    timeout: float = 120.0

    def folder(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
        env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
        env.update(extra)
        return env

    def job_command(
        self, out: Path, *, steps: int = JOB_STEPS, ranks: int = 1, extra: Sequence[str] = ()
    ) -> list[str]:
        job = [
            "-m",
            "trainguard.drill.job",
            "--out",
            str(out),
            "--steps",
            str(steps),
            *_JOB_FLAGS,
            *extra,
        ]
        if ranks == 1:
            return [self.python, *job]
        return [
            self.python,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(ranks),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            *job,
        ]

    def supervised(
        self,
        ledger: Path,
        command: Sequence[str],
        *,
        launcher: Sequence[str] = (),
        attack: str | None = None,
        at: int | None = None,
        rank: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``trainguard run`` over ``command`` (not waiting)."""
        extra = dict(env or {})
        if attack is not None:
            extra.update(
                {
                    HOOKS_ENV: "trainguard.drill.insider:hooks",
                    ATTACK_ENV: attack,
                    AT_ENV: str(at or 0),
                }
            )
            if rank is not None:
                extra[RANK_ENV] = str(rank)
        argv = [
            self.python,
            "-m",
            "trainguard.launch",
            "--ledger",
            str(ledger),
            "--no-env-verify",
            # attaching may take long on a busy machine (import torch, build the model);
            # a guard closed mid-run (the guard-removed scenario) is judged sooner
            "--guard-timeout",
            "90",
            "--closed-after",
            "20",
            "--hang-after",
            "60",
            *launcher,
            "--",
            *command,
        ]
        return subprocess.Popen(
            argv,
            env=self.env(**extra),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )

    def finish(self, proc: subprocess.Popen[bytes]) -> tuple[int, str]:
        try:
            _, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        return proc.returncode, err.decode("utf-8", "replace")[-4000:]

    def run(self, ledger: Path, command: Sequence[str], **kwargs: Any) -> tuple[int, str]:
        return self.finish(self.supervised(ledger, command, **kwargs))


def wait_for_step(out: Path, step: int, *, rank: int = 0, timeout: float = 60.0) -> int | None:
    """Wait until ``progress.jsonl`` in ``out`` shows ``rank`` at ``step``; return the
    step seen (None on timeout)."""
    deadline = time.monotonic() + timeout
    path = out / "progress.jsonl"
    while time.monotonic() < deadline:
        if path.exists():
            seen = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            mine = [s["step"] for s in seen if s.get("rank", 0) == rank]
            if mine and max(mine) >= step:
                return int(max(mine))
        time.sleep(0.02)
    return None


def rank_pids(ledger: Path, timeout: float = 30.0) -> dict[int, int]:
    """pid of each guarded rank, from the supervisor's heartbeat files."""
    deadline = time.monotonic() + timeout
    found: dict[int, int] = {}
    while time.monotonic() < deadline:
        for beat in ledger.glob("runs/*/heartbeats/*.json"):
            if beat.name.endswith(".boot.json"):
                continue
            try:
                body = json.loads(beat.read_text())
            except (OSError, ValueError):
                continue
            found[int(body.get("rank", 0))] = int(body["pid"])
        if found:
            return found
        time.sleep(0.05)
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
