"""One step of SGD, Adam and AdamW in plain Python floats: the update check's reference.

This module imports nothing from torch on purpose. The update check exists because the
optimizer's code (Python source, a compiled kernel, an in-memory patch) may be the thing
that was tampered with; a reference that called ``torch.optim`` or torch arithmetic would
share whatever was changed. CPython's own float64 arithmetic shares nothing with it.

The formulas are the published algorithms, written to agree with PyTorch 2.13
(``torch/optim/sgd.py``, ``adam.py``; ``AdamW`` is ``Adam`` with decoupled weight decay):

SGD (``d`` = gradient, negated when ``maximize``)::

    d = g + wd * p
    buf = d                                   (first step: the buffer is a copy of d)
    buf = momentum * buf + (1 - dampening) * d
    d = d + momentum * buf  if nesterov  else  buf
    p = p - lr * d

Adam / AdamW (``t`` = the step count after the increment)::

    p = p * (1 - lr * wd)                     (AdamW: decoupled)   | g = g + wd * p (Adam)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    vmax = max(vmax, v)                       (amsgrad; v below means vmax)
    p = p - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

Each quantity is checked *chained*: the expected new ``m`` comes from the old ``m``, ``g``
and ``p``; the expected new ``p`` comes from the optimizer's actual new ``m`` and ``v``
(already checked). So rounding never compounds across the chain, and the error bound of
each check covers only one short formula.

The bound: an element passes when ``|actual - expected| <= ULPS * unit * M + slack``,
where ``unit`` is the machine epsilon of the tensors' dtype and ``M`` the formula evaluated
on absolute values (every term that is added or subtracted, taken positive; the operands
and the result). By the standard running-error argument (Higham, *Accuracy and Stability
of Numerical Algorithms*, 3.1),
a formula evaluated with ``n`` roundings of unit roundoff ``u = unit / 2`` is within
``gamma_n * M`` of the exact value, whatever the evaluation order, whether products are
fused (FMA) or whether scalars such as ``lr`` are first rounded to the tensor's dtype.
Each checked formula above has at most ~10 roundings on the optimizer's side (scalars
rounded to float32, the sub/mul/add of ``lerp``, sqrt, two divisions, ``eps``, the final
``addcdiv``), i.e. at most ~5 ``unit``; ``ULPS = 16`` leaves a 3x margin. This holds for
all three PyTorch code paths:

* single-tensor (``foreach=False``): one torch op per line, each rounded once to the
  dtype (bfloat16/float16 ops compute in float32 and round once on output);
* foreach (``_foreach_*``): the same ops, batched, the same roundings;
* fused (``fused=True``): one kernel computing in float32 (or float64) and rounding
  once at the end; it may use its unrounded ``m``/``v``/momentum rather than the stored
  ones, a difference of one rounding of those, covered because ``M`` contains the update.

Our own float64 evaluation adds ~1e-16 relative, negligible next to the float32 bound and
within the margin for float64 parameters. Measured on CPU over SGD/Adam/AdamW in all three
code paths, the worst honest error was 1.1 ``unit * M`` for float32 (1.4 for float64,
0.8 for bfloat16): the bound is never approached. On an H100 (PyTorch 2.11, CUDA 13) the
default (foreach), single-tensor and fused paths of all three, in float32 and bfloat16 and
under an fp16 ``GradScaler``, pass with the accelerator terms below.

Two things escape that argument. First, scalars derived by cancellation: a kernel that
computes ``1 - beta`` or ``1 - beta**t`` in float32 (PyTorch's CUDA fused Adam does; the
CPU kernels use float64) errs by ``u * beta / (1 - beta)`` relative, ~1.3e-5 for
``beta2 = 0.999``. On accelerators the tolerance adds those terms (``coefficients``);
on CPU they are 0. Second, absolute errors, which are not relative to anything, so they
get their own terms. ``slack`` is
``2 * max(smallest float32 normal, the dtype's subnormal spacing)``: results that
underflow, or are flushed to zero (``torch.set_flush_denormal``, GPU kernels). In Adam's
division that slack can be amplified: a denominator ``sqrt(v)/sqrt(bc2) + eps`` known only
to ``+-(sqrt(slack)/sqrt(bc2) + slack)`` moves ``u = step_size * m / den`` by up to
``|u| * d / (den - d)``, which is added to the parameter's tolerance (negligible in float32,
where ``eps`` keeps the denominator far above ``1e-17``; decisive for float16, where
``v`` underflows and ``eps = 1e-8`` rounds to 0). Elements whose tolerance is not finite
(non-finite inputs, a denominator that may be 0) or whose intermediates come within 4x of
the dtype's overflow (float16 overflows where float64 does not) are not judged; they are
counted and reported as unverified, never silently passed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "ULPS",
    "AdamHyper",
    "Expected",
    "Mismatch",
    "Precision",
    "SgdHyper",
    "compare",
    "expect_adam",
    "expect_sgd",
    "expect_unchanged",
]

ULPS = 16.0
"""The error bound, in machine epsilons of the tensor dtype, times the magnitude ``M``."""

_FLOAT32_TINY = 2.0**-126
_FLOAT32_EPS = 2.0**-23

Floats = Sequence[float]


@dataclass(frozen=True, slots=True)
class Precision:
    """What the optimizer's arithmetic can be trusted to: from the tensors' dtype."""

    unit: float  # machine epsilon
    slack: float  # absolute: underflow and flush-to-zero
    limit: float  # intermediates above this (a quarter of the largest finite) may overflow
    ulps: float = ULPS
    coefficients: float = 0.0  # relative error of a scalar the kernel rounds to float32

    @classmethod
    def of(
        cls,
        eps: float,
        tiny: float,
        largest: float,
        *,
        ulps: float = ULPS,
        float32_scalars: bool = False,
    ) -> Precision:
        """From ``torch.finfo(dtype)``: ``eps``, ``tiny`` (smallest normal) and ``max``.
        ``float32_scalars``: the kernel derives ``1 - beta`` and ``1 - beta**t`` in float32
        (the CUDA fused Adam kernel does)."""
        coefficients = _FLOAT32_EPS if float32_scalars else 0.0
        return cls(eps, 2.0 * max(_FLOAT32_TINY, tiny * eps), largest / 4.0, ulps, coefficients)


@dataclass(frozen=True, slots=True)
class SgdHyper:
    """The hyper-parameters of one SGD param group, as floats, read before the step."""

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    maximize: bool


@dataclass(frozen=True, slots=True)
class AdamHyper:
    """The hyper-parameters of one Adam/AdamW param group. ``decoupled`` is AdamW."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    amsgrad: bool
    maximize: bool
    decoupled: bool


@dataclass(frozen=True, slots=True)
class Expected:
    """What one sampled quantity must be after the step: ``values`` and, per element, how
    far the optimizer's rounding may take it (inf: cannot be judged; 0 with ``exact``:
    bit-identical)."""

    quantity: str
    values: list[float]
    tolerances: list[float]
    exact: bool = False


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first sampled element of a quantity outside the bound, and how many were."""

    quantity: str
    position: int
    expected: float
    actual: float
    tolerance: float
    count: int


def expect_unchanged(quantity: str, old: Floats) -> Expected:
    """The quantity must come back bit-identical (a parameter the optimizer skips)."""
    return Expected(quantity, list(old), [0.0] * len(old), exact=True)


def expect_sgd(
    h: SgdHyper,
    prec: Precision,
    *,
    param: Floats,
    grad: Floats,
    buf: Floats | None,
    new_buf: Floats | None,
    grad_scale: float = 1.0,
) -> list[Expected]:
    """Expected ``momentum_buffer`` (when momentum is on) and ``param`` after one step.

    ``buf`` is the buffer before the step (None on the first step); ``new_buf`` is the
    optimizer's actual buffer after it, which the parameter check builds on.
    """
    # One pass per element with the tolerance inlined: this runs on every step, in
    # CPython, for up to ~1000 elements, and the per-element cost is the check's cost.
    lr, mom, wd, damp = h.lr, h.momentum, h.weight_decay, h.dampening
    sign = (-1.0 if h.maximize else 1.0) / grad_scale
    k, slack, limit, inf = prec.ulps * prec.unit, prec.slack, prec.limit, math.inf
    keep = 1.0 - damp
    n = len(param)
    ep: list[float] = [0.0] * n
    tp: list[float] = [0.0] * n
    eb: list[float] = [0.0] * n
    tb: list[float] = [0.0] * n
    if mom and new_buf is None:
        raise ValueError("momentum is on but there is no new momentum buffer")
    nb: Floats = new_buf if new_buf is not None else param
    ob: Floats = buf if buf is not None else param
    for i in range(n):
        p = param[i]
        g = sign * grad[i]
        d = g + wd * p
        md = abs(g) + wd * abs(p)
        if mom:
            if buf is None:
                e, m = d, 2.0 * md
            else:
                b = ob[i]
                e = mom * b + keep * d
                m = mom * abs(b) + abs(keep) * md + abs(e)
            eb[i] = e
            tb[i] = k * m + slack if m <= limit and md <= limit else inf
            b = nb[i]
            if h.nesterov:
                direction, ms = d + mom * b, md + mom * abs(b)
            else:
                direction, ms = b, abs(b)
        else:
            direction, ms = d, md
        e = p - lr * direction
        ep[i] = e
        m = abs(p) + abs(e) + lr * ms
        tp[i] = k * m + slack if m <= limit and ms <= limit else inf
    out = [Expected("momentum_buffer", eb, tb)] if mom else []
    out.append(Expected("param", ep, tp))
    return out


def expect_adam(
    h: AdamHyper,
    prec: Precision,
    step: float,
    *,
    param: Floats,
    grad: Floats,
    exp_avg: Floats,
    exp_avg_sq: Floats,
    max_exp_avg_sq: Floats | None,
    new_exp_avg: Floats,
    new_exp_avg_sq: Floats,
    new_max_exp_avg_sq: Floats | None,
    grad_scale: float = 1.0,
) -> list[Expected]:
    """Expected ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad) and ``param``.

    ``step`` is the step count after the optimizer's increment (1 on the first step).
    The ``new_*`` arguments are the optimizer's actual state after the step.
    """
    lr, b1, b2, wd, eps = h.lr, h.beta1, h.beta2, h.weight_decay, h.eps
    w1, w2 = 1.0 - b1, 1.0 - b2
    l2 = wd if not h.decoupled else 0.0
    shrink = 1.0 - lr * wd if h.decoupled else 1.0
    sign = (-1.0 if h.maximize else 1.0) / grad_scale
    step_size = lr / (1.0 - b1**step)
    bc2_sqrt = math.sqrt(1.0 - b2**step)
    k, slack, limit, inf = prec.ulps * prec.unit, prec.slack, prec.limit, math.inf
    blur = math.sqrt(slack) / bc2_sqrt + slack  # absolute doubt on the denominator
    # A kernel that computes 1 - beta, 1 - beta**t in float32 loses digits to cancellation:
    # relative error ~ u * beta / (1 - beta), ~ u * (t + 4) * beta**t / (1 - beta**t)
    # (beta rounded, raised to t, powf's own error). Zero on CPU, which uses float64.
    c = prec.coefficients
    c1 = c * (1.0 + b1 / w1) if w1 else 0.0
    c2 = c * (1.0 + b2 / w2) if w2 else 0.0
    b1t, b2t = b1**step, b2**step
    cu = c * (1.0 + b1t * (step + 4.0) / (1.0 - b1t) + 0.5 + 0.5 * b2t * (step + 4.0) / (1.0 - b2t))
    amsgrad = h.amsgrad
    if amsgrad and (max_exp_avg_sq is None or new_max_exp_avg_sq is None):
        raise ValueError("amsgrad is on but max_exp_avg_sq is missing")
    vmax_old: Floats = max_exp_avg_sq if max_exp_avg_sq is not None else exp_avg_sq
    second: Floats = new_max_exp_avg_sq if new_max_exp_avg_sq is not None else new_exp_avg_sq
    sqrt, nan = math.sqrt, math.nan
    em: list[float] = []
    tm: list[float] = []
    ev: list[float] = []
    tv: list[float] = []
    ex: list[float] = []
    tx: list[float] = []
    ep: list[float] = []
    tp: list[float] = []
    rows = zip(
        param, grad, exp_avg, exp_avg_sq, vmax_old, new_exp_avg, new_exp_avg_sq, second, strict=True
    )
    for p, g0, m0, v0, vmax0, m1, v1, v in rows:
        g0 *= sign
        g = g0 + l2 * p
        mg = abs(g0) + l2 * abs(p)
        ok = mg <= limit
        e = b1 * m0 + w1 * g
        em.append(e)
        t = abs(m0) + w1 * mg + abs(e)
        tm.append(k * t + slack + c1 * w1 * mg if ok and t <= limit else inf)
        e = b2 * v0 + w2 * g * g
        ev.append(e)
        t = abs(v0) + w2 * mg * mg + abs(e)
        tv.append(k * t + slack + c2 * w2 * mg * mg if ok and t <= limit else inf)
        if amsgrad:
            e = vmax0 + v1 if vmax0 != vmax0 or v1 != v1 else (vmax0 if vmax0 > v1 else v1)
            ex.append(e)  # NaN wins, as in torch.maximum
            tx.append(k * abs(e) + slack if abs(e) <= limit else inf)
        root = sqrt(v) / bc2_sqrt if v >= 0.0 else nan
        den = root + eps
        u = step_size * m1 / den
        e = p * shrink - u
        ep.append(e)
        au = abs(u)
        t = abs(p) + abs(e) + au
        if t <= limit and root <= limit and den > blur:
            tp.append(k * t + slack + au * (cu + blur / (den - blur)))
        else:
            tp.append(inf)
    out = [Expected("exp_avg", em, tm), Expected("exp_avg_sq", ev, tv)]
    if amsgrad:
        out.append(Expected("max_exp_avg_sq", ex, tx))
    out.append(Expected("param", ep, tp))
    return out


def compare(expected: Expected, actual: Floats) -> tuple[Mismatch | None, int]:
    """Judge ``actual`` against ``expected``.

    Returns the first mismatch (with the count of mismatching elements) or None, and the
    number of elements that could not be judged (non-finite, possible overflow).
    """
    inf = math.inf
    values, tolerances = expected.values, expected.tolerances
    # fast path: within a finite tolerance (NaN and inf fall through to the slow path)
    suspects = [
        i
        for i, (e, t, a) in enumerate(zip(values, tolerances, actual, strict=True))
        if not abs(a - e) <= t < inf
    ]
    first: tuple[int, float, float, float] | None = None
    count = 0
    unjudged = 0
    for i in suspects:
        e, t, a = values[i], tolerances[i], actual[i]
        if a == e or (math.isnan(e) and math.isnan(a)):
            continue
        if not expected.exact:
            if not (math.isfinite(e) and math.isfinite(t)):
                unjudged += 1
                continue
            if math.isfinite(a) and abs(a - e) <= t:
                continue
        count += 1
        if first is None:
            first = (i, e, a, t)
    if first is None:
        return None, unjudged
    i, e, a, t = first
    return Mismatch(expected.quantity, i, e, a, t, count), unjudged
