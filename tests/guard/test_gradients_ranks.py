"""The gradient check on a 2-rank gloo job under torchrun (``gradient_job.py``).

It trusts DDP's contract that the reduced gradient is the ranks' mean: a comm hook that
breaks it is caught on every rank; a rank fed loud label noise is named by its gradient
norm. With two ranks the cosine between them is one symmetric number, so a rank whose
labels are noise of the honest scale cannot be told from its peer (see ``gradients_math``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from guardkit import free_port
from trainguard.ledger import read_records

JOB = Path(__file__).with_name("gradient_job.py")


def _torchrun(tmp_path: Path, attack: str) -> list[tuple[str | None, int | None, int | None, str]]:
    ledger = tmp_path / "ledger"
    env = {**os.environ, "ATTACK": attack, "OMP_NUM_THREADS": "1"}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    port = ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    cmd = [*run, *port, str(JOB), str(ledger)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-12000:]
    return [
        (r.alert, r.step, r.rank, r.evidence["location"]["path"])
        for r in read_records(ledger)
        if r.kind == "alert"
    ]


HONEST = ["", "fp16", "fp16_inner", "bucket_view", "synced_accumulation"]


@pytest.mark.parametrize("attack", [*HONEST, "noise_labels", "comm_noise"])
def test_two_rank_job(tmp_path: Path, attack: str) -> None:
    found = _torchrun(tmp_path, attack)
    if attack in HONEST:
        assert found == []
    elif attack == "noise_labels":
        # named by rank 0 once eight steps of statistics have arrived (one step late)
        assert found == [("runtime.gradient_divergence", 9, 0, "gradients:rank:1")]
    else:
        assert ("runtime.gradient_divergence", 1, 0, "gradients:reduction") in found
        assert ("runtime.gradient_divergence", 1, 1, "gradients:reduction") in found
        assert {where for *_, where in found} == {"gradients:reduction"}
