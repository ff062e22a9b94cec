"""What a model holds besides its trained parameters, taken apart for the state check.

Forward computes with more than the optimizer's parameters: buffers (a causal mask, rotary
``inv_freq``, position ids, normalization statistics), parameters the optimizer does not
update (frozen ones), plain Python attributes of each module (``Dropout.p``,
``LayerNorm.eps``, a leaky ReLU's ``negative_slope``, an attention ``scale``) and the
module tree itself (a submodule swapped for another). ``scan`` lists them once; the state
check (``state.py``) compares them at every optimizer hook.

Trusted, and why:

* ``training`` is not compared as a value (``train()``/``eval()`` flip it honestly for the
  whole model); what is watched is its *pattern* (``Modes``): which modules are in a mode
  other than the model's. A whole-model switch leaves that pattern as it is; one dropout
  put in eval mode (its masks off) while the model trains changes it. Neither are DDP's
  ``no_sync`` flags or HF's ``gradient_checkpointing`` (same numbers, other memory), nor
  private (``_``-prefixed) attributes: torch, Lightning and PEFT rewrite theirs during a
  run (``_current_fx_name``, ``_disable_adapters``, hook bookkeeping). A forward that
  reads a private attribute can be steered through it unseen.
* Values watched are immutable scalars (numbers, bools, strings, None, dtypes, devices)
  and tuples or lists of them; containers of anything else are not compared.
* Normalization statistics change honestly in a training-mode forward, so a
  ``_NormBase`` module's ``running_mean``/``running_var``/``num_batches_tracked`` are
  judged against a count kept by a forward pre-hook the check installs (``Norm``);
  removing that hook makes honest updates look like tampering, never the reverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SKIPPED", "Attr", "Held", "Modes", "Norm", "Scan", "freeze", "scan"]

SKIPPED = frozenset(
    {
        "training",
        "require_backward_grad_sync",
        "require_forward_param_sync",
        "gradient_checkpointing",
    }
)
_NORM_STATS = ("running_mean", "running_var", "num_batches_tracked")
_NOT = object()  # freeze(): not a value the check compares


@dataclass(frozen=True, slots=True)
class Held:
    """A slot of a module's ``_buffers`` or ``_parameters`` and the tensor in it."""

    where: str  # "buffer:blocks.0.attn.mask", "param:encoder.frozen.weight"
    owner: dict[str, Any]
    key: str
    tensor: Any  # None when the slot held None


@dataclass(frozen=True, slots=True)
class Attr:
    """A module attribute (or a submodule slot) and its value when the check looked."""

    where: str  # "module:blocks.0.drop.p", "submodule:blocks.0.drop"
    owner: dict[str, Any]
    key: str
    value: Any
    frozen: Any  # freeze(value); compared when ``value`` is no longer the same object
    mutable: bool  # a list: identity says nothing, compare the values every time


@dataclass(slots=True)
class Norm:
    """A normalization layer with running statistics and its training forwards."""

    name: str
    module: Any
    counts: bool  # num_batches_tracked advances once per training forward (not InstanceNorm)
    stats: list[int] = field(default_factory=list)  # indices of mean/var in Scan.norm_tensors
    tracked: int | None = None  # index of num_batches_tracked in Scan.norm_tensors
    forwards: int = 0
    hook: Any = None

    def pre_forward(self, module: Any, args: Any) -> None:
        if module.training and module.track_running_stats and module.running_mean is not None:
            self.forwards += 1


@dataclass(slots=True)
class Scan:
    held: list[Held] = field(default_factory=list)  # every buffer and non-trained param slot
    constants: list[tuple[str, Any]] = field(default_factory=list)  # unique, must not change
    norm_tensors: list[tuple[str, Any]] = field(default_factory=list)
    norms: list[Norm] = field(default_factory=list)
    attrs: list[Attr] = field(default_factory=list)
    sizes: list[tuple[str, dict[str, Any], int]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # where -> why not fingerprinted


class Modes:
    """Which modules are in another mode (``training``) than the model itself. A plain
    list of the modules is kept, so a step costs one attribute read per module."""

    def __init__(self, model: Any) -> None:
        self.model = model
        named = list(model.named_modules()) if hasattr(model, "named_modules") else []
        self.names = [n for n, _ in named]
        self.modules = [m for _, m in named]
        self.baseline = self.odd()

    def odd(self) -> frozenset[int]:
        """Indices of the modules whose mode is not the model's."""
        root = bool(getattr(self.model, "training", True))
        return frozenset(i for i, m in enumerate(self.modules) if m.training is not root)

    def changed(self) -> list[str]:
        """Modules whose mode, relative to the model's, is not what it was."""
        now = self.odd()
        if now == self.baseline:
            return []
        return [self.names[i] or "<model>" for i in sorted(now ^ self.baseline)]


def scan(model: Any, trained: set[int], why_not: Any) -> Scan:
    """Take ``model`` apart (``trained``: ids of the optimizer's parameters, which the
    weights check covers; ``why_not(tensor)``: why a tensor cannot be fingerprinted)."""
    from torch.nn.modules.batchnorm import _NormBase
    from torch.nn.modules.instancenorm import _InstanceNorm

    out = Scan()
    seen: set[int] = set()
    for mname, m in model.named_modules():
        prefix = f"{mname}." if mname else ""
        norm = None
        if isinstance(m, _NormBase) and m.track_running_stats:
            norm = Norm(mname or type(m).__name__, m, counts=not isinstance(m, _InstanceNorm))
        for kind, owner in (("buffer", m._buffers), ("param", m._parameters)):
            out.sizes.append((f"{kind}s of {mname or 'the model'}", owner, len(owner)))
            for key, t in owner.items():
                if kind == "param" and t is not None and id(t) in trained:
                    continue
                where = f"{kind}:{prefix}{key}"
                out.held.append(Held(where, owner, key, t))
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                why = why_not(t)
                if why is not None:
                    out.skipped[where] = why
                elif norm is not None and kind == "buffer" and key in _NORM_STATS:
                    if key == "num_batches_tracked":
                        norm.tracked = len(out.norm_tensors)
                    else:
                        norm.stats.append(len(out.norm_tensors))
                    out.norm_tensors.append((where, t))
                else:
                    out.constants.append((where, t))
        if norm is not None:
            norm.hook = m.register_forward_pre_hook(norm.pre_forward)
            out.norms.append(norm)
        out.sizes.append((f"submodules of {mname or 'the model'}", m._modules, len(m._modules)))
        for key, child in m._modules.items():
            out.attrs.append(Attr(f"submodule:{prefix}{key}", m._modules, key, child, None, False))
        for key, value in vars(m).items():
            if key.startswith("_") or key in SKIPPED:
                continue
            frozen = freeze(value)
            if frozen is not _NOT:
                mutable = isinstance(value, list)
                out.attrs.append(
                    Attr(f"module:{prefix}{key}", vars(m), key, value, frozen, mutable)
                )
    return out


def freeze(value: Any) -> Any:
    """A hashable, exact image of an immutable scalar value (floats by their bits, so NaN
    equals itself and -0.0 differs from 0.0), or a marker when the check does not compare
    such values."""
    import torch

    if value is None or isinstance(value, bool | int | str | bytes):
        return (type(value).__name__, value)
    if isinstance(value, float):
        return ("float", value.hex() if not math.isnan(value) else "nan")
    if isinstance(value, complex):
        return ("complex", value.real.hex(), value.imag.hex())
    if isinstance(value, torch.dtype | torch.device):
        return (type(value).__name__, str(value))
    if isinstance(value, tuple | list | frozenset):
        items = [freeze(v) for v in value]
        if any(i is _NOT for i in items):
            return _NOT
        return (
            type(value).__name__,
            tuple(sorted(items) if isinstance(value, frozenset) else items),
        )
    return _NOT


def differs(a: Attr) -> tuple[bool, Any]:
    """Whether the attribute's value is no longer the one scanned, and the value now."""
    now = a.owner.get(a.key, _NOT)
    if now is a.value and not a.mutable:
        return False, now
    if a.frozen is None:  # a submodule: only the same object will do
        return True, now
    return (now is _NOT or freeze(now) != a.frozen), now


def shown(value: Any) -> str:
    """The value for an alert message (a missing attribute says so)."""
    if value is _NOT:
        return "<deleted>"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
