"""PEFT LoRA: adapters on a tiny GPT-2 (built from a config) train 6 steps under a
``Guard`` while the base weights stay frozen; the adapter is saved and loaded back onto a
fresh base model, which must then give the trained model's outputs.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel

import trainguard


def base() -> GPT2LMHeadModel:
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
    return GPT2LMHeadModel(config)


def main() -> None:
    torch.set_num_threads(1)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    model = get_peft_model(base(), config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and len(trainable) < len(list(model.parameters()))
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, 64, (24, 8), generator=g)

    guard = trainguard.Guard(model, opt)
    for i in range(6):
        batch = data[i * 4 : (i + 1) * 4]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        guard.step(loss=loss)
    guard.close()

    model.save_pretrained("adapter")
    model.eval()
    reloaded = PeftModel.from_pretrained(base(), "adapter").eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=data).logits, reloaded(input_ids=data).logits)
    print("compat: peft_lora ok")


if __name__ == "__main__":
    main()
