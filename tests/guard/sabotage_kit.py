"""The insider red-team kit (issue 13): a small but real GPT training job, the honest
recipes that must stay silent under the guard, and the verdict on an attack.

It exists so that one job, written the way people write training scripts (causal-mask
buffer, Dropout, LayerNorm, a frozen positional embedding, AdamW with decay groups, a
warm-up/cosine ``LambdaLR``, ``clip_grad_norm_``, a shuffled ``DataLoader``), can be
sabotaged at any point of the step by the attacks in ``sabotage_attacks`` /
``sabotage_state`` and judged the same way each time; ``benchmarks/sabotage_matrix.py``
runs every attack in its own process and prints the table.

What it trusts: that an attack runs exactly where it says (before ``Guard()`` or at the
start of its step, or from the ``Job`` callbacks it registered) and only tampers - the
kit never tells the guard what was done. The verdict (``judge``) trusts the guard's own
``alerts`` list: an alert of an expected rule, stamped at or after the injection step and
at most ``every`` steps later, is "caught" (one stamped the step before the injection counts
when the injection came at the start of a step: between steps the guard names the last
completed one); later is "late"; nothing expected is
"missed". Honest recipes must end with no alert at all.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from trainguard.guard import Guard

__all__ = [
    "EVERY",
    "HONEST",
    "STEPS",
    "AlertRecord",
    "Attack",
    "Job",
    "Outcome",
    "Recipe",
    "TinyGPT",
    "all_attacks",
    "judge",
    "train",
]

VOCAB, BLOCK, DIM, HEADS, BATCH, SAMPLES = 32, 16, 64, 4, 8, 48  # 6 batches an epoch
STEPS = 12
EVERY = 4


class Attention(nn.Module):
    """Causal self-attention written out, with its mask as a buffer (as nanoGPT had it)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.proj = nn.Linear(DIM, DIM)
        self.drop = nn.Dropout(0.1)
        self.register_buffer("mask", torch.tril(torch.ones(BLOCK, BLOCK)).view(1, 1, BLOCK, BLOCK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            z.view(b, t, HEADS, d // HEADS).transpose(1, 2) for z in self.qkv(x).split(d, dim=2)
        )
        att = (q @ k.transpose(-2, -1)) / math.sqrt(d // HEADS)
        mask: torch.Tensor = self.mask  # type: ignore[assignment]
        att = att.masked_fill(mask[:, :, :t, :t] == 0, float("-inf"))
        att = self.drop(torch.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).reshape(b, t, d)
        out: torch.Tensor = self.proj(y)
        return out


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(DIM)
        self.attn = Attention()
        self.ln2 = nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(
            nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM), nn.Dropout(0.1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        out: torch.Tensor = x + self.mlp(self.ln2(x))
        return out


class TinyGPT(nn.Module):
    """2 layers, d_model 64; ``pos`` is a frozen (``requires_grad=False``) embedding that
    the optimizer never sees, as in recipes that fix sinusoidal positions."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(BLOCK, DIM) * 0.02, requires_grad=False)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.ln_f = nn.LayerNorm(DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.tok(idx) + self.pos[: idx.shape[1]])
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.head(self.ln_f(x))
        return out


@dataclass(frozen=True)
class Recipe:
    """How the honest job trains; every field is a knob people really turn."""

    name: str = "plain"
    amp: bool = False
    accumulate: int = 1
    adamw: tuple[tuple[str, bool], ...] = ()  # extra AdamW flags: ("foreach", False) ...
    set_to_none: bool = True
    eval_every: int = 0
    reseed_epochs: bool = False
    schedule: str = "lambda"  # lambda | onecycle | sequential
    workers: int = 0
    loader_generator: bool = False
    steps: int = STEPS


HONEST: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(),
        Recipe("amp-bf16", amp=True),
        Recipe("accumulate-4", accumulate=4),
        Recipe("adamw-foreach-off", adamw=(("fused", False), ("foreach", False))),
        Recipe("adamw-foreach-on", adamw=(("foreach", True),)),
        Recipe("zero-grad-keep", set_to_none=False),
        Recipe("eval-no-grad", eval_every=4),
        Recipe("epoch-reseed", reseed_epochs=True),
        Recipe("onecycle", schedule="onecycle"),
        Recipe("sequential-lr", schedule="sequential"),
        Recipe("loader-workers-2", workers=2),
        Recipe("loader-generator", loader_generator=True),
    )
}

Hook = Callable[["Job"], object]


class Job:
    """The live objects of one run (``net`` is ``model`` wrapped in DDP when a process
    group is up, with a ``DistributedSampler``). Attacks reach everything through it and
    may register callbacks: ``at(step, fn)`` before that step's forward,
    ``after_opt(step, fn)`` between ``optimizer.step()`` and ``scheduler.step()``,
    ``on_epoch(fn)`` before each new epoch (not the first) creates its loader iterator."""

    def __init__(self, recipe: Recipe) -> None:
        self.recipe = recipe
        torch.manual_seed(0)
        self.model: Any = TinyGPT()  # Any: attacks reach into its submodules by name
        gen = torch.Generator().manual_seed(1234)
        tokens = torch.randint(0, VOCAB, (SAMPLES, BLOCK + 1), generator=gen)
        self.dataset = torch.utils.data.TensorDataset(tokens[:, :-1].clone(), tokens[:, 1:].clone())
        self.distributed = dist.is_available() and dist.is_initialized()
        self.net: nn.Module = (
            DistributedDataParallel(self.model) if self.distributed else self.model
        )
        self.sampler: DistributedSampler[Any] | None = (
            DistributedSampler(self.dataset, seed=0) if self.distributed else None
        )
        self.loader_gen = torch.Generator().manual_seed(7) if recipe.loader_generator else None
        self.loader: torch.utils.data.DataLoader[Any] = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=BATCH,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=recipe.workers,
            generator=self.loader_gen,
        )
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.opt = torch.optim.AdamW(groups, lr=3e-3, betas=(0.9, 0.95), **dict(recipe.adamw))
        self.sched = _schedule(self.opt, recipe)
        self.reseed: Callable[[int], object] = torch.manual_seed
        self.guard: Guard | None = None
        self.step = 0
        self.epoch = 0
        self.signals: list[int] = []
        self.keep: list[Any] = []  # whatever an attack must keep alive (hook nodes ...)
        self._at: dict[int, list[Hook]] = {}
        self._after_opt: dict[int, list[Hook]] = {}
        self._epoch: list[Hook] = []

    def at(self, step: int, fn: Hook) -> None:
        self._at.setdefault(step, []).append(fn)

    def after_opt(self, step: int, fn: Hook) -> None:
        self._after_opt.setdefault(step, []).append(fn)

    def on_epoch(self, fn: Hook) -> None:
        self._epoch.append(fn)

    def fire_at(self) -> None:
        for fn in self._at.pop(self.step, []):
            fn(self)

    def fire_after_opt(self) -> None:
        for fn in self._after_opt.pop(self.step, []):
            fn(self)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            self.epoch += 1
            if self.epoch > 1:
                for fn in self._epoch:
                    fn(self)
            if self.sampler is not None:
                self.sampler.set_epoch(self.epoch)
            if self.recipe.reseed_epochs:
                self.reseed(self.epoch)
            yield from self.loader

    def trainable(self) -> list[nn.Parameter]:
        return [p for g in self.opt.param_groups for p in g["params"]]


def _schedule(opt: torch.optim.Optimizer, recipe: Recipe) -> Any:
    total = recipe.steps
    if recipe.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=total + 1)
    if recipe.schedule == "sequential":
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.2, total_iters=3)
        cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[3])

    def warmup_cosine(e: int) -> float:
        return min(1.0, (e + 1) / 3) * 0.5 * (1 + math.cos(math.pi * e / total))

    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine)


@dataclass(frozen=True)
class Attack:
    """One sabotage. ``fn(job)`` runs once: before ``Guard()`` when ``before_guard``,
    else at the start of step ``install`` (default ``at``); ``at`` is the step its effect
    starts, the one the verdict counts ``every`` steps from. ``rules`` are the alert ids
    that name it; ``unverified_sender`` also requires the alert to say that the signal's
    sender is not verified."""

    name: str
    cls: str
    rules: tuple[str, ...]
    at: int
    fn: Hook
    before_guard: bool = False
    install: int | None = None  # install at this step, effect judged from ``at``
    recipe: Recipe = field(default_factory=Recipe)
    unverified_sender: bool = False
    watch_early: bool = False  # run it with trainguard's signal watcher started before torch

    def with_recipe(self, **changes: Any) -> Attack:
        return replace(self, recipe=replace(self.recipe, **changes))


@dataclass(frozen=True)
class AlertRecord:
    rule: str
    step: int | None
    where: str
    message: str
    evidence: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    verdict: str  # caught | late | missed | wrong-rule | silent | noisy
    detail: str


def train(
    recipe: Recipe,
    attack: Attack | None = None,
    *,
    script_reseed: Callable[[int], object] | None = None,
) -> list[AlertRecord]:
    """Run the job (``recipe``, plus ``attack`` if any) under a ``Guard`` with default
    checks; return every alert it raised. ``script_reseed(epoch)`` does the recipe's epoch
    reseeding: the guard accepts a reseed only from the entry script's own code, so pass a
    function defined in ``__main__`` (the kit's default, ``torch.manual_seed`` called
    from this module, is a library reseeding)."""
    if attack is not None:
        recipe = attack.recipe
    job = Job(recipe)
    if script_reseed is not None:
        job.reseed = script_reseed
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: job.signals.append(signum))
    if attack is not None and attack.before_guard:
        attack.fn(job)
    elif attack is not None:
        job.at(attack.install or attack.at, attack.fn)
    guard = Guard(job.net, job.opt, scheduler=job.sched, dataloader=job.loader, every=EVERY)
    job.guard = guard
    try:
        _loop(job, guard)
    finally:
        guard.close()
        signal.signal(signal.SIGUSR1, previous)
    return [
        AlertRecord(
            a.rule.value,
            a.step,
            a.finding.location.path,
            a.finding.message,
            dict(a.finding.evidence),
        )
        for a in guard.alerts
    ]


def _loop(job: Job, guard: Guard) -> None:
    recipe, model, opt = job.recipe, job.net, job.opt
    val = torch.randint(0, VOCAB, (4, BLOCK), generator=torch.Generator().manual_seed(99))
    micro = 0
    job.step = 1
    job.fire_at()
    for x, y in job.batches():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.amp):
            logits = model(x)
        loss = F.cross_entropy(logits.float().view(-1, VOCAB), y.view(-1)) / recipe.accumulate
        loss.backward()  # type: ignore[no-untyped-call]
        micro += 1
        if micro % recipe.accumulate:
            guard.step(loss, batch=(x, y))
            continue
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        job.fire_after_opt()
        job.sched.step()
        opt.zero_grad(set_to_none=recipe.set_to_none)
        guard.step(loss, batch=(x, y))
        if recipe.eval_every and job.step % recipe.eval_every == 0:
            model.eval()
            with torch.no_grad():
                model(val)
            model.train()
        if job.step == recipe.steps:
            return
        job.step += 1
        job.fire_at()


def all_attacks() -> list[Attack]:
    """Every single-process attack (the DDP ones live in ``sabotage_ddp``)."""
    import sabotage_attacks
    import sabotage_state

    return [*sabotage_attacks.ATTACKS, *sabotage_state.ATTACKS]


def judge(attack: Attack | None, alerts: list[AlertRecord], every: int = EVERY) -> Outcome:
    """The verdict on one run (``attack`` None: an honest recipe)."""
    if attack is None:
        if not alerts:
            return Outcome("silent", "")
        return Outcome("noisy", "; ".join(f"{a.rule}@{a.step}" for a in alerts))
    # an injection at the start of step k is found stamped k - 1 when it is judged before
    # step k's optimizer step (the guard names the last completed step between steps)
    start = 0 if attack.before_guard else (attack.install or attack.at) - 1
    hits = [a for a in alerts if a.rule in attack.rules and (a.step or 0) >= start]
    if attack.unverified_sender:
        hits = [a for a in hits if _unverified(a)]
    on_time = [a for a in hits if (a.step or 0) <= attack.at + every]
    if on_time:
        return Outcome("caught", ", ".join(sorted({f"{a.rule}@{a.step}" for a in on_time})))
    if hits:
        return Outcome("late", ", ".join(sorted({f"{a.rule}@{a.step}" for a in hits})))
    others = sorted({f"{a.rule}@{a.step}" for a in alerts})
    if others:
        return Outcome("wrong-rule", ", ".join(others))
    return Outcome("missed", "")


def _unverified(alert: AlertRecord) -> bool:
    """The signal alert does not vouch for the sender it names: it says the sender is not
    verified, or unknown."""
    for key, value in alert.evidence.items():
        if "verif" in key.lower() and value in (False, "no", "false", "unverified"):
            return True
    text = alert.message.lower()
    return any(word in text for word in ("not verified", "unverified", "sender unknown"))
