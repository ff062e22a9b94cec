"""Hugging Face ``Trainer``: a tiny GPT-2 built from a config trains 6 steps with a
checkpoint every 2, then a second ``Trainer`` resumes from ``checkpoint-4`` to step 8.

The resume reads the weights, the optimizer and scheduler state, ``rng_state.pth`` and
``training_args.bin`` (pickles ``protect()`` scans) while ``TrainguardCallback`` guards
both runs; the callback finds the ledger through ``trainguard run``'s environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from trainguard.integrations.hf import TrainguardCallback

SAMPLES = 32  # batch 4 x accumulation 2: 4 optimizer steps per epoch
OUT = Path("hf-run")


class Tokens(torch.utils.data.Dataset):  # type: ignore[misc]
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, 64, (SAMPLES, 8), generator=g)

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


def trainer(max_steps: int, callback: TrainguardCallback) -> Trainer:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=64,
        n_positions=16,
        bos_token_id=0,
        eos_token_id=0,
    )
    args = TrainingArguments(
        output_dir=str(OUT),
        max_steps=max_steps,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_grad_norm=1.0,
        learning_rate=1e-3,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    return Trainer(
        model=GPT2LMHeadModel(config), args=args, train_dataset=Tokens(), callbacks=[callback]
    )


def main() -> None:
    torch.set_num_threads(1)
    transformers.utils.logging.set_verbosity_error()

    first = trainer(6, TrainguardCallback())
    first.train()
    assert first.state.global_step == 6
    assert (OUT / "checkpoint-4" / "rng_state.pth").is_file()

    resumed = trainer(8, TrainguardCallback())
    resumed.train(resume_from_checkpoint=str(OUT / "checkpoint-4"))
    assert resumed.state.global_step == 8
    print("compat: hf_trainer_resume ok")


if __name__ == "__main__":
    main()
