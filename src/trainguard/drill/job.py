"""The drill's training job: an ordinary, guarded language-model training script.

``python -m trainguard.drill.job --steps 60 --out runs/a`` trains ``TinyGPT`` on the
generated corpus with AdamW, a linear warm-up into a cosine decay and gradient clipping,
under ``trainguard.guard.Guard``. It runs alone or under ``torchrun`` (gloo, one
``DistributedSampler`` shard and a ``DistributedDataParallel`` replica per rank), logs a
``progress.jsonl`` line per rank and step, saves (signed, recorded) checkpoints, and
resumes from them through ``trainguard.load`` after verifying them.

It holds no attack code: it is the victim. The drill attacks it from outside (editing
files, signals) or through ``JobHooks``, the points a real job gives a library (a loss
callback, a data transform, a checkpoint hook): passed to ``train`` in-process, or named
by ``$TRAINGUARD_DRILL_HOOKS=module:attr`` for a job started as a process. The one
disturbance built in is ``--sleep-rank/--sleep-s``, a slow node, because a straggler
needs no code to simulate.

``train(JobArgs) -> JobResult`` is the whole job, so tests and the drill run it in-process;
``main(argv)`` parses flags into ``JobArgs``.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    SequentialLR,
)
from torch.utils.data import DataLoader

from trainguard.drill.data import BlockDataset, EpochBatches, make_loader
from trainguard.drill.model import GPTConfig, TinyGPT, weights_digest
from trainguard.errors import ConfigError, IntegrityError, TrainguardError
from trainguard.findings import Alert, Finding, Rule
from trainguard.ledger.sink import open_ledger

__all__ = [
    "CHECKPOINT_FORMAT",
    "HOOKS_ENV",
    "SIGNING_KEY_ENV",
    "VERIFY_KEY_ENV",
    "JobArgs",
    "JobHooks",
    "JobResult",
    "JobState",
    "load_hooks",
    "lr_lambda",
    "main",
    "make_scheduler",
    "parse_args",
    "train",
]

HOOKS_ENV = "TRAINGUARD_DRILL_HOOKS"
"""``module:attr`` of a ``JobHooks`` (class, factory or instance) for a job run as a process."""
SIGNING_KEY_ENV = "TRAINGUARD_SIGNING_KEY"
"""PEM of the P-256 private key that signs checkpoints (and, by its public half, verifies
them on resume)."""
VERIFY_KEY_ENV = "TRAINGUARD_VERIFY_KEY"
"""PEM of a public key to verify a checkpoint against on resume, when no signing key is set."""
CHECKPOINT_FORMAT = "trainguard-drill/1"


@dataclass(frozen=True, slots=True)
class JobArgs:
    """Everything the job does, as data (the flags of ``main`` map one to one).

    ``steps`` is the total number of optimizer steps, counted from the start of training
    also when resuming. ``warmup`` defaults to a tenth of ``steps``. ``schedule`` is
    ``"lambda"`` (``LambdaLR`` over a warm-up/cosine formula) or ``"sequential"``
    (``SequentialLR`` of ``LinearLR`` then ``CosineAnnealingLR``). ``checks`` is
    ``"default"`` (the guard's own set), ``"none"`` (a guard with no checks) or a
    comma-separated list of check names. ``ledger`` defaults to ``$TRAINGUARD_LEDGER``.
    """

    out: str
    steps: int = 60
    seed: int = 0
    model: str = "tiny"
    batch: int = 8
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup: int | None = None
    weight_decay: float = 0.1
    clip: float = 1.0
    schedule: str = "lambda"
    data_seed: int = 0
    corpus_chars: int = 65536
    guard: bool = True
    checks: str = "default"
    every: int = 16
    stop_on: str | None = None
    ledger: str | None = None
    checkpoint_every: int = 0
    resume: str | None = None
    sleep_rank: int | None = None
    sleep_s: float = 0.0
    sleep_from: int = 1
    threads: int | None = None


@dataclass(frozen=True, slots=True)
class JobResult:
    """What one rank did. ``losses`` are this rank's, for the steps it ran
    (``start_step + 1 .. steps``); ``weights_sha256`` is ``weights_digest`` of the final
    model, equal on every rank of an honest distributed run."""

    rank: int
    world_size: int
    start_step: int
    steps: int
    losses: tuple[float, ...]
    weights_sha256: str
    parameters: int
    seconds: float
    step_seconds: float
    checkpoints: tuple[str, ...] = ()
    alerts: tuple[Alert, ...] = ()
    out: str = ""

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["losses"] = list(self.losses)
        data["checkpoints"] = list(self.checkpoints)
        data["alerts"] = [a.to_json() for a in self.alerts]
        return data


@dataclass(slots=True)
class JobState:
    """The live objects of a running job, as hooks see them (``model`` is the bare
    ``TinyGPT``; ``ddp`` the ``DistributedDataParallel`` wrapper when there is one)."""

    args: JobArgs
    rank: int
    world_size: int
    model: TinyGPT
    optimizer: torch.optim.Optimizer
    scheduler: LRScheduler
    loader: DataLoader[Any]
    guard: Any = None
    ddp: DistributedDataParallel | None = None
    step: int = 0
    epoch: int = 0
    out: Path = field(default_factory=Path)


class JobHooks:
    """The job's extension points; every method is a no-op here. Subclass and override.

    ``on_start`` runs once the guard is attached (and a checkpoint resumed), before the
    first step; ``on_batch`` may return a different batch; ``before_step`` runs after
    backward and clipping, right before ``optimizer.step()``; ``after_step`` after the
    step is complete (scheduler stepped, guard told, progress written, checkpoint saved);
    ``on_checkpoint`` after each save; ``on_end`` before the guard closes.
    ``state.step`` counts completed steps: it is ``n - 1`` in ``on_batch`` and
    ``before_step`` of step ``n``, and ``n`` from then on.
    """

    def on_start(self, state: JobState) -> None:
        return None

    def on_batch(
        self, state: JobState, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def before_step(self, state: JobState) -> None:
        return None

    def after_step(self, state: JobState) -> None:
        return None

    def on_checkpoint(self, state: JobState, path: Path) -> None:
        return None

    def on_end(self, state: JobState) -> None:
        return None


# -- building blocks ---------------------------------------------------------------------


def lr_lambda(warmup: int, total: int, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the base LR after ``n`` scheduler steps: linear warm-up over
    ``warmup`` steps, then half a cosine down to ``min_ratio`` at ``total``."""

    def factor(n: int) -> float:
        if n < warmup:
            return (n + 1) / warmup
        progress = min(1.0, (n - warmup) / max(1, total - warmup))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_scheduler(optimizer: torch.optim.Optimizer, args: JobArgs) -> LRScheduler:
    warmup = _warmup(args)
    if args.schedule == "lambda":
        return LambdaLR(optimizer, lr_lambda(warmup, args.steps, args.min_lr_ratio))
    if args.schedule == "sequential":
        return SequentialLR(
            optimizer,
            [
                LinearLR(optimizer, start_factor=1.0 / warmup, total_iters=warmup),
                CosineAnnealingLR(
                    optimizer,
                    T_max=max(1, args.steps - warmup),
                    eta_min=args.lr * args.min_lr_ratio,
                ),
            ],
            milestones=[warmup],
        )
    raise ConfigError(f"unknown schedule {args.schedule!r}: use 'lambda' or 'sequential'")


def _warmup(args: JobArgs) -> int:
    return max(1, args.warmup if args.warmup is not None else args.steps // 10)


def _checks(args: JobArgs) -> list[Any] | None:
    if args.checks == "default":
        return None
    if args.checks == "none":
        return []
    from trainguard.guard.checks import default_checks

    wanted = {n.strip() for n in args.checks.split(",") if n.strip()}
    checks = [c for c in default_checks() if c.name in wanted]
    unknown = wanted - {c.name for c in checks}
    if unknown:
        raise ConfigError(f"unknown guard checks: {', '.join(sorted(unknown))}")
    return checks


_HOOK_METHODS = ("on_start", "on_batch", "before_step", "after_step", "on_checkpoint", "on_end")


def load_hooks(spec: str) -> JobHooks:
    """Resolve ``module:attr`` to hooks: a ``JobHooks`` instance, or a class or factory
    called with no arguments."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"{HOOKS_ENV} must be 'module:attr', got {spec!r}")
    obj = getattr(importlib.import_module(module), attr)
    hooks = obj() if isinstance(obj, type) or not hasattr(obj, "on_batch") else obj
    # by its methods, not isinstance: under `python -m` this module is __main__, and the
    # hooks' module imported trainguard.drill.job's JobHooks, a different class object
    if not all(callable(getattr(hooks, m, None)) for m in _HOOK_METHODS):
        raise ConfigError(f"{spec} is not a JobHooks")
    return hooks  # type: ignore[no-any-return]


class _Progress:
    """``progress.jsonl``: one line per rank and step. Each line is a single ``write`` to
    an ``O_APPEND`` descriptor, so the ranks' lines never interleave."""

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


# -- checkpoints ---------------------------------------------------------------------------


def _signing_key() -> str | None:
    return os.environ.get(SIGNING_KEY_ENV) or None


def _save_checkpoint(state: JobState, batches: EpochBatches, ledger: Any) -> Path:
    """Everything an exact resume needs, in one file. Through ``checkpoints.save`` (signed
    with ``$TRAINGUARD_SIGNING_KEY``, recorded in the ledger) when either is configured,
    plain ``torch.save`` otherwise, as an unguarded job would."""
    path = state.out / "checkpoints" / f"step-{state.step:06d}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "format": CHECKPOINT_FORMAT,
        "step": state.step,
        "config": state.model.config.to_json(),
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "data": batches.state(),
        "rng": torch.get_rng_state(),
    }
    key = _signing_key()
    if key is None and ledger is None:
        torch.save(obj, path)
    else:
        from trainguard import checkpoints

        checkpoints.save(obj, path, private_key=key, ledger=ledger)
    return path


def _verify_checkpoint(path: Path, ledger_path: str | None) -> list[Finding]:
    """Findings against a checkpoint about to be resumed: its signature (when a key is
    configured) and the last state the ledger recorded for it (when there is one)."""
    from trainguard import checkpoints, keys
    from trainguard.errors import VerificationError
    from trainguard.findings import Location, Severity

    findings: list[Finding] = []
    public: Any = os.environ.get(VERIFY_KEY_ENV) or None
    private = _signing_key()
    if public is None and private is not None:
        public = keys.load_ecdsa_private_key(private).public_key()
    if public is not None:
        try:
            findings.extend(checkpoints.verify(path, public).findings)
        except VerificationError as exc:
            findings.append(
                Finding(
                    Rule.CHECKPOINT_MODIFIED,
                    Severity.HIGH,
                    f"signature does not verify: {exc}",
                    Location(str(path)),
                    {},
                )
            )
    if ledger_path:
        mine = str(path.absolute())
        recorded = checkpoints.verify_recorded(ledger_path)
        findings.extend(f for f in recorded.findings if f.location.path == mine)
    return findings


def _resume(state: JobState, batches: EpochBatches, path: Path, ledger_path: str | None) -> None:
    import trainguard

    findings = _verify_checkpoint(path, ledger_path)
    if findings:
        if state.guard is not None:
            for f in findings:
                state.guard.emit(
                    f.rule, f.severity, f.message, where=str(f.location), evidence=f.evidence
                )
        raise IntegrityError(
            f"refusing to resume from {path}: "
            + "; ".join(f"{f.rule.value}: {f.message}" for f in findings)
        )
    ckpt = trainguard.load(path, map_location="cpu")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not a drill checkpoint")
    if ckpt["config"] != state.model.config.to_json():
        raise ConfigError(f"{path} was saved for another model: {ckpt['config']}")
    state.model.load_state_dict(ckpt["model"])
    state.optimizer.load_state_dict(ckpt["optimizer"])
    state.scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"])
    state.step = int(ckpt["step"])
    data = ckpt["data"]
    if data["epoch"] != state.step // batches.per_epoch:
        raise ConfigError(f"{path} was saved with another batch size or corpus")
    batches.seek(state.step, data["generator"])


# -- the job --------------------------------------------------------------------------------


def _init_distributed() -> tuple[int, int, bool]:
    """``(rank, world_size, we_initialised)``: gloo when launched by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world > 1:
        dist.init_process_group("gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def train(args: JobArgs, hooks: JobHooks | None = None) -> JobResult:
    """Run the job described by ``args`` in this process (one rank of it under torchrun).

    Raises ``trainguard.errors.GuardStopped`` when the guard stops the job (``stop_on``),
    ``IntegrityError`` when a checkpoint to resume fails verification and ``ConfigError``
    for bad arguments.
    """
    if args.steps < 1:
        raise ConfigError(f"steps must be positive, got {args.steps}")
    hooks = hooks or JobHooks()
    started = time.perf_counter()
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _train(args, hooks, started)
    finally:
        torch.set_num_threads(threads)


def _train(args: JobArgs, hooks: JobHooks, started: float) -> JobResult:
    try:
        config = GPTConfig.preset(args.model)
        dataset = BlockDataset.generated(config.block, chars=args.corpus_chars, seed=args.data_seed)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rank, world, own_group = _init_distributed()
    try:
        return _run(args, hooks, started, config, dataset, out, rank, world)
    finally:
        if own_group:
            dist.destroy_process_group()


def _run(
    args: JobArgs,
    hooks: JobHooks,
    started: float,
    config: GPTConfig,
    dataset: BlockDataset,
    out: Path,
    rank: int,
    world: int,
) -> JobResult:
    try:
        loader = make_loader(dataset, args.batch, seed=args.seed, rank=rank, world_size=world)
        batches = EpochBatches(loader)
    except ValueError as exc:
        raise ConfigError(f"{exc}: raise corpus_chars") from None
    torch.manual_seed(args.seed)
    model = TinyGPT(config, seed=args.seed)
    ddp = DistributedDataParallel(model) if world > 1 else None
    optimizer = torch.optim.AdamW(
        model.param_groups(args.weight_decay), lr=args.lr, betas=(0.9, 0.95), eps=1e-8
    )
    scheduler = make_scheduler(optimizer, args)
    state = JobState(args, rank, world, model, optimizer, scheduler, loader, ddp=ddp, out=out)
    ledger, _ = open_ledger(args.ledger or None, rank)
    ledger_path = str(ledger.path) if ledger is not None else None
    progress = _Progress(out / "progress.jsonl")
    saved: list[str] = []
    start_step = 0
    losses: list[float] = []
    times: list[float] = []
    try:
        if args.guard:
            from trainguard.guard import Guard

            state.guard = Guard(
                model,
                optimizer,
                scheduler=scheduler,
                dataloader=loader,
                ledger=ledger if ledger is not None else False,
                every=args.every,
                seed=args.seed,
                stop_on=args.stop_on,
                checks=_checks(args),
            )
        if args.resume:
            authorized = (
                state.guard.authorized("resume") if state.guard else contextlib.nullcontext()
            )
            with authorized:
                _resume(state, batches, Path(args.resume), ledger_path)
        else:
            batches.seek(0)
        start_step = state.step
        forward = ddp if ddp is not None else model
        hooks.on_start(state)
        while state.step < args.steps:
            t0 = time.perf_counter()
            step = state.step + 1
            x, y = hooks.on_batch(state, *batches.next())
            if args.sleep_rank == rank and step >= args.sleep_from and args.sleep_s > 0:
                time.sleep(args.sleep_s)
            optimizer.zero_grad(set_to_none=True)
            _, loss = forward(x, y)
            assert loss is not None
            loss.backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            hooks.before_step(state)
            optimizer.step()
            scheduler.step()
            state.step, state.epoch = step, batches.epoch
            value = float(loss.detach())
            if state.guard is not None:
                state.guard.step(loss=loss.detach(), batch=(x, y))
            dt = time.perf_counter() - t0
            losses.append(value)
            times.append(dt)
            progress.write(
                {"rank": rank, "step": step, "loss": value, "time": time.time(), "step_s": dt}
            )
            if args.checkpoint_every and step % args.checkpoint_every == 0 and rank == 0:
                path = _save_checkpoint(state, batches, ledger)
                saved.append(str(path))
                hooks.on_checkpoint(state, path)
            hooks.after_step(state)
        hooks.on_end(state)
    finally:
        if state.guard is not None:
            state.guard.close()
        if ledger is not None:
            ledger.close()
        progress.close()
    result = JobResult(
        rank=rank,
        world_size=world,
        start_step=start_step,
        steps=state.step,
        losses=tuple(losses),
        weights_sha256=weights_digest(model),
        parameters=model.num_parameters(),
        seconds=time.perf_counter() - started,
        step_seconds=statistics.median(times) if times else 0.0,
        checkpoints=tuple(saved),
        alerts=tuple(state.guard.alerts) if state.guard is not None else (),
        out=str(out),
    )
    (out / f"result-rank{rank}.json").write_text(
        json.dumps(result.to_json(), indent=1, default=str) + "\n"
    )
    return result


# -- command line ---------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m trainguard.drill.job",
        description="Train TinyGPT on generated text under the trainguard runtime guard.",
    )
    d = JobArgs(out="")
    p.add_argument("--out", required=True, help="folder for progress.jsonl, results, checkpoints")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimizer steps")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--model", default=d.model, choices=["tiny", "bench25m"])
    p.add_argument("--batch", type=int, default=d.batch, help="per-rank batch size")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default steps/10)")
    p.add_argument("--schedule", default=d.schedule, choices=["lambda", "sequential"])
    p.add_argument("--corpus-chars", type=int, default=d.corpus_chars)
    p.add_argument("--every", type=int, default=d.every, help="period of scheduled checks")
    p.add_argument("--checks", default=d.checks, help="'default', 'none' or names, comma-separated")
    p.add_argument("--stop-on", default=None, help="stop at an alert of this severity or worse")
    p.add_argument("--ledger", default=None, help="ledger folder (default $TRAINGUARD_LEDGER)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save every M steps (rank 0)")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    p.add_argument("--no-guard", dest="guard", action="store_false", help="train unguarded")
    p.add_argument("--sleep-rank", type=int, default=None, help="rank that sleeps every step")
    p.add_argument("--sleep-s", type=float, default=0.0, help="seconds it sleeps")
    p.add_argument("--sleep-from", type=int, default=1, help="first step it sleeps at")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    return p


def parse_args(argv: Sequence[str] | None = None) -> JobArgs:
    ns = vars(_parser().parse_args(argv))
    names = set(JobArgs.__dataclass_fields__)
    return JobArgs(**{k: v for k, v in ns.items() if k in names})


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 when the job finished, 1 when the guard stopped it or a checkpoint failed
    verification, 2 on bad arguments."""
    args = parse_args(argv)
    try:
        spec = os.environ.get(HOOKS_ENV)
        result = train(args, load_hooks(spec) if spec else None)
    except IntegrityError as exc:
        print(f"trainguard drill job: {exc}", file=sys.stderr)
        return 1
    except TrainguardError as exc:
        print(f"trainguard drill job: {exc}", file=sys.stderr)
        return 2
    last = result.losses[-1] if result.losses else float("nan")
    print(
        f"rank {result.rank}/{result.world_size}: steps {result.start_step}->{result.steps}, "
        f"loss {last:.4f}, {result.step_seconds * 1000:.1f} ms/step, "
        f"{len(result.alerts)} alerts, weights {result.weights_sha256[:16]}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
