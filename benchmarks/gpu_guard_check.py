"""One short GPU check of the runtime guard: honest runs stay silent, attacks are caught.

Run by hand on a CUDA machine from the repository root (the numbers in the README came
from one such run)::

    PYTHONPATH=src python benchmarks/gpu_guard_check.py [--steps 30]

It trains the ~27M-parameter ``bench25m`` GPT on random tokens with the default guard:

* honest: AdamW (foreach, the CUDA default) with bf16 autocast; AdamW fused=True; SGD
  momentum + fp16 autocast + ``GradScaler`` (skipped steps included) -> no alert;
* attacks: a 1-ulp flip through ``.data`` on one weight (``runtime.weight_tamper``), the
  learning rate x1.01 (``runtime.optimizer_tamper``), sign-flipped updates on 1% of the
  elements by a wrapped ``torch._foreach_addcdiv_`` (the call that applies foreach
  AdamW's update) (``runtime.update_mismatch``) -> each at
  the step it starts.

It prints one line per case: expected, got, step.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

import torch

from trainguard.drill.model import GPTConfig, TinyGPT
from trainguard.guard import Guard

DEVICE = "cuda"
MODEL = "bench25m"


def run(
    name: str,
    make_opt: Callable[[Any], torch.optim.Optimizer],
    *,
    steps: int,
    amp: torch.dtype | None = torch.bfloat16,
    scaler: bool = False,
    attack: tuple[int, Callable[[Any, torch.optim.Optimizer], Callable[[], None] | None]]
    | None = None,
) -> list[tuple[str, int | None]]:
    torch.manual_seed(0)
    config = GPTConfig.preset(MODEL)
    model = TinyGPT(config, seed=0).to(DEVICE)
    opt = make_opt(model)
    grad_scaler = torch.amp.GradScaler(DEVICE) if scaler else None
    guard = Guard(model, opt, ledger=False, every=8)
    gen = torch.Generator(device=DEVICE).manual_seed(1)
    undo: Callable[[], None] | None = None
    try:
        for step in range(1, steps + 1):
            if attack is not None and step == attack[0]:
                undo = attack[1](model, opt)
            x = torch.randint(0, config.vocab, (16, config.block + 1), device=DEVICE, generator=gen)
            with torch.autocast(DEVICE, dtype=amp or torch.float32, enabled=amp is not None):
                _, loss = model(x[:, :-1], x[:, 1:])
            assert loss is not None
            if grad_scaler is not None:
                grad_scaler.scale(loss).backward()
                grad_scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                grad_scaler.step(opt)
                grad_scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
            opt.zero_grad(set_to_none=True)
            guard.step(loss=loss)
    finally:
        if undo is not None:
            undo()
        guard.close()
    got = [(a.rule.value, a.step) for a in guard.alerts]
    print(f"{name:34s} alerts={got}", flush=True)
    return got


def ulp_flip(model: Any, opt: Any) -> None:
    model.blocks[0].mlp.fc.weight.data.view(-1).view(torch.int32)[12345] += 1  # type: ignore[union-attr]


def lr_bump(model: Any, opt: Any) -> None:
    opt.param_groups[0]["lr"] *= 1.01


def sign_flip(model: Any, opt: Any) -> Callable[[], None]:
    # torch's foreach Adam(W) applies the update with one _foreach_addcdiv_: flip 1% of it
    orig_addcdiv = torch._foreach_addcdiv_

    def addcdiv(params: Any, t1: Any, t2: Any, value: Any = 1, **kw: Any) -> Any:
        before = [p.clone() for p in params]
        out = orig_addcdiv(params, t1, t2, value, **kw)
        for p, b in zip(params, before, strict=True):
            delta = p - b
            mask = torch.rand(p.shape, device=p.device) < 0.01
            p.sub_(2 * delta * mask)
        return out

    torch._foreach_addcdiv_ = addcdiv

    def undo() -> None:
        torch._foreach_addcdiv_ = orig_addcdiv

    return undo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself")
    parser.add_argument("--model", default="bench25m")
    args = parser.parse_args(argv)
    global DEVICE, MODEL
    DEVICE, MODEL = args.device, args.model
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE
    print(f"device {name}, model {MODEL}, torch {torch.__version__}")
    n = args.steps
    adamw = lambda m: torch.optim.AdamW(m.param_groups(0.1), lr=3e-4)  # noqa: E731
    results = {
        "honest AdamW foreach bf16": run("honest AdamW foreach bf16", adamw, steps=n),
        "honest AdamW fused bf16": run(
            "honest AdamW fused bf16",
            lambda m: torch.optim.AdamW(m.param_groups(0.1), lr=3e-4, fused=True),
            steps=n,
        ),
        "honest SGD momentum fp16 scaler": run(
            "honest SGD momentum fp16 scaler",
            lambda m: torch.optim.SGD(m.parameters(), lr=1e-2, momentum=0.9),
            steps=n,
            amp=torch.float16,
            scaler=True,
        ),
        "1-ulp flip at 5": run("1-ulp flip at 5", adamw, steps=8, attack=(5, ulp_flip)),
        "lr x1.01 at 5": run("lr x1.01 at 5", adamw, steps=8, attack=(5, lr_bump)),
        "sign flip p=0.01 at 5": run(
            "sign flip p=0.01 at 5",
            lambda m: torch.optim.AdamW(m.param_groups(0.1), lr=3e-4, foreach=True),
            steps=8,
            attack=(5, sign_flip),
        ),
    }
    expect = {
        "1-ulp flip at 5": "runtime.weight_tamper",
        "lr x1.01 at 5": "runtime.optimizer_tamper",
        "sign flip p=0.01 at 5": "runtime.update_mismatch",
    }
    ok = True
    for name, got in results.items():
        want = expect.get(name)
        good = (not got) if want is None else (want, 5) in got
        ok &= good
        print(f"{'PASS' if good else 'FAIL'} {name}: expected {want or 'no alert'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
