"""``TinyGPT``: a small GPT-style decoder, the model every drill attack is aimed at.

It is deliberately ordinary (token and position embeddings, pre-LN blocks of causal
self-attention and a GELU MLP, a final LayerNorm, a head tied to the token embedding by
default) so that what the guard sees is what it would see in a real job: two parameter
groups, 2-D and 1-D parameters, fused attention, a shared parameter.

Initialisation draws only from its own ``torch.Generator``: the same seed gives the same
weights on every rank and in every run, and building a model neither reads nor moves the
global RNG (which the guard's seed check watches).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GPTConfig", "TinyGPT", "weights_digest"]


@dataclass(frozen=True, slots=True)
class GPTConfig:
    """Shape of a ``TinyGPT``. ``block`` is the context length; ``tied`` shares the head
    with the token embedding (GPT-2 style)."""

    vocab: int
    block: int
    layers: int
    heads: int
    dim: int
    dropout: float = 0.0
    tied: bool = True

    def __post_init__(self) -> None:
        for name in ("vocab", "block", "layers", "heads", "dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def tiny(cls) -> GPTConfig:
        """About 0.12M parameters: a step at batch 8 x 64 takes milliseconds on 2 CPU
        cores, so a drill of a dozen attacks runs in seconds."""
        return cls(vocab=256, block=64, layers=2, heads=4, dim=64)

    @classmethod
    def bench25m(cls) -> GPTConfig:
        """About 27M parameters (GPT-2-small shaped, narrower): the model whose step time
        the guard's overhead is measured against."""
        return cls(vocab=4096, block=256, layers=8, heads=8, dim=512)

    @classmethod
    def preset(cls, name: str) -> GPTConfig:
        presets = {"tiny": cls.tiny, "bench25m": cls.bench25m}
        if name not in presets:
            raise ValueError(f"unknown model preset {name!r}; choose from {sorted(presets)}")
        return presets[name]()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class _Attention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.heads = config.heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        self.resid_drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
        )
        y = y.transpose(1, 2).contiguous().view(b, t, d)
        out: torch.Tensor = self.resid_drop(self.proj(y))
        return out


class _MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.dim, 4 * config.dim)
        self.proj = nn.Linear(4 * config.dim, config.dim)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.drop(self.proj(F.gelu(self.fc(x))))
        return out


class _Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(config.dim)
        self.attn = _Attention(config)
        self.ln2 = nn.LayerNorm(config.dim)
        self.mlp = _MLP(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class TinyGPT(nn.Module):
    """A decoder-only transformer language model.

    ``forward(idx, targets=None)`` returns ``(logits, loss)``; ``loss`` is the mean
    cross-entropy over all positions when ``targets`` is given, else ``None``.
    """

    def __init__(self, config: GPTConfig, *, seed: int = 0, device: Any = None) -> None:
        super().__init__()
        self.config = config
        # Built on the meta device, then materialised and filled from our own generator:
        # no default initialiser runs, so the global RNG is neither read nor advanced.
        with torch.device("meta"):
            self.wte = nn.Embedding(config.vocab, config.dim)
            self.wpe = nn.Embedding(config.block, config.dim)
            self.drop = nn.Dropout(config.dropout)
            self.blocks = nn.ModuleList(_Block(config) for _ in range(config.layers))
            self.ln_f = nn.LayerNorm(config.dim)
            self.head = None if config.tied else nn.Linear(config.dim, config.vocab, bias=False)
        self.to_empty(device=device if device is not None else "cpu")
        self.reset_parameters(seed)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """GPT-2 initialisation from ``seed``: N(0, 0.02) weights, N(0, 0.02/sqrt(2L))
        for the projections into the residual stream, zero biases, unit LayerNorms."""
        gen = torch.Generator(device=self.wte.weight.device)
        gen.manual_seed(seed)
        resid_std = 0.02 / math.sqrt(2 * self.config.layers)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif ".ln" in name or name.startswith("ln_f"):
                p.fill_(1.0)
            else:
                std = resid_std if name.endswith("proj.weight") else 0.02
                p.normal_(0.0, std, generator=gen)

    def num_parameters(self) -> int:
        """Distinct trainable elements (a tied head is counted once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        t = idx.shape[1]
        if t > self.config.block:
            raise ValueError(f"sequence of {t} tokens exceeds the block size {self.config.block}")
        pos = torch.arange(t, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        x = self.ln_f(x)
        weight = self.wte.weight if self.head is None else self.head.weight
        logits = F.linear(x, weight)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """AdamW groups as GPT recipes use them: decay matrices and embeddings, not
        biases or LayerNorm gains."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        rest = [p for p in self.parameters() if p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": rest, "weight_decay": 0.0},
        ]


def weights_digest(model: nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes and exact bytes), for comparing
    weights across runs and ranks without shipping them around."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(_raw_bytes(t))
    return h.hexdigest()


def _raw_bytes(t: torch.Tensor) -> bytes:
    """A CPU tensor's bytes; through numpy when it is installed (torch does not need it)."""
    flat = t.reshape(-1).view(torch.uint8)
    try:
        return bytes(flat.numpy().tobytes())
    except (RuntimeError, ImportError):  # "Numpy is not available"
        chunk = 1 << 20
        parts = (bytes(flat[i : i + chunk].tolist()) for i in range(0, len(flat), chunk))
        return b"".join(parts)
