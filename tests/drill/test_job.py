"""The drill's training job: it learns, it is bit-for-bit reproducible, a resumed run
equals an uninterrupted one, signed checkpoints are verified before resuming, and two
torchrun ranks end with identical weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from guardkit import free_port
from trainguard.drill.job import JobArgs, JobHooks, JobState, load_hooks, main, train
from trainguard.errors import ConfigError, IntegrityError

# 3000 characters make 46 blocks of 64, 5 batches of 8 per epoch: short runs cross epochs.
SMALL = {"corpus_chars": 3000, "checks": "none", "threads": 1}


def _progress(out: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]


def test_tiny_job_learns_and_is_reproducible(tmp_path):
    args = JobArgs(out=str(tmp_path / "a"), steps=60, checks="none", threads=1)
    first = train(args)
    second = train(replace(args, out=str(tmp_path / "b")))
    assert first.steps == 60 and len(first.losses) == 60
    assert first.losses[0] > 5.0 and first.losses[-1] < first.losses[0] - 2.0
    assert first.weights_sha256 == second.weights_sha256
    assert first.losses == second.losses
    assert first.seconds < 30  # ~0.6 s on an idle core
    lines = _progress(tmp_path / "a")
    assert [r["step"] for r in lines] == list(range(1, 61))
    assert {r["rank"] for r in lines} == {0} and lines[-1]["loss"] == first.losses[-1]
    saved = json.loads((tmp_path / "a" / "result-rank0.json").read_text())
    assert saved["weights_sha256"] == first.weights_sha256 and saved["alerts"] == []


def test_guard_without_checks_changes_nothing(tmp_path):
    guarded = train(JobArgs(out=str(tmp_path / "g"), steps=12, **SMALL))
    bare = train(JobArgs(out=str(tmp_path / "n"), steps=12, guard=False, **SMALL))
    assert guarded.weights_sha256 == bare.weights_sha256 and guarded.alerts == ()


def test_seed_changes_the_run(tmp_path):
    a = train(JobArgs(out=str(tmp_path / "a"), steps=3, seed=1, **SMALL))
    b = train(JobArgs(out=str(tmp_path / "b"), steps=3, seed=2, **SMALL))
    assert a.weights_sha256 != b.weights_sha256


@pytest.mark.parametrize("schedule", ["lambda", "sequential"])
def test_resume_equals_uninterrupted(tmp_path, schedule):
    full = train(
        JobArgs(
            out=str(tmp_path / "full"), steps=16, checkpoint_every=4, schedule=schedule, **SMALL
        )
    )
    names = [Path(p).name for p in full.checkpoints]
    assert names == ["step-000004.pt", "step-000008.pt", "step-000012.pt", "step-000016.pt"]
    # step 8 is mid-epoch (8 = 5 + 3), step 10 would be a boundary; 12 is mid-epoch too.
    for at in ("step-000008.pt", "step-000012.pt"):
        resumed = train(
            JobArgs(
                out=str(tmp_path / f"from-{at}"),
                steps=16,
                resume=str(tmp_path / "full" / "checkpoints" / at),
                schedule=schedule,
                **SMALL,
            )
        )
        assert resumed.start_step == int(at[5:11])
        assert resumed.weights_sha256 == full.weights_sha256
        assert resumed.losses == full.losses[resumed.start_step :]


def test_resume_at_an_epoch_boundary(tmp_path):
    full = train(JobArgs(out=str(tmp_path / "full"), steps=13, checkpoint_every=5, **SMALL))
    resumed = train(JobArgs(out=str(tmp_path / "r"), steps=13, resume=full.checkpoints[1], **SMALL))
    assert resumed.start_step == 10 and resumed.weights_sha256 == full.weights_sha256


@pytest.fixture
def signing_key(tmp_path, monkeypatch):
    pytest.importorskip("cryptography")
    from trainguard import keys

    private, _ = keys.generate_ecdsa_p256()
    path = tmp_path / "signing.pem"
    path.write_bytes(private)
    os.chmod(path, 0o600)
    monkeypatch.setenv("TRAINGUARD_SIGNING_KEY", str(path))
    return path


def test_signed_checkpoints_are_recorded_and_verified_on_resume(tmp_path, signing_key):
    from trainguard.ledger import read_records

    ledger = str(tmp_path / "ledger")
    full = train(
        JobArgs(out=str(tmp_path / "full"), steps=8, checkpoint_every=4, ledger=ledger, **SMALL)
    )
    for path in full.checkpoints:
        assert Path(path + ".sig").is_file()
    saved = [r for r in read_records(ledger) if r.evidence.get("event") == "checkpoint.saved"]
    assert [r.evidence["file"] for r in saved] == [
        str(Path(p).absolute()) for p in full.checkpoints
    ]

    resumed = train(
        JobArgs(
            out=str(tmp_path / "r"), steps=8, resume=full.checkpoints[0], ledger=ledger, **SMALL
        )
    )
    assert resumed.weights_sha256 == full.weights_sha256 and resumed.alerts == ()

    # Roll the step-8 checkpoint back to step 4 (both validly signed files): refused.
    late = Path(full.checkpoints[1])
    late.write_bytes(Path(full.checkpoints[0]).read_bytes())
    with pytest.raises(IntegrityError, match=r"checkpoint\.modified"):
        train(JobArgs(out=str(tmp_path / "x"), steps=12, resume=str(late), ledger=ledger, **SMALL))
    alerts = [r for r in read_records(ledger) if r.kind == "alert"]
    assert alerts and {r.alert for r in alerts} == {"checkpoint.modified"}


def test_unsigned_checkpoint_is_refused_when_a_key_is_configured(tmp_path, monkeypatch):
    plain = train(JobArgs(out=str(tmp_path / "p"), steps=4, checkpoint_every=4, **SMALL))
    pytest.importorskip("cryptography")
    from trainguard import keys

    _, public = keys.generate_ecdsa_p256()
    (tmp_path / "verify.pub").write_bytes(public)
    monkeypatch.setenv("TRAINGUARD_VERIFY_KEY", str(tmp_path / "verify.pub"))
    with pytest.raises(IntegrityError, match=r"checkpoint\.unsigned"):
        train(JobArgs(out=str(tmp_path / "r"), steps=8, resume=plain.checkpoints[0], **SMALL))


class _Recorder(JobHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def on_start(self, state: JobState) -> None:
        self.calls.append(("start", state.step))

    def on_batch(self, state, x, y):
        self.calls.append(("batch", state.step))
        return x, y

    def before_step(self, state: JobState) -> None:
        self.calls.append(("before", state.step))

    def after_step(self, state: JobState) -> None:
        self.calls.append(("after", state.step))

    def on_checkpoint(self, state: JobState, path: Path) -> None:
        self.calls.append(("checkpoint", state.step))

    def on_end(self, state: JobState) -> None:
        self.calls.append(("end", state.step))


def test_hooks_run_at_their_points(tmp_path):
    rec = _Recorder()
    train(JobArgs(out=str(tmp_path), steps=2, checkpoint_every=2, **SMALL), rec)
    assert rec.calls == [
        ("start", 0),
        ("batch", 0), ("before", 0), ("after", 1),
        ("batch", 1), ("before", 1), ("checkpoint", 2), ("after", 2),
        ("end", 2),
    ]  # fmt: skip


def test_hooks_can_replace_the_batch(tmp_path):
    class Zeros(JobHooks):
        def on_batch(self, state, x, y):
            return torch.zeros_like(x), torch.zeros_like(y)

    zeros = train(JobArgs(out=str(tmp_path / "z"), steps=20, **SMALL), Zeros())
    assert zeros.losses[-1] < 1.0  # predicting zeros from zeros is trivial


def test_hooks_named_by_module_path(tmp_path, monkeypatch):
    (tmp_path / "my_hooks.py").write_text(
        textwrap.dedent(
            """
            from trainguard.drill.job import JobHooks

            class Hooks(JobHooks):
                pass

            instance = Hooks()
            not_hooks = object
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert type(load_hooks("my_hooks:Hooks")).__name__ == "Hooks"
    assert load_hooks("my_hooks:instance").__class__.__name__ == "Hooks"
    with pytest.raises(ConfigError):
        load_hooks("my_hooks:not_hooks")
    with pytest.raises(ConfigError):
        load_hooks("my_hooks")


def test_main_exit_codes(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "ok"), "--steps", "2", "--checks", "none",
                 "--corpus-chars", "3000"]) == 0  # fmt: skip
    assert "steps 0->2" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "bad"), "--steps", "0"]) == 2
    assert main(["--out", str(tmp_path / "bad"), "--checks", "nonesuch", "--steps", "1"]) == 2


def test_two_rank_torchrun_gloo(tmp_path):
    out = tmp_path / "dist"
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).parents[2] / "src"),
    }
    env.pop("TRAINGUARD_LEDGER", None)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "trainguard.drill.job", "--out", str(out), "--steps", "8",
        "--checks", "none", "--corpus-chars", "6000",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads((out / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    assert results[0]["losses"] != results[1]["losses"]  # each rank trains on its own shard
    lines = _progress(out)
    assert sorted((r["rank"], r["step"]) for r in lines) == [
        (rank, step) for rank in (0, 1) for step in range(1, 9)
    ]


def test_a_slow_rank_sleeps_from_the_step_asked(tmp_path):
    train(JobArgs(out=str(tmp_path), steps=4, sleep_rank=0, sleep_s=0.2, sleep_from=3, **SMALL))
    times = {r["step"]: r["step_s"] for r in _progress(tmp_path)}
    assert times[3] >= 0.2 and times[4] >= 0.2 and times[1] < 0.2


def test_honest_run_under_the_default_guard_raises_nothing(tmp_path):
    args = JobArgs(out=str(tmp_path / "g"), steps=24, every=8, checks="default", threads=1)
    guarded = train(replace(args, ledger=str(tmp_path / "ledger")))
    assert guarded.alerts == ()
    bare = train(replace(args, out=str(tmp_path / "n"), guard=False))
    assert guarded.weights_sha256 == bare.weights_sha256  # watching changes nothing


def test_honest_checkpoint_and_resume_under_the_default_guard_raise_nothing(tmp_path):
    common = {"steps": 12, "every": 4, "checks": "default", "threads": 1, "corpus_chars": 3000}
    full = train(JobArgs(out=str(tmp_path / "f"), checkpoint_every=6, **common))
    resumed = train(JobArgs(out=str(tmp_path / "r"), resume=full.checkpoints[0], **common))
    assert full.alerts == () and resumed.alerts == ()
    assert resumed.weights_sha256 == full.weights_sha256
