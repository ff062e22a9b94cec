"""The compatibility matrix: real training stacks, each a small job under ``trainguard run``.

Each job in ``tests/compat/jobs/`` trains a tiny model on synthetic data for a few steps
the way that stack is normally used (Hugging Face ``Trainer`` with a resume, PEFT,
accelerate, Lightning, torchrun, ``mp.spawn``, spawned DataLoader workers,
``torch.compile``'s compile worker, W&B, TensorBoard, and the honest in-place writes a
guard must not mistake for tampering). An honest job must come out exactly as it went in:
exit 0, its own "compat: ... ok" line printed (the job checks its own outcome), every
guard it starts recorded, and not one alert of any severity in the ledger (INFO events,
such as ``data.unverified``, are records of what could not be checked, not alerts).

Environment verification runs before the job and does not depend on it, so it runs once,
for ``hf_trainer_resume``, as ``trainguard run`` does by default: a whole-venv hash (about
35 s on 2 cores; more where it makes a first-use seal). The other jobs pass
``--no-env-verify``: a seal per session would make each verify fast (about 4 s) but costs
about a minute to make. Every job gets a private ``TRAINGUARD_STATE_DIR``, so no seal or
cache of the tests lands in the real home.

Select the matrix alone with ``python -m pytest -m compat``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trainguard.ledger import Record, read_records

pytestmark = pytest.mark.compat

JOBS = Path(__file__).resolve().parent / "jobs"
PY = sys.executable
BIN = Path(PY).parent
JOB_TIMEOUT = 300  # seconds (trainguard run --timeout); torch_compile takes about 35 s on 2 cores
VERIFY_TIMEOUT = 300  # more for the whole run: environment verification comes before the job


STATIC = ("--nnodes", "1", "--rdzv-backend", "static", "--master-addr", "127.0.0.1")


@dataclass(frozen=True)
class Job:
    name: str
    script: str  # jobs/<script>.py
    launcher: str = "python"  # or "torchrun-static", "torchrun-standalone": 2 ranks
    guards: int = 1  # guard.started events the job must record
    env: dict[str, str] = field(default_factory=dict)
    env_verify: bool = False

    def command(self, port: int) -> list[str]:
        script = str(JOBS / f"{self.script}.py")
        if self.launcher == "python":
            return [PY, script]
        if self.launcher == "torchrun-standalone":
            flags = ["--standalone"]
        else:
            flags = [*STATIC, "--master-port", str(port)]
        return [str(BIN / "torchrun"), *flags, "--nproc-per-node", "2", script]


MATRIX = [
    Job("hf_trainer_resume", "hf_trainer_resume", guards=2, env_verify=True),
    Job("peft_lora", "peft_lora"),
    Job("accelerate_1_process", "accelerate_loop"),
    Job(
        "accelerate_2_processes",
        "accelerate_loop",
        "torchrun-static",
        guards=2,
        env={"COMPAT_WORLD_SIZE": "2"},
    ),
    Job("lightning_resume", "lightning_resume", guards=2),
    Job("torchrun_static", "ddp_gloo", "torchrun-static", guards=2),
    Job("torchrun_standalone", "ddp_gloo", "torchrun-standalone", guards=2),
    Job("mp_spawn_ddp", "mp_spawn_ddp", guards=2),
    Job("dataloader_spawn", "dataloader_spawn"),
    Job("torch_compile", "torch_compile"),
    Job("wandb_offline", "wandb_offline"),
    Job("tensorboard", "tensorboard_writer"),
    Job("ema_swap", "ema_swap"),
    Job("embedding_max_norm", "embedding_max_norm"),
    Job("weight_clipping", "weight_clipping"),
    Job("chained_schedulers", "chained_schedulers"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _describe(alert: Record) -> str:
    evidence = json.dumps(dict(alert.evidence), default=str)
    if len(evidence) > 1500:
        evidence = evidence[:1500] + "..."
    return (
        f"  {alert.alert} ({alert.severity}) rank={alert.rank} step={alert.step} pid={alert.pid}\n"
        f"    {alert.message}\n    evidence: {evidence}"
    )


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("compat-state")
    folder.chmod(0o700)
    return folder


@pytest.mark.parametrize("job", MATRIX, ids=[j.name for j in MATRIX])
def test_honest_job_runs_clean(job: Job, tmp_path: Path, state_dir: Path) -> None:
    ledger = tmp_path / "ledger"
    verify = [] if job.env_verify else ["--no-env-verify"]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",  # offline first: every model here is built from a config
        "NO_COLOR": "1",
        "TRAINGUARD_STATE_DIR": str(state_dir),
        **job.env,
    }
    env.pop("TRAINGUARD_LEDGER", None)
    command = [
        *(PY, "-m", "trainguard", "run", "--ledger", str(ledger), "--timeout", str(JOB_TIMEOUT)),
        *verify,
        "--",
        *job.command(_free_port()),
    ]
    out = subprocess.run(
        command,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT + VERIFY_TIMEOUT,
    )
    records = read_records(ledger) if ledger.exists() else []
    alerts = [r for r in records if r.kind == "alert"]
    guards = [r for r in records if r.evidence.get("event") == "guard.started"]
    failures = [] if ledger.exists() else ["no ledger written"]
    if out.returncode != 0:
        failures.append(f"exit code {out.returncode}")
    if f"compat: {job.script} " not in out.stdout:
        failures.append("the job never printed its 'ok' line")
    if alerts:
        failures.append(f"{len(alerts)} alert(s)")
    if len(guards) < job.guards:
        failures.append(f"{len(guards)} guard(s) started, expected {job.guards}")
    if failures:
        pytest.fail(
            f"{job.name}: {', '.join(failures)}\n"
            f"command: {' '.join(command)}\n"
            "alerts:\n" + ("\n".join(_describe(a) for a in alerts) or "  none") + "\n"
            f"stderr (last 4000 characters):\n{out.stderr[-4000:]}\n"
            f"stdout (last 1000 characters):\n{out.stdout[-1000:]}",
            pytrace=False,
        )
