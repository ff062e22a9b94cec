"""Weight writes the user means, modelled: constraints, after-step functions, EMA swaps.

The weights check alerts when a parameter moves between two optimizer steps. Honest
training writes weights there too; each kind is given a model the guard verifies instead
of a blind pass (``nn.Embedding(max_norm=...)``'s renorm is modelled inside the weights
check, ``checks/renorm.py``):

``Guard(constraints=[...])``
    ``Clamp``/``NonNegative``/``MaxNorm`` (``trainguard.guard.constraints``): applied by
    the guard in the optimizer's post-step hook, after the checks' ``after_step`` (the
    update check has read the optimizer's own result) and before the weights check takes
    the baseline of those parameters. The values are the guard's own arithmetic, written
    with ``copy_`` and read back bit for bit (a mismatch is ``runtime.weight_tamper``).
``guard.after_step(fn, params=...)``
    an arbitrary function the guard runs at the same point, under ``torch.no_grad()``, in
    place of the training loop's own write. Its result cannot be modelled, so what is
    trusted is named: the function (its code object is digested when it is registered and
    must be the same at every call, else ``runtime.monkeypatch`` and it is not run) and the
    parameters it declares. Writes to any other parameter are caught as before; the
    declared ones are re-baselined after it, so a write between steps is still caught.
``guard.swapped(shadow=None, params=None)``
    an evaluation with other weights (an EMA shadow: ``torch_ema``'s and diffusers'
    ``store()``/``copy_to()``/``restore()``). Given ``shadow``, the guard does the exchange
    itself: copies the shadow in (and checks the model holds exactly it), and restores
    its own copy at the end. Without, the user exchanges and restores inside the block.
    Either way, at the end the weights must be bit-identical to those at its start, judged
    by the weights check's fingerprints over every element (``runtime.weight_tamper``
    otherwise): nothing is re-baselined, nothing accepted.

The parameters a constraint or function writes are covered completely at every step (not
by the rotating share of a large CPU model) and may be written in place again between
steps as long as no bit changes: a loop that still clamps after the guard does no harm.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trainguard.errors import ConfigError
from trainguard.findings import Rule, Severity
from trainguard.guard.checks._deferred import Verdicts
from trainguard.guard.checks.base import GuardContext
from trainguard.guard.constraints import Constraint, select

__all__ = ["Writes"]


@dataclass(frozen=True, slots=True)
class _Fn:
    fn: Callable[[], object]
    label: str
    code: str | None  # digest of the code object at registration; None: no code to digest
    targets: tuple[tuple[str, Any], ...]


class Writes:
    """The declared writes of one guard."""

    def __init__(self, constraints: Sequence[Constraint] = ()) -> None:
        self._declared = list(constraints)
        self._constraints: list[tuple[Constraint, list[tuple[str, Any]]]] = []
        self._fns: list[_Fn] = []
        self._verdicts = Verdicts()

    # -- declaring ---------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        """Resolve the constraints' parameter patterns (``ConfigError`` when one matches
        nothing) and tell the weights check which parameters the guard writes."""
        named = list(ctx.named_parameters)
        names = [n for n, _ in named]
        for c in self._declared:
            picked = select(c.params, names, type(c).__name__)
            self._constraints.append((c, [named[i] for i in picked]))
        if self._declared:
            ctx.event(
                "guard.constraints",
                {
                    "constraints": [
                        {**c.describe(), "matched": [n for n, _ in t][:50]}
                        for c, t in self._constraints
                    ]
                },
            )
            self._declare(ctx)

    def add(
        self, ctx: GuardContext, fn: Callable[[], object], params: Sequence[str] | str | None
    ) -> None:
        if not callable(fn):
            raise ConfigError("guard.after_step needs a callable")
        named = list(ctx.named_parameters)
        patterns = (params,) if isinstance(params, str) else params
        picked = select(
            None if patterns is None else tuple(patterns), [n for n, _ in named], "after_step"
        )
        code = _code(fn)
        entry = _Fn(
            fn,
            getattr(fn, "__qualname__", type(fn).__qualname__),
            _digest(code),
            tuple(named[i] for i in picked),
        )
        self._fns.append(entry)
        ctx.event(
            "guard.after_step",
            {
                "function": entry.label,
                "module": getattr(fn, "__module__", None),
                "where": f"{code.co_filename}:{code.co_firstlineno}" if code else None,
                "code": entry.code,
                "params": [n for n, _ in entry.targets][:50],
                "count": len(entry.targets),
            },
        )
        self._declare(ctx)

    def _declare(self, ctx: GuardContext) -> None:
        params = [p for _, t in self._constraints for _, p in t]
        params += [p for f in self._fns for _, p in f.targets]
        for check in _weights(ctx):
            check.expect_writes(ctx, params)

    # -- the post-step hook ------------------------------------------------------------

    def settle(self, ctx: GuardContext) -> None:
        """Apply the constraints, run the functions, then let the weights check take the
        baseline of what they wrote. A function's own exception propagates (it is the
        training loop's code), after the baseline is taken."""
        if not self._constraints and not self._fns:
            return
        import torch

        self.poll(ctx)
        try:
            with torch.no_grad():
                for c, targets in self._constraints:
                    for name, p in targets:
                        try:
                            self._apply(ctx, c, name, p)
                        except Exception as exc:  # noqa: BLE001 - an alert, never a pass
                            ctx.emit(
                                Rule.GUARD_ERROR,
                                Severity.MEDIUM,
                                f"constraint {type(c).__name__} failed on {name}: "
                                f"{type(exc).__name__}: {exc}",
                                where=f"constraint:{name}",
                                evidence={"constraint": c.describe()},
                            )
                for entry in self._fns:
                    if entry.code is not None and _digest(_code(entry.fn)) != entry.code:
                        ctx.emit(
                            Rule.MONKEYPATCH,
                            Severity.CRITICAL,
                            f"the code of after-step function {entry.label} changed after it "
                            "was registered; it was not run",
                            where=f"after_step:{entry.label}",
                            evidence={"function": entry.label, "registered": entry.code},
                        )
                        continue
                    entry.fn()
        finally:
            for check in _weights(ctx):
                check.retake(ctx)

    def _apply(self, ctx: GuardContext, c: Constraint, name: str, p: Any) -> None:
        import torch

        new = c.apply(p)
        p.copy_(new)
        differ = (_ints(p) != _ints(new)).sum().reshape(1).to(torch.int64)
        self._verdicts.push((ctx.current_step, name, c), differ)
        if not differ.is_cuda:
            self.poll(ctx)

    def poll(self, ctx: GuardContext, *, wait: bool = False) -> None:
        for (step, name, c), (differ,) in self._verdicts.ready(wait=wait):
            if differ:
                ctx.emit(
                    Rule.WEIGHT_TAMPER,
                    Severity.CRITICAL,
                    f"parameter {name} does not hold what the guard wrote applying "
                    f"{type(c).__name__} after optimizer step {step} ({differ} elements differ)",
                    where=f"param:{name}",
                    evidence={"parameter": name, "constraint": c.describe(), "elements": differ},
                    step=step,
                )

    # -- windows -----------------------------------------------------------------------

    def opened(self, ctx: GuardContext) -> None:
        """An ``authorized()`` block begins: writes made before it are judged now."""
        for check in _weights(ctx):
            check.open_window(ctx, restore=False)

    @contextlib.contextmanager
    def swapped(self, ctx: GuardContext, shadow: Any, params: Any) -> Iterator[None]:
        checks = _weights(ctx)
        pairs = _pairs(ctx, shadow, params) if shadow is not None else []
        ctx.event("guard.swapped", {"by_guard": shadow is not None, "tensors": len(pairs)})
        for check in checks:
            check.open_window(ctx, restore=True)
        saved: list[Any] = []
        try:
            if pairs:
                import torch

                with torch.no_grad():
                    saved = [p.detach().clone() for p, _ in pairs]
                    for p, s in pairs:
                        p.copy_(s)
                    held = sum(
                        int((_ints(p) != _ints(s.to(p.device, p.dtype))).sum()) for p, s in pairs
                    )
                if held:
                    ctx.emit(
                        Rule.WEIGHT_TAMPER,
                        Severity.CRITICAL,
                        f"guard.swapped(): the model does not hold the shadow weights after "
                        f"the guard copied them in ({held} elements differ)",
                        where="guard.swapped",
                        evidence={"elements": held, "how": "shadow copy-in"},
                    )
            yield
        finally:
            if saved:
                import torch

                with torch.no_grad():
                    for (p, _), old in zip(pairs, saved, strict=True):
                        p.copy_(old)
            for check in checks:
                check.close_swap(ctx)

    def close(self, ctx: GuardContext) -> None:
        self.poll(ctx, wait=True)


def _weights(ctx: GuardContext) -> list[Any]:
    from trainguard.guard.checks.weights import WeightsCheck

    return [c for c in ctx.checks if isinstance(c, WeightsCheck)]


def _pairs(ctx: GuardContext, shadow: Any, params: Any) -> list[tuple[Any, Any]]:
    """(model tensor, shadow tensor) pairs: ``shadow`` a mapping by parameter name, or a
    sequence aligned with ``params`` (default: ``model.parameters()``)."""
    model = ctx.model
    if isinstance(shadow, Mapping):
        named = dict(model.named_parameters())
        missing = [k for k in shadow if k not in named]
        if missing:
            raise ConfigError(f"guard.swapped(): no parameter named {missing[0]!r}")
        pairs = [(named[k], v) for k, v in shadow.items()]
    else:
        targets = list(params) if params is not None else list(model.parameters())
        values = list(shadow)
        if len(values) != len(targets):
            raise ConfigError(
                f"guard.swapped(): {len(values)} shadow tensors for {len(targets)} parameters "
                "(pass params= in the order the shadow was built from)"
            )
        pairs = list(zip(targets, values, strict=True))
    for p, s in pairs:
        if tuple(p.shape) != tuple(s.shape):
            raise ConfigError(
                f"guard.swapped(): shadow of shape {tuple(s.shape)} for a parameter of "
                f"shape {tuple(p.shape)}"
            )
    return pairs


def _code(fn: Any) -> Any:
    """The code object ``fn`` runs: a function's, a bound method's, a callable object's
    ``__call__``; None for builtins and ``functools.partial`` (recorded as not digested)."""
    code = getattr(fn, "__code__", None)
    if code is None and callable(fn) and not isinstance(fn, type):
        code = getattr(type(fn).__call__, "__code__", None)
    return code


def _digest(code: Any) -> str | None:
    if code is None:
        return None
    return hashlib.blake2b(marshal.dumps(code), digest_size=16).hexdigest()


def _ints(t: Any) -> Any:
    import torch

    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(view)
