"""Lightning: a tiny LightningModule (AdamW, a per-step StepLR, gradient accumulation and
clipping) trains 6 steps with ``ModelCheckpoint`` writing every 3, then a second
``Trainer`` resumes ``fit(ckpt_path=...)`` from step 3 to step 8. Both are guarded by
``trainguard.integrations.lightning.TrainguardCallback``; the ``.ckpt`` is a pickle that
``protect()`` scans when Lightning loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch

from trainguard.integrations.lightning import TrainguardCallback

SAMPLES = 40  # batch 4, accumulation 2: 5 optimizer steps per epoch


class Tiny(L.LightningModule):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1)
        )

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self) -> Any:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(SAMPLES, 8, generator=g)
        data = torch.utils.data.TensorDataset(x, x.sum(dim=1, keepdim=True))
        return torch.utils.data.DataLoader(data, batch_size=4, shuffle=True)


def trainer(max_steps: int, callbacks: list[Any]) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        accumulate_grad_batches=2,
        gradient_clip_val=1.0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    saver = L.callbacks.ModelCheckpoint(
        dirpath="ckpt", every_n_train_steps=3, save_top_k=-1, filename="{step}"
    )
    first = trainer(6, [TrainguardCallback(), saver])
    first.fit(Tiny())
    assert first.global_step == 6
    ckpt = Path("ckpt") / "step=3.ckpt"
    assert ckpt.is_file()

    torch.manual_seed(1)
    resumed = trainer(8, [TrainguardCallback()])
    resumed.fit(Tiny(), ckpt_path=str(ckpt))
    assert resumed.global_step == 8
    print("compat: lightning_resume ok")


if __name__ == "__main__":
    main()
