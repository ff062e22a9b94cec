"""Weights must not move between two optimizer steps (``runtime.weight_tamper``).

Between the end of optimizer step t and the start of step t+1 (forward, backward, hooks,
callbacks) nothing honest writes a trained parameter. Three exact tests cover the ways
one can:

* identity, every step, every parameter: the tensor's ``data_ptr`` (``p.data = other``,
  ``set_``, storage swaps) and its autograd ``_version`` (any in-place op on the
  parameter, ``copy_`` included), read in microseconds;
* a keyed fingerprint (``fingerprint.Fingerprinter``) of the bits, for writes that bypass
  the version counter (``p.data.add_``, raw ``untyped_storage().copy_``, 1-ulp flips,
  offsetting pairs, permutations): computed after step t and re-checked before step t+1
  on a rotating share of the elements so that every element is covered within ``every``
  steps; models up to ``full_limit`` elements (and every CUDA model, where a pass costs
  microseconds) are covered completely at every step. On CUDA the pieces are hashed in
  a few batched kernels and the verdict is read back without stalling the stream: a
  change is reported (with the step it happened at) when the next hook finds the copy
  of the flag complete, one step later at most;
* the model's parameter objects, every ``every`` steps: a module whose parameter was
  replaced (``model.fc.weight = nn.Parameter(...)``) no longer trains what the
  optimizer updates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.checks.fingerprint import SEGMENT, Fingerprinter

__all__ = ["WeightsCheck"]


@dataclass(frozen=True, slots=True)
class _Range:
    index: int
    start: int
    end: int


class WeightsCheck(Check):
    name = "weights"

    def __init__(self, *, full_limit: int = 4_000_000, batched: bool | None = None) -> None:
        self.full_limit = full_limit
        self._fp: Fingerprinter | None = None
        self._params: list[tuple[str, Any]] = []
        self._ident: list[tuple[int, int]] = []
        self._slots: list[list[_Range]] = []
        self._cursor = 0
        self._pending: list[tuple[list[_Range], Any]] = []
        self._batched: bool | None = batched
        self._async = False
        self._deferred: list[tuple[int, list[tuple[list[_Range], Any]], Any, Any, Any]] = []
        self._model_ids: dict[str, int] = {}

    # -- hooks -------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        self._fp = Fingerprinter(ctx.key)
        self._params = list(ctx.named_parameters)
        total = sum(int(p.numel()) for _, p in self._params)
        cuda = any(getattr(p, "is_cuda", False) for _, p in self._params)
        slots = 1 if (total <= self.full_limit or cuda) else ctx.every
        self._slots = _plan(self._params, slots)
        self._async = cuda
        self._batched = cuda if self._batched is None else self._batched
        self._model_ids = _model_ids(ctx.model)
        self.rebaseline(ctx)

    def rebaseline(self, ctx: GuardContext) -> None:
        self._ident = [_identity(p) for _, p in self._params]
        everything = [r for slot in self._slots for r in slot]
        self._pending = self._take(everything)
        self._model_ids = _model_ids(ctx.model)

    def before_step(self, ctx: GuardContext) -> None:
        self._poll(ctx)
        for i, (name, p) in enumerate(self._params):
            now = _identity(p)
            if now != self._ident[i]:
                self._identity_alert(ctx, name, self._ident[i], now)
        self._verify_pending(ctx)

    def after_step(self, ctx: GuardContext) -> None:
        self._ident = [_identity(p) for _, p in self._params]
        slot = self._slots[self._cursor % len(self._slots)] if self._slots else []
        self._cursor += 1
        self._pending = self._take(slot)

    def close(self, ctx: GuardContext) -> None:
        self._poll(ctx, wait=True)

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        self._poll(ctx)
        if not info.optimizer_stepped:
            self._unhooked_step(ctx)
            return
        if ctx.current_step % ctx.every:
            return
        now = _model_ids(ctx.model)
        for name, ident in now.items():
            if name in self._model_ids and self._model_ids[name] != ident:
                ctx.emit(
                    Rule.WEIGHT_TAMPER,
                    Severity.CRITICAL,
                    f"parameter {name} of the model was replaced by another tensor object; "
                    "the optimizer keeps updating the old one",
                    where=f"param:{name}",
                    evidence={"parameter": name, "how": "parameter object replaced"},
                )
        self._model_ids = now

    # -- internals ---------------------------------------------------------------------

    def _unhooked_step(self, ctx: GuardContext) -> None:
        """``guard.step()`` without an optimizer step in between is a gradient-accumulation
        micro-step, unless the weights were updated anyway: then ``optimizer.step`` ran
        without the hooks torch wraps around it (it was replaced after the optimizer was
        built, or the update came from somewhere else)."""
        moved = [n for i, (n, p) in enumerate(self._params) if _identity(p) != self._ident[i]]
        if not moved:
            return
        ctx.emit(
            Rule.MONKEYPATCH,
            Severity.CRITICAL,
            f"{len(moved)} parameters were updated after step {ctx.current_step} without "
            f"{type(ctx.optimizer).__name__}.step()'s hooks running: the step function was "
            "replaced after the optimizer was built, or something else wrote the weights",
            where=f"{type(ctx.optimizer).__module__}.{type(ctx.optimizer).__qualname__}.step",
            evidence={"parameters": moved[:20], "how": "optimizer step bypassed its hooks"},
            step=ctx.current_step + 1,
        )
        self._ident = [_identity(p) for _, p in self._params]

    def _take(self, ranges: list[_Range]) -> list[tuple[list[_Range], Any]]:
        """Digests of ``ranges``: one per range on CPU, per-segment vectors over batches
        of ranges on CUDA."""
        assert self._fp is not None
        if not self._batched:
            return [
                ([r], self._fp.digest(self._params[r.index][1], r.start, r.end)) for r in ranges
            ]
        out = []
        for batch in _batches(ranges, self._params):
            pieces = [self._fp.ints(self._params[r.index][1])[r.start : r.end] for r in batch]
            out.append((batch, self._fp.segments(pieces, _WIDTH)))
        return out

    def _verify_pending(self, ctx: GuardContext) -> None:
        if not self._pending:
            return
        import torch

        old = self._pending
        new = self._take([r for batch, _ in old for r in batch])
        diffs = [(o != n).reshape(-1) for (_, o), (_, n) in zip(old, new, strict=True)]
        if self._async:
            flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            flag.copy_(torch.cat(diffs).any(), non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record()
            self._deferred.append((ctx.current_step, old, diffs, flag, done))
            return
        if bool(torch.cat(diffs).any()):
            self._report(ctx, ctx.current_step, old, diffs)

    def _poll(self, ctx: GuardContext, *, wait: bool = False) -> None:
        """Read back CUDA verdicts whose copy has finished (all of them with ``wait``)."""
        while self._deferred:
            step, old, diffs, flag, done = self._deferred[0]
            if not wait and not done.query():
                return
            done.synchronize()
            self._deferred.pop(0)
            if bool(flag):
                self._report(ctx, step, old, diffs)

    def _report(
        self, ctx: GuardContext, step: int, old: list[tuple[list[_Range], Any]], diffs: list[Any]
    ) -> None:
        for (batch, _), diff in zip(old, diffs, strict=True):
            hits = diff.nonzero().reshape(-1).tolist()
            if not hits:
                continue
            for r in _ranges_at(batch, hits, _WIDTH if self._batched else 0):
                name, p = self._params[r.index]
                ctx.emit(
                    Rule.WEIGHT_TAMPER,
                    Severity.CRITICAL,
                    f"parameter {name} changed between optimizer steps {step - 1} and {step} "
                    "without an in-place op autograd saw (.data write, raw storage copy or "
                    "similar)",
                    where=f"param:{name}",
                    evidence={
                        "parameter": name,
                        "elements": [r.start, r.end],
                        "how": "content changed, version counter unchanged",
                        "shape": list(p.shape),
                    },
                    step=step,
                )

    def _identity_alert(
        self, ctx: GuardContext, name: str, old: tuple[int, int], now: tuple[int, int]
    ) -> None:
        how = "storage replaced (.data = ..., set_)" if old[0] != now[0] else "written in place"
        ctx.emit(
            Rule.WEIGHT_TAMPER,
            Severity.CRITICAL,
            f"parameter {name}: {how} between optimizer steps "
            f"{ctx.current_step - 1} and {ctx.current_step}",
            where=f"param:{name}",
            evidence={
                "parameter": name,
                "how": how,
                "data_ptr": [old[0], now[0]],
                "version": [old[1], now[1]],
            },
        )


def _identity(p: Any) -> tuple[int, int]:
    return int(p.data_ptr()), int(p._version)


_BATCH_ELEMENTS = 1 << 26  # 256 MB of int32 per concatenation on the GPU
_WIDTH = 4096  # segment width of the batched path: each range is padded to whole segments


def _batches(ranges: list[_Range], params: list[tuple[str, Any]]) -> list[list[_Range]]:
    """Group ranges by device and element width, at most ``_BATCH_ELEMENTS`` per group."""
    groups: dict[tuple[Any, int], list[list[_Range]]] = {}
    for r in ranges:
        p = params[r.index][1]
        key = (p.device, p.element_size())
        runs = groups.setdefault(key, [[]])
        if runs[-1] and sum(x.end - x.start for x in runs[-1]) + r.end - r.start > _BATCH_ELEMENTS:
            runs.append([])
        runs[-1].append(r)
    return [run for runs in groups.values() for run in runs if run]


def _ranges_at(batch: list[_Range], hits: list[int], segment: int) -> list[_Range]:
    """The ranges of ``batch`` that the changed positions ``hits`` fall in: positions are
    ranges (``segment`` 0) or segments of the concatenation."""
    if not segment:
        return [batch[i] for i in hits]
    out, first = [], 0
    for r in batch:
        count = -(-(r.end - r.start) // segment)
        if any(first <= h < first + count for h in hits):
            out.append(r)
        first += count
    return out


def _model_ids(model: Any) -> dict[str, int]:
    if model is None or not hasattr(model, "named_parameters"):
        return {}
    return {n: id(p) for n, p in model.named_parameters()}


def _plan(params: list[tuple[str, Any]], slots: int) -> list[list[_Range]]:
    """Split the parameters into ``slots`` groups of about equal element counts, cutting
    big tensors at segment boundaries."""
    total = sum(int(p.numel()) for _, p in params)
    share = max(SEGMENT, -(-total // max(slots, 1)))
    share = -(-share // SEGMENT) * SEGMENT
    out: list[list[_Range]] = [[]]
    room = share
    for i, (_, p) in enumerate(params):
        n, start = int(p.numel()), 0
        while start < n:
            if room == 0:
                out.append([])
                room = share
            take = min(n - start, room)
            out[-1].append(_Range(i, start, start + take))
            start += take
            room -= take
    return [s for s in out if s] or [[]]
