"""Red-team attacks upstream of the optimizer and in the optimizer's blind window: hooks
on gradients and steps, rebound torch functions, swapped code, a replaced ``step``.

Each attack is an ``Attack`` of ``sabotage_kit``; they exist to measure whether the guard
covers the whole step rather than the optimizer update alone. What they trust: that the
kit's job looks its functions up the way training scripts do (``torch.nn.utils.
clip_grad_norm_``, ``F.cross_entropy``, ``torch.softmax``, ``nn.GELU``/``nn.Linear`` via
``F``), so every patch below really changes what the job trains on. Noise is drawn from a
private generator, so no attack moves the global RNG by accident.
"""

from __future__ import annotations

import os
import textwrap
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from sabotage_kit import Attack, Job, TinyGPT
from torch.nn.utils import clip_grad
from torch.optim import adam as adam_module
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

__all__ = ["ATTACKS"]

MONKEY = "runtime.monkeypatch"
WEIGHT = "runtime.weight_tamper"
UPDATE = "runtime.update_mismatch"
GRADDIV = "runtime.gradient_divergence"
MISSING = "guard.missing"
CODE = (MONKEY,)
GRAD = (MONKEY, UPDATE, GRADDIV)
_GEN = torch.Generator().manual_seed(4242)
TORCH_DIR = os.path.dirname(torch.__file__)


def noise(t: torch.Tensor, scale: float = 1e-4) -> torch.Tensor:
    return torch.randn(t.shape, generator=_GEN, dtype=t.dtype) * scale


def compiled(src: str, filename: str, name: str, env: dict[str, Any]) -> Any:
    """``name`` from ``src`` compiled as if it lived in ``filename``."""
    scope = dict(env)
    exec(compile(textwrap.dedent(src), filename, "exec"), scope)
    return scope[name]


def _victim(job: Job) -> torch.nn.Parameter:
    weight: torch.nn.Parameter = job.model.blocks[0].mlp[0].weight
    return weight


# -- hooks on gradients -----------------------------------------------------------------


def tensor_hook(job: Job) -> None:
    _victim(job).register_hook(lambda g: g + 0.01)  # type: ignore[no-untyped-call]


def accumulate_pre_hook(job: Job) -> None:
    node: Any = _victim(job).view_as(_victim(job)).grad_fn.next_functions[0][0]  # type: ignore[union-attr]
    node.register_prehook(lambda grads: (grads[0] + 0.01,))
    job.keep.append(node)


def accumulate_hook(job: Job) -> None:
    p = _victim(job)
    node: Any = p.view_as(p).grad_fn.next_functions[0][0]  # type: ignore[union-attr]

    def hook(grad_inputs: Any, grad_outputs: Any) -> None:
        with torch.no_grad():
            if p.grad is not None:
                p.grad.add_(0.01)

    node.register_hook(hook)
    job.keep.append(node)


def post_accumulate_hook(job: Job) -> None:
    def hook(t: torch.Tensor) -> None:
        if t.grad is not None:
            t.grad.add_(0.01)

    register: Any = _victim(job).register_post_accumulate_grad_hook
    register(hook)


def _grads_up(opt: Any, args: Any, kwargs: Any) -> None:
    for p in opt.param_groups[0]["params"]:
        if p.grad is not None:
            p.grad.add_(0.01)


def _weights_noise(opt: Any, args: Any, kwargs: Any) -> None:
    with torch.no_grad():
        for p in opt.param_groups[0]["params"]:
            p.add_(noise(p))


def opt_pre_hook(job: Job) -> None:
    job.opt.register_step_pre_hook(_grads_up)


def opt_post_hook(job: Job) -> None:
    job.opt.register_step_post_hook(_weights_noise)


def global_opt_pre_hook(job: Job) -> None:
    job.keep.append(register_optimizer_step_pre_hook(_grads_up))


def global_opt_post_hook(job: Job) -> None:
    job.keep.append(register_optimizer_step_post_hook(_weights_noise))


def disguised_hook(job: Job) -> None:
    src = "def _grad_hook(grad):\n    return grad + 0.01\n"
    hook = compiled(src, os.path.join(TORCH_DIR, "x.py"), "_grad_hook", {})
    _victim(job).register_hook(hook)  # type: ignore[no-untyped-call]


# -- rebound functions the job looks up -------------------------------------------------


def _scaling_clip(original: Callable[..., Any]) -> Callable[..., Any]:
    def clip_grad_norm_(parameters: Any, max_norm: float, *args: Any, **kwargs: Any) -> Any:
        parameters = list(parameters)
        total = original(parameters, max_norm, *args, **kwargs)
        with torch.no_grad():
            for p in parameters:
                if p.grad is not None:
                    p.grad.mul_(10)
        return total

    return clip_grad_norm_


def clip_rebound(job: Job) -> None:
    torch.nn.utils.clip_grad_norm_ = _scaling_clip(torch.nn.utils.clip_grad_norm_)


def clip_module_rebound(job: Job) -> None:
    evil = _scaling_clip(clip_grad.clip_grad_norm_)
    clip_grad.clip_grad_norm_ = evil
    torch.nn.utils.clip_grad_norm_ = evil


def clip_code_swapped(job: Job) -> None:
    """Same function object, new ``__code__``: identity checks see nothing change."""
    inner = clip_grad.clip_grad_norm_.__wrapped__  # type: ignore[attr-defined]
    src = """
    def clip_grad_norm_(parameters, max_norm, norm_type=2.0, error_if_nonfinite=False,
                        foreach=None):
        parameters = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
        grads = [p.grad for p in parameters if p.grad is not None]
        total_norm = _get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
        _clip_grads_with_norm_(parameters, max_norm, total_norm, foreach)
        for g in grads:
            g.mul_(10)
        return total_norm
    """
    fake = compiled(src, inner.__code__.co_filename, "clip_grad_norm_", vars(clip_grad))
    inner.__code__ = fake.__code__


def gelu_rebound(job: Job) -> None:
    original = F.gelu

    def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
        return original(x, approximate=approximate) * 1.05

    setattr(torch._C._nn, "gelu", gelu)  # noqa: B010 - mypy would refuse the assignment
    setattr(F, "gelu", gelu)  # noqa: B010


def linear_rebound(job: Job) -> None:
    original = F.linear

    def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return original(x, w, b) + 0.01

    setattr(torch._C._nn, "linear", linear)  # noqa: B010
    setattr(F, "linear", linear)  # noqa: B010


def softmax_rebound(job: Job) -> None:
    original = torch.softmax

    def softmax(x: torch.Tensor, dim: int, dtype: Any = None) -> torch.Tensor:
        return original(x * 1.5, dim, dtype=dtype)

    torch.softmax = softmax  # type: ignore[assignment]


def cross_entropy_rebound(job: Job) -> None:
    original = F.cross_entropy

    def cross_entropy(logits: torch.Tensor, target: torch.Tensor, *a: Any, **k: Any) -> Any:
        return original(logits, (target + 1) % logits.shape[-1], *a, **k)  # poisoned labels

    setattr(F, "cross_entropy", cross_entropy)  # noqa: B010


def forward_two_steps(job: Job) -> None:
    """The model class's ``forward`` patched for steps 5-6, restored before step 8's
    scheduled code snapshot."""
    original = TinyGPT.forward

    def forward(self: TinyGPT, idx: torch.Tensor) -> torch.Tensor:
        return original(self, idx) + 0.5 * (idx[..., None] == 3)

    TinyGPT.forward = forward  # type: ignore[method-assign]

    def restore(job: Job) -> None:
        TinyGPT.forward = original  # type: ignore[method-assign]

    job.at(job.step + 2, restore)


def forward_pre_hook(job: Job) -> None:
    job.model.blocks[1].register_forward_pre_hook(lambda m, args: (args[0] + 0.05,))


def global_forward_hook(job: Job) -> None:
    def hook(module: torch.nn.Module, args: Any, out: Any) -> Any:
        return out * 1.01 if isinstance(module, torch.nn.LayerNorm) else None

    job.keep.append(torch.nn.modules.module.register_module_forward_hook(hook))


# -- the optimizer's blind window -------------------------------------------------------


def _noisy_step(original: Callable[..., Any]) -> Callable[..., Any]:
    def step(self: Any, closure: Any = None) -> Any:
        out = original(self, closure)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.data.add_(noise(p, 1e-5))
        return out

    return step


def adamw_step_replaced(job: Job) -> None:
    torch.optim.AdamW.step = _noisy_step(torch.optim.AdamW.step)  # type: ignore[method-assign]


def step_bypasses_hooks(job: Job) -> None:
    """The instance's ``step`` calls the unhooked AdamW.step: no pre/post hook runs."""
    raw = torch.optim.AdamW.step.__wrapped__  # type: ignore[attr-defined]
    job.opt.step = types.MethodType(_noisy_step(raw), job.opt)  # type: ignore[method-assign]


def adam_kernel_rebound(job: Job) -> None:
    module: Any = adam_module
    original = module._single_tensor_adam

    def kernel(params: list[torch.Tensor], *args: Any, **kwargs: Any) -> None:
        original(params, *args, **kwargs)
        with torch.no_grad():
            params[0].add_(noise(params[0], 1e-5))

    module._single_tensor_adam = kernel
    module._multi_tensor_adam = kernel


def _pre(name: str, cls: str, rules: tuple[str, ...], fn: Callable[[Job], None]) -> Attack:
    return Attack(name, cls, rules, 1, fn, before_guard=True)


def _at5(name: str, cls: str, rules: tuple[str, ...], fn: Callable[[Job], None]) -> Attack:
    return Attack(name, cls, rules, 5, fn)


ATTACKS: list[Attack] = [
    _pre("tensor-hook (before Guard)", "upstream", GRAD, tensor_hook),
    _at5("tensor-hook (step 5)", "upstream", GRAD, tensor_hook),
    _pre("AccumulateGrad pre-hook", "upstream", GRAD, accumulate_pre_hook),
    _pre("AccumulateGrad hook", "upstream", GRAD, accumulate_hook),
    _pre("post-accumulate-grad hook", "upstream", GRAD, post_accumulate_hook),
    _pre("optimizer pre-hook edits grads", "upstream", GRAD, opt_pre_hook),
    _pre("optimizer post-hook noise", "upstream", (MONKEY, WEIGHT, UPDATE), opt_post_hook),
    _pre("global optimizer pre-hook", "upstream", GRAD, global_opt_pre_hook),
    _pre("global optimizer post-hook", "upstream", (MONKEY, WEIGHT, UPDATE), global_opt_post_hook),
    _pre("hook compiled as torch/x.py", "upstream", GRAD, disguised_hook),
    _pre("nn.utils.clip_grad_norm_ rebound", "upstream", GRAD, clip_rebound),
    _pre("clip_grad.clip_grad_norm_ rebound", "upstream", GRAD, clip_module_rebound),
    _pre("clip_grad_norm_ __code__ swapped", "upstream", GRAD, clip_code_swapped),
    _at5("clip_grad_norm_ rebound (step 5)", "upstream", GRAD, clip_rebound),
    _pre("_C._nn.gelu + F.gelu rebound", "upstream", CODE, gelu_rebound),
    _pre("_C._nn.linear + F.linear rebound", "upstream", CODE, linear_rebound),
    _pre("torch.softmax rebound", "upstream", CODE, softmax_rebound),
    _pre("F.cross_entropy rebound", "upstream", CODE, cross_entropy_rebound),
    _at5("model forward patched steps 5-6", "upstream", CODE, forward_two_steps),
    _pre("module forward pre-hook", "upstream", CODE, forward_pre_hook),
    _pre("global module forward hook", "upstream", CODE, global_forward_hook),
    _pre(
        "AdamW.step replaced (before Guard)", "blind", (MONKEY, WEIGHT, UPDATE), adamw_step_replaced
    ),
    _at5("AdamW.step replaced (step 5)", "blind", (MONKEY, WEIGHT, UPDATE), adamw_step_replaced),
    _at5("opt.step bypasses hooks", "blind", (MONKEY, WEIGHT, MISSING), step_bypasses_hooks),
    _pre("adam kernel rebound", "blind", (MONKEY, UPDATE, WEIGHT), adam_kernel_rebound),
]
