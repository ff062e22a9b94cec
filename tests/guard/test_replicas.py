"""Replicas of a 2-rank gloo job under torchrun: bit-identical, or the rank is named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardkit import free_port
from trainguard.ledger import read_records

JOB = Path(__file__).with_name("replica_job.py")


def _torchrun(tmp_path: Path, attack: str) -> list[tuple[str | None, int | None, int | None, str]]:
    ledger = tmp_path / "ledger"
    env = {**os.environ, "ATTACK": attack, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd = [
        *run,
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(JOB),
        str(ledger),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-12000:]
    return [
        (r.alert, r.step, r.rank, r.evidence["location"]["path"])
        for r in read_records(ledger)
        if r.kind == "alert"
    ]


@pytest.mark.parametrize("attack", ["", "tamper", "sleep", "poison"])
def test_two_rank_job(tmp_path: Path, attack: str) -> None:
    found = _torchrun(tmp_path, attack)
    alerts = [a[:3] for a in found]
    if attack == "":
        assert alerts == []
    elif attack == "tamper":
        # edited on rank 1 before step 6; the next comparison is at step 8. With two ranks
        # there is no majority, so both name themselves.
        assert sorted(alerts) == [
            ("runtime.replica_divergence", 8, 0),
            ("runtime.replica_divergence", 8, 1),
        ]
    elif attack == "sleep":
        assert ("process.straggler", 4, 0) in alerts or ("process.straggler", 8, 0) in alerts
        assert {a for a, _, _ in alerts} == {"process.straggler"}
        assert {where for *_, where in found} == {"straggler:rank:1"}
    else:
        assert ("training.anomaly", 4, 0) in alerts
        assert {where for *_, where in found} == {"grad_norm:rank:1"}
