"""``trainguard.integrations.lightning.TrainguardCallback`` inside a real Lightning ``Trainer``.

A tiny LightningModule (AdamW, a StepLR, dropout) trains on CPU with gradient
accumulation (2) and gradient clipping, over an epoch boundary. With the default checks
nothing may be raised, per-step or per-epoch scheduler, fresh or resumed from a
checkpoint. The attack: a callback multiplies the learning rate by 1.01 at step 4;
``stop_on="high"`` must stop ``fit()`` with ``runtime.optimizer_tamper``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
L = pytest.importorskip("lightning.pytorch")

from trainguard.errors import GuardStopped  # noqa: E402
from trainguard.findings import Rule, Severity  # noqa: E402
from trainguard.guard import Check, GuardContext, StepInfo  # noqa: E402
from trainguard.integrations.lightning import TrainguardCallback  # noqa: E402
from trainguard.ledger import read_records  # noqa: E402

SAMPLES = 40  # batch 4, accumulation 2: 5 optimizer steps per epoch


@pytest.fixture(autouse=True)
def _quiet_and_single_threaded(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TRAINGUARD_LEDGER", raising=False)
    monkeypatch.delenv("TRAINGUARD_RUN_KEY", raising=False)
    monkeypatch.setenv("PL_DISABLE_FORK", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model on a shared 2-core box: threads only contend
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class _Tiny(L.LightningModule):  # type: ignore[misc]
    def __init__(self, interval: str = "epoch") -> None:
        super().__init__()
        self.interval = interval
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": self.interval}}

    def train_dataloader(self) -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(SAMPLES, 8, generator=g)
        y = x.sum(dim=1, keepdim=True)
        data = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)


def _trainer(callbacks: list[Any], max_steps: int = 10, module: Any = L, **kw: Any) -> Any:
    settings: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": max_steps,
        "accumulate_grad_batches": 2,
        "gradient_clip_val": 1.0,
        "enable_checkpointing": False,
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "callbacks": callbacks,
    }
    return module.Trainer(**{**settings, **kw})


def _fit(cb: Any, interval: str = "epoch", **kw: Any) -> Any:
    torch.manual_seed(0)
    model = _Tiny(interval)
    trainer = _trainer([cb], **kw)
    trainer.fit(model)
    return trainer, model


def _alerts(cb: TrainguardCallback) -> list[tuple[str, str, Any]]:
    assert cb.guard is not None
    return [(a.rule.value, a.finding.message, a.finding.evidence) for a in cb.guard.alerts]


@pytest.mark.parametrize(
    ("interval", "precision"), [("epoch", "32-true"), ("step", "32-true"), ("step", "bf16-mixed")]
)
def test_honest_fit_raises_nothing(tmp_path: Path, interval: str, precision: str) -> None:
    ledger = tmp_path / "ledger"
    cb = TrainguardCallback(ledger=ledger)
    trainer, _ = _fit(cb, interval, precision=precision)
    assert trainer.global_step == 10
    assert cb.guard is not None
    assert cb.guard.steps == 10
    assert _alerts(cb) == []
    records = read_records(ledger)
    assert [r for r in records if r.kind == "alert"] == []
    assert records[-1].evidence.get("event") == "guard.stopped"


def test_honest_resume_from_checkpoint_raises_nothing(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    first = TrainguardCallback(ledger=ledger)
    # checkpoints written while the guard watches (steps 3 and 6), not after it closed
    saver = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    torch.manual_seed(0)
    trainer = _trainer([first, saver], max_steps=6, enable_checkpointing=True)
    trainer.fit(_Tiny("step"))
    assert _alerts(first) == []
    ckpt = tmp_path / "ckpt" / "step=3.ckpt"
    assert ckpt.is_file()

    again = TrainguardCallback(ledger=ledger)  # the same, existing ledger
    torch.manual_seed(1)
    resumed = _trainer([again], max_steps=10)
    resumed.fit(_Tiny("step"), ckpt_path=str(ckpt))
    assert resumed.global_step == 10
    assert again.guard is not None
    assert again.guard.steps == 7
    assert _alerts(again) == []
    assert [r for r in read_records(ledger) if r.kind == "alert"] == []


class _Spy(Check):
    """Records what the adapter hands the guard."""

    name = "spy"

    def __init__(self) -> None:
        self.attached: dict[str, Any] = {}
        self.steps: list[StepInfo] = []

    def attach(self, ctx: GuardContext) -> None:
        self.attached = {
            "optimizer": ctx.optimizer,
            "scheduler": ctx.scheduler,
            "dataloader": ctx.dataloader,
            "model": ctx.model,
        }

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        self.steps.append(info)


def test_one_guard_step_per_optimizer_step_with_the_mean_loss(tmp_path: Path) -> None:
    losses: list[float] = []

    class _Losses(L.Callback):  # type: ignore[misc]
        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, *a: Any) -> None:
            losses.append(float(outputs["loss"]))

    spy = _Spy()
    cb = TrainguardCallback(ledger=False, checks=[spy])
    torch.manual_seed(0)
    model = _Tiny("step")
    trainer = _trainer([cb, _Losses()])
    trainer.fit(model)

    assert type(spy.attached["optimizer"]) is torch.optim.AdamW
    assert spy.attached["optimizer"] is trainer.optimizers[0]
    assert isinstance(spy.attached["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert spy.attached["model"] is model
    assert isinstance(spy.attached["dataloader"], torch.utils.data.DataLoader)

    assert len(losses) == 20  # 20 micro-batches ...
    assert len(spy.steps) == 10  # ... 10 optimizer steps, each seen once
    assert all(s.optimizer_stepped for s in spy.steps)
    # outputs["loss"] is divided by accumulate_grad_batches: a step's loss is the sum
    want = [losses[i] + losses[i + 1] for i in range(0, 20, 2)]
    got = [s.loss for s in spy.steps]
    assert got == pytest.approx(want, rel=1e-6)


class _LrNudge(L.Callback):  # type: ignore[misc]
    """The attack: at optimizer step 4 raise the learning rate by 1% behind the scheduler."""

    def __init__(self) -> None:
        self.done = False

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if trainer.global_step == 4 and not self.done:
            self.done = True
            trainer.optimizers[0].param_groups[0]["lr"] *= 1.01


def test_lr_nudge_stops_fit_with_optimizer_tamper(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    cb = TrainguardCallback(ledger=ledger, stop_on="high")
    nudge = _LrNudge()
    torch.manual_seed(0)
    trainer = _trainer([cb, nudge])
    with pytest.raises(GuardStopped) as stopped:
        trainer.fit(_Tiny("epoch"))
    assert nudge.done
    alert = stopped.value.alert
    assert alert is not None
    assert alert.rule is Rule.OPTIMIZER_TAMPER, _alerts(cb)
    assert alert.severity >= Severity.HIGH
    assert alert.step == 5  # changed before step 5 (global_step 4), caught as it starts
    assert trainer.global_step == 4  # the tampered step never ran
    assert read_records(ledger, alert=Rule.OPTIMIZER_TAMPER)
    # on_exception closed the guard: hooks removed, ledger closed
    assert read_records(ledger)[-1].evidence.get("event") == "guard.stopped"


def test_works_in_a_pytorch_lightning_trainer(tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning")

    class _PLTiny(pl.LightningModule):  # type: ignore[misc]
        training_step = _Tiny.training_step
        configure_optimizers = _Tiny.configure_optimizers
        train_dataloader = _Tiny.train_dataloader

        def __init__(self) -> None:
            super().__init__()
            self.interval = "step"
            self.net = torch.nn.Sequential(torch.nn.Linear(8, 1))

    spy = _Spy()
    cb = TrainguardCallback(ledger=False, checks=[spy])
    trainer = _trainer([cb], max_steps=4, module=pl)
    trainer.fit(_PLTiny())
    assert len(spy.steps) == 4
    assert spy.attached["optimizer"] is trainer.optimizers[0]
