"""The red-team attacks that need two data-parallel ranks, and the torchrun job that runs
one of them: ``torchrun --nproc-per-node 2 sabotage_ddp.py NAME OUTDIR`` trains the kit's
job wrapped in DDP (gloo) and writes each rank's alerts to ``OUTDIR/rank<r>.json``.

They exist because two sabotages only exist across ranks: a DDP communication hook that
rewrites the reduced gradient on every rank alike (the replicas stay identical), and one
rank training on noise labels. What the job trusts: that torchrun started both ranks with
the same code and the same seed, so without an attack the replicas agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from sabotage_kit import HONEST, Attack, Job, judge, train

__all__ = ["ATTACKS", "HONEST_DDP", "main"]

MONKEY = "runtime.monkeypatch"
UPDATE = "runtime.update_mismatch"
GRADDIV = "runtime.gradient_divergence"
CONTENT = "runtime.data_content"
REPLICA = "runtime.replica_divergence"
ANOMALY = "training.anomaly"


def comm_hook(job: Job) -> None:
    """Allreduce as DDP does, then push every rank's reduced gradient the same way."""

    def hook(state: Any, bucket: Any) -> Any:
        buffer = bucket.buffer().div_(dist.get_world_size())
        future = dist.all_reduce(buffer, async_op=True).get_future()
        return future.then(lambda f: f.value()[0] * 1.5 + 1e-3)

    # DDP compares the annotations as objects; this module's are strings (PEP 563)
    hook.__annotations__ = {
        "state": object,
        "bucket": dist.GradBucket,  # type: ignore[attr-defined]
        "return": torch.futures.Future[torch.Tensor],
    }
    job.net.register_comm_hook(None, hook)  # type: ignore[operator]


def rank_noise_labels(job: Job) -> None:
    if dist.get_rank() == 1:
        x, y = job.dataset.tensors
        gen = torch.Generator().manual_seed(5)
        job.dataset.tensors = (x, torch.randint(0, 32, y.shape, generator=gen))


ATTACKS: list[Attack] = [
    Attack(
        "DDP comm hook scales grads",
        "upstream",
        (MONKEY, GRADDIV, UPDATE),
        1,
        comm_hook,
        before_guard=True,
    ),
    Attack(
        "DDP rank 1 labels are noise",
        "data",
        (GRADDIV, CONTENT, REPLICA, ANOMALY),
        5,
        rank_noise_labels,
    ),
]
HONEST_DDP = "ddp-plain"


def main(argv: list[str]) -> int:
    name, out = argv[0], Path(argv[1])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    attack = next((a for a in ATTACKS if a.name == name), None)
    alerts = train(HONEST["plain"], attack)
    outcome = judge(attack, alerts)
    record = {
        "rank": rank,
        "verdict": outcome.verdict,
        "detail": outcome.detail,
        "alerts": [[a.rule, a.step, a.where, a.message] for a in alerts],
    }
    (out / f"rank{rank}.json").write_text(json.dumps(record, default=str))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
