"""``trainguard run -- torchrun ...``: two gloo ranks on this machine."""

from __future__ import annotations

from launchkit import PY

DDP_JOB = """
import os, signal, torch, torch.distributed as dist
from trainguard.guard import Guard
dist.init_process_group("gloo")
rank = dist.get_rank()
model = torch.nn.Linear(4, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
guard = Guard(model, opt, checks=[])
for i in range(6):
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad(); loss.backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
    opt.step(); guard.step(loss)
    if i == 3 and rank == 1 and os.environ.get("KILL_RANK_1"):
        os.kill(os.getpid(), signal.SIGKILL)
guard.close()
dist.destroy_process_group()
"""


def _torchrun(port: int) -> list[str]:
    return [PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", f"--master_port={port}"]


def test_two_rank_clean_job(launch, tmp_path, free_port):
    (tmp_path / "ddp.py").write_text(DDP_JOB)
    run = launch([*_torchrun(free_port), "ddp.py"], "--guard-timeout", "60")
    assert run.code == 0, run.stderr
    assert run.alerts() == []
    exits = run.events("process.exit")
    ranks = {r.rank: r.evidence for r in exits if r.evidence["role"] == "rank"}
    assert set(ranks) == {0, 1}
    assert all(e["how"] == "normal" for e in ranks.values())
    (command,) = [r for r in exits if r.evidence["role"] == "command"]
    assert command.evidence["exit_code"] == 0  # torchrun itself
    assert {r.rank for r in run.events("guard.started")} == {0, 1}


def test_rank_killed_by_sigkill_is_named(launch, tmp_path, free_port):
    (tmp_path / "ddp.py").write_text(DDP_JOB)
    run = launch(
        [*_torchrun(free_port), "ddp.py"], "--guard-timeout", "60", env={"KILL_RANK_1": "1"}
    )
    assert run.code != 0
    (killed,) = run.alerts("process.killed")
    assert killed.rank == 1
    assert killed.evidence["signal"] == 9
    assert killed.evidence["uncatchable"] is True
    assert killed.evidence["source"] in ("torchrun", "waitpid")
    assert "rank 1" in killed.message
    assert {a.alert for a in run.alerts()} == {"process.killed"}
    (rank1,) = [r for r in run.events("process.exit") if r.rank == 1]
    assert rank1.evidence["signal"] == 9
