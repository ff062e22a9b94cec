"""``trainguard.integrations.hf.TrainguardCallback`` inside a real (tiny) ``Trainer``.

A one-layer GPT-2 built from a config (no download) trains on CPU with gradient
accumulation, clipping and a cosine warm-up schedule, writing a checkpoint every two
steps; two more Trainers resume from a checkpoint in the middle of an epoch and from one
at an epoch boundary (the two places ``Trainer`` restores the RNG state after
``on_train_begin``). With the default checks nothing may be raised. Then the attack: a
callback that runs after ours nudges one weight after step 5, and the guard must name it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from trainguard.errors import GuardStopped  # noqa: E402
from trainguard.findings import Rule, Severity  # noqa: E402
from trainguard.guard import Check, GuardContext, StepInfo  # noqa: E402
from trainguard.integrations.hf import TrainguardCallback  # noqa: E402
from trainguard.ledger import read_records  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

SAMPLES = 32  # batch 4 x accumulation 2: 4 optimizer steps per epoch


@pytest.fixture(autouse=True)
def _quiet_and_single_threaded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TRAINGUARD_LEDGER", raising=False)
    monkeypatch.delenv("TRAINGUARD_RUN_KEY", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core box: threads only contend
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Tokens(torch.utils.data.Dataset):  # type: ignore[misc]
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, 64, (SAMPLES, 8), generator=g)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def _model() -> Any:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    return GPT2LMHeadModel(config)


def _trainer(
    out: Path,
    callbacks: list[Any],
    max_steps: int = 12,
    save: bool = False,
    seed: int = 0,
    **kw: Any,
) -> Any:
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_grad_norm=1.0,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=3,
        logging_steps=1,
        save_steps=2,
        save_strategy="steps" if save else "no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
        **kw,
    )
    return Trainer(model=_model(), args=args, train_dataset=_Tokens(), callbacks=callbacks)


def _alerts(cb: TrainguardCallback) -> list[tuple[str, str, Any]]:
    assert cb.guard is not None
    return [(a.rule.value, a.finding.message, a.finding.evidence) for a in cb.guard.alerts]


def test_honest_run_and_both_resumes_raise_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    first = TrainguardCallback(ledger=ledger)
    _trainer(tmp_path / "run", [first], save=True).train()
    assert first.guard is not None
    assert first.guard.steps == 12
    assert _alerts(first) == []
    assert (tmp_path / "run" / "checkpoint-6" / "rng_state.pth").is_file()

    # checkpoint-6: mid-epoch (skip_first_batches, RNG restored before the first step);
    # checkpoint-8: epoch boundary (RNG restored at the start of the epoch). Each resumes
    # under another ``seed``, so the restore visibly replaces the generator's seed after
    # the guard started: only the adapter's resume window keeps that from an alarm.
    for at in (6, 8):
        again = TrainguardCallback(ledger=ledger)  # the same, existing ledger
        _trainer(tmp_path / "run", [again], seed=at).train(
            resume_from_checkpoint=str(tmp_path / "run" / f"checkpoint-{at}")
        )
        assert torch.initial_seed() == 0  # the checkpoint's generator, not seed=at
        assert again.guard is not None
        assert again.guard.steps == 12 - at
        assert _alerts(again) == []

    records = read_records(ledger)
    assert [r for r in records if r.kind == "alert"] == []
    started = [r for r in records if r.evidence.get("event") == "guard.started"]
    stopped = [r for r in records if r.evidence.get("event") == "guard.stopped"]
    assert len(started) == len(stopped) == 3
    assert [r.evidence["steps"] for r in stopped] == [12, 6, 4]
    resumed = [r for r in records if r.evidence.get("event") == "guard.authorized"]
    assert [r.evidence["reason"] for r in resumed] == [
        "resume from checkpoint at step 6",
        "resume from checkpoint at step 8",
    ]


def test_honest_bf16_autocast_raises_nothing(tmp_path: Path) -> None:
    cb = TrainguardCallback(ledger=False)
    _trainer(tmp_path / "run", [cb], max_steps=5, bf16=True).train()
    assert cb.guard is not None
    assert cb.guard.steps == 5
    assert _alerts(cb) == []


class _Spy(Check):
    """Records what the adapter hands the guard."""

    name = "spy"

    def __init__(self) -> None:
        self.attached: dict[str, Any] = {}
        self.steps: list[StepInfo] = []
        self.authorized_before: list[bool] = []
        self.rebaselines = 0

    def attach(self, ctx: GuardContext) -> None:
        self.attached = {
            "optimizer": ctx.optimizer,
            "scheduler": ctx.scheduler,
            "dataloader": ctx.dataloader,
            "model": ctx.model,
        }

    def before_step(self, ctx: GuardContext) -> None:
        self.authorized_before.append(ctx.is_authorized)

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        self.steps.append(info)

    def rebaseline(self, ctx: GuardContext) -> None:
        self.rebaselines += 1


def test_adapter_hands_the_guard_the_real_objects(tmp_path: Path) -> None:
    spy = _Spy()
    cb = TrainguardCallback(ledger=False, checks=[spy])
    trainer = _trainer(tmp_path / "run", [cb], max_steps=6, save=True)
    trainer.train()

    # accelerate's wrappers are peeled off: the guard hooks the torch optimizer itself
    assert type(spy.attached["optimizer"]) is torch.optim.AdamW
    assert spy.attached["optimizer"] is trainer.optimizer.optimizer
    assert isinstance(spy.attached["scheduler"], torch.optim.lr_scheduler.LRScheduler)
    assert spy.attached["scheduler"] is getattr(
        trainer.lr_scheduler, "scheduler", trainer.lr_scheduler
    )
    assert spy.attached["model"] is trainer.model
    assert spy.attached["dataloader"] is not None

    # one guard.step per optimizer step (not per micro-batch), each after a real step
    assert len(spy.steps) == 6
    assert all(s.optimizer_stepped for s in spy.steps)
    # the logged loss of step t reaches the guard with step t+1
    assert spy.steps[0].loss is None
    assert all(s.loss is not None and s.loss > 0 for s in spy.steps[1:])
    assert spy.authorized_before == [False] * 6
    assert spy.rebaselines == 0

    # resumed: the restore window is authorized, then closed before the first step
    spy2 = _Spy()
    cb2 = TrainguardCallback(ledger=False, checks=[spy2])
    _trainer(tmp_path / "run", [cb2], max_steps=6).train(
        resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4")
    )
    assert len(spy2.steps) == 2
    assert spy2.authorized_before == [False, False]
    assert spy2.rebaselines == 1


class _Reseed(TrainerCallback):  # type: ignore[misc]
    """An attacker right behind the resume: reseeds in the first ``on_step_begin``."""

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == 4:
            torch.manual_seed(1234)


def test_resume_window_closes_before_the_first_step(tmp_path: Path) -> None:
    _trainer(tmp_path / "run", [], max_steps=4, save=True).train()
    cb = TrainguardCallback(ledger=False)
    _trainer(tmp_path / "run", [cb, _Reseed()], max_steps=6).train(
        resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4")
    )
    assert cb.guard is not None
    reseeds = [a for a in cb.guard.alerts if a.rule is Rule.RNG_RESEED]
    assert reseeds, _alerts(cb)
    assert reseeds[0].step == 5  # numbered as the trainer does: global step 5 (resumed at 4)


class _Nudge(TrainerCallback):  # type: ignore[misc]
    """The attack: after optimizer step 5, add 1e-3 to one weight behind the optimizer."""

    def __init__(self, at: int = 5) -> None:
        self.at = at
        self.done = False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.at and not self.done:
            self.done = True
            with torch.no_grad():
                kwargs["model"].transformer.h[0].mlp.c_fc.weight.data.add_(1e-3)


def test_weight_nudge_after_step_5_is_caught_at_step_6(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    cb = TrainguardCallback(ledger=ledger)
    nudge = _Nudge()
    _trainer(tmp_path / "run", [cb, nudge], max_steps=8).train()
    assert nudge.done
    assert cb.guard is not None
    tamper = [a for a in cb.guard.alerts if a.rule is Rule.WEIGHT_TAMPER]
    assert tamper, _alerts(cb)
    assert tamper[0].step == 6
    assert tamper[0].severity >= Severity.HIGH
    assert "transformer.h.0.mlp.c_fc.weight" in str(tamper[0].finding.location)
    assert read_records(ledger, alert=Rule.WEIGHT_TAMPER)


def test_stop_on_propagates_out_of_train(tmp_path: Path) -> None:
    cb = TrainguardCallback(ledger=False, stop_on="high")
    with pytest.raises(GuardStopped) as stopped:
        _trainer(tmp_path / "run", [cb, _Nudge()], max_steps=8).train()
    assert stopped.value.alert is not None
    assert stopped.value.alert.rule is Rule.WEIGHT_TAMPER
    assert stopped.value.alert.step == 6
    cb.close()  # raised from inside optimizer.step(): on_train_end never ran
    cb.close()  # idempotent


class _Alarm(Check):
    name = "alarm"

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        if ctx.current_step == 3:
            ctx.emit(Rule.OPTIMIZER_TAMPER, Severity.HIGH, "test alarm", where="t")


def test_stop_from_step_end_closes_the_guard(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    cb = TrainguardCallback(ledger=ledger, stop_on=Severity.HIGH, checks=[_Alarm()])
    trainer = _trainer(tmp_path / "run", [cb], max_steps=8)
    with pytest.raises(GuardStopped):
        trainer.train()
    assert trainer.state.global_step == 3
    events = [r.evidence.get("event") for r in read_records(ledger)]
    assert events[-1] == "guard.stopped"  # closed (hooks removed, ledger closed) on the way out


def test_importing_the_package_imports_no_framework() -> None:
    code = (
        "import sys, trainguard.integrations; "
        "bad = {'transformers', 'lightning', 'pytorch_lightning', 'torch'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
