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

Parameters that join the optimizer mid-run (``add_param_group``) are covered from the
optimizer step at which the guard sees them (``params_changed``).

Writes the user means are modelled, never waved through. ``nn.Embedding(max_norm=...)``'s
renorm during forward is replayed and judged (``renorm.py``). Parameters the guard writes
itself after the optimizer step (declared constraints and after-step functions,
``trainguard.guard.writes``) are baselined after those writes (``retake``). Such
parameters are covered completely at every step, so for them an in-place write that
changes no bit (a loop that still clamps) is no alarm: their content decides.

Windows: when a ``guard.authorized()`` block opens, in-place writes made since the
baseline are judged at once by identity (the block does not absorb them; a write around
the version counter just before it is absorbed with the block's own, which only hashing
everything at the open would tell apart). When it ends, only the ranges due for
verification are hashed again, once, both to see what changed (a ``weights.authorized``
event names those parameters and how, or says nothing changed: an EMA
store/copy_to/restore leaves the weights bit-identical) and as the new baseline, instead
of re-hashing the whole model and verifying it all again at the next step. Autograd's
version counter only labels what was written in place; it never decides what is hashed,
because ``.data`` and raw storage writes bypass it. ``guard.swapped()`` must end
bit-identical to its start: the ranges not already due are fingerprinted when it opens,
every element is verified when it ends, and a difference is ``runtime.weight_tamper``.
"""

from __future__ import annotations

from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._ranges import WIDTH, Range, batches, plan, ranges_at
from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.checks.fingerprint import Fingerprinter
from trainguard.guard.checks.renorm import RenormWatch

__all__ = ["WeightsCheck"]

_Why = tuple[str, frozenset[int]]  # the window kind ("swapped" or ""), parameters written in place


class WeightsCheck(Check):
    name = "weights"

    def __init__(self, *, full_limit: int = 4_000_000, batched: bool | None = None) -> None:
        self.full_limit = full_limit
        self._fp: Fingerprinter | None = None
        self._params: list[tuple[str, Any]] = []
        self._ident: list[tuple[int, int]] = []
        self._slots: list[list[Range]] = []
        self._cursor = 0
        self._pending: list[tuple[list[Range], Any]] = []
        self._batched: bool | None = batched
        self._async = False
        self._deferred: list[tuple[int, list[tuple[list[Range], Any]], Any, Any, Any, _Why]] = []
        self._model_ids: dict[str, int] = {}
        self._renorm = RenormWatch()
        self._renorms: set[int] = set()  # ids of weights a max_norm embedding renorms
        self._writers: set[int] = set()  # ids of parameters the guard writes after a step
        self._whole: list[Range] = []  # those and the renormed: covered at every step
        self._extra: list[tuple[list[Range], Any]] | None = None  # a swap's other ranges

    # -- hooks -------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        self._fp = Fingerprinter(ctx.key)
        self._renorms = self._renorm.attach(ctx.model, ctx.named_parameters)
        self._renorm.step = ctx.last_step + 1
        self._cover(ctx)
        self._batched = self._async if self._batched is None else self._batched
        self._model_ids = _model_ids(ctx.model)
        self._baseline()

    def params_changed(self, ctx: GuardContext) -> None:
        """``add_param_group``: plan over the new set. ``before_step`` has just checked the
        old one, so the new parameters start from their state now; their first digests are
        taken after this step like every other slot's."""
        self._poll(ctx, wait=True)  # deferred verdicts name ranges of the old plan
        self._renorms = self._renorm.attach(ctx.model, ctx.named_parameters)
        self._cover(ctx)
        self._ident = [_identity(p) for _, p in self._params]
        self._pending = []

    def _cover(self, ctx: GuardContext) -> None:
        self._params = list(ctx.named_parameters)
        total = sum(int(p.numel()) for _, p in self._params)
        cuda = any(getattr(p, "is_cuda", False) for _, p in self._params)
        slots = 1 if (total <= self.full_limit or cuda) else ctx.every
        whole = self._renorms | self._writers
        every = {i for i, (_, p) in enumerate(self._params) if id(p) in whole}
        self._whole = [Range(i, 0, int(self._params[i][1].numel())) for i in sorted(every)]
        self._slots = plan(self._params, slots, skip=every)
        self._async = cuda

    def _baseline(self) -> None:
        self._ident = [_identity(p) for _, p in self._params]
        everything = [r for slot in self._slots for r in slot]
        self._pending = self._take(everything + self._whole)
        self._renorm.reset()

    def rebaseline(self, ctx: GuardContext) -> None:
        """An ``authorized()`` block ended: hash the ranges due for verification once
        (module docstring); what changed is named, then taken as the baseline."""
        overlay = self._renorm.restored(self._params)
        old = self._pending
        due = [r for batch, _ in old for r in batch]
        due += [r for r in self._whole if r not in due]
        self._pending = self._take(due)
        changed = self._changed(old, self._again(old, overlay))
        bumped = {
            i
            for i, (_, p) in enumerate(self._params)
            if _identity(p) != self._ident[i] and id(p) not in self._renorms
        }
        how = {
            i: ("written in place" if i in bumped else "written around the version counter")
            if i in changed
            else "rewritten with the same bits"
            for i in sorted(changed | bumped)
        }
        ctx.event(
            "weights.authorized",
            {
                "check": self.name,
                "unchanged": not changed,
                "written": {self._params[i][0]: h for i, h in list(how.items())[:50]},
                "hashed_elements": sum(r.end - r.start for r in due),
            },
        )
        self._ident = [_identity(p) for _, p in self._params]
        self._model_ids = _model_ids(ctx.model)
        self._renorm.reset()
        self._renorm.suspended = False
        self._extra = None

    def before_step(self, ctx: GuardContext) -> None:
        self._poll(ctx)
        self._check_identity(ctx)
        self._verify(ctx, self._pending)

    def after_step(self, ctx: GuardContext) -> None:
        self._ident = [_identity(p) for _, p in self._params]
        slot = self._slots[self._cursor % len(self._slots)] if self._slots else []
        self._cursor += 1
        late = [r for r in self._whole if id(self._params[r.index][1]) in self._writers]
        self._pending = self._take(slot + [r for r in self._whole if r not in late])
        self._renorm.reset()
        self._renorm.step = ctx.current_step + 1

    def close(self, ctx: GuardContext) -> None:
        self._poll(ctx, wait=True)
        self._renorm.close()

    # -- declared writes and windows (trainguard.guard.writes) -------------------------

    def expect_writes(self, ctx: GuardContext, params: list[Any]) -> None:
        """The guard writes ``params`` after each optimizer step: cover them whole, take
        their baseline in ``retake``."""
        self._writers = {id(p) for p in params}
        self._cover(ctx)

    def retake(self, ctx: GuardContext) -> None:
        """The guard's post-step writes are done: baseline what they wrote."""
        late = [r for r in self._whole if id(self._params[r.index][1]) in self._writers]
        for r in late:
            self._ident[r.index] = _identity(self._params[r.index][1])
        self._pending = self._pending + self._take(late)

    def open_window(self, ctx: GuardContext, *, restore: bool) -> None:
        """A guard window opens: judge the writes since the baseline by identity now; for
        a swap (``restore``), fingerprint what is not already due, to verify at its end."""
        self._check_identity(ctx)
        self._renorm.suspended = True
        if restore:
            due = {r for batch, _ in self._pending for r in batch}
            rest = [r for slot in self._slots for r in slot if r not in due]
            overlay = self._renorm.restored(self._params)
            self._extra = self._take(rest + [r for r in self._whole if r not in due], overlay)

    def close_swap(self, ctx: GuardContext) -> None:
        """A ``guard.swapped()`` block ended: every element must be as it began."""
        self._verify(ctx, self._pending + (self._extra or []), swapped=True)
        self._extra = None
        self._ident = [_identity(p) for _, p in self._params]
        self._renorm.suspended = False

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
        moved = [
            n
            for i, (n, p) in enumerate(self._params)
            if _identity(p) != self._ident[i] and not self._tolerant(p, _identity(p), i)
        ]
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

    def _tolerant(self, p: Any, now: tuple[int, int], i: int) -> bool:
        """A parameter covered whole at every step may be written in place (same storage)
        without an alarm: its content is verified completely."""
        whole = id(p) in self._renorms or id(p) in self._writers
        return whole and now[0] == self._ident[i][0]

    def _check_identity(self, ctx: GuardContext) -> None:
        for i, (name, p) in enumerate(self._params):
            now = _identity(p)
            if now != self._ident[i] and not self._tolerant(p, now, i):
                self._identity_alert(ctx, name, self._ident[i], now)

    def _take(
        self, ranges: list[Range], overlay: dict[int, Any] | None = None
    ) -> list[tuple[list[Range], Any]]:
        """Digests of ``ranges``: one per range on CPU, per-segment vectors over batches
        of ranges on CUDA. ``overlay`` replaces a parameter by a tensor of its shape (the
        weight a renorm replay says it had at the baseline)."""
        assert self._fp is not None
        fp, over = self._fp, overlay or {}

        def source(i: int) -> Any:
            return over.get(i, self._params[i][1])

        if not self._batched:
            return [([r], fp.digest(source(r.index), r.start, r.end)) for r in ranges]
        out = []
        for batch in batches(ranges, self._params):
            pieces = [fp.ints(source(r.index))[r.start : r.end] for r in batch]
            out.append((batch, fp.segments(pieces, WIDTH)))
        return out

    def _again(
        self, old: list[tuple[list[Range], Any]], overlay: dict[int, Any]
    ) -> list[tuple[list[Range], Any]]:
        """Digests of the same batches as ``old``, of the content now (or ``overlay``)."""
        return [d for batch, _ in old for d in self._take(batch, overlay)]

    def _verify(
        self, ctx: GuardContext, old: list[tuple[list[Range], Any]], *, swapped: bool = False
    ) -> None:
        overlay = self._renorm.restored(self._params)
        if not old:
            return
        import torch

        new = self._again(old, overlay)
        diffs = [(o != n).reshape(-1) for (_, o), (_, n) in zip(old, new, strict=True)]
        bumped = {i for i, (_, p) in enumerate(self._params) if _identity(p) != self._ident[i]}
        why = ("swapped" if swapped else "", frozenset(bumped))
        if self._async:
            flag = torch.empty((), dtype=torch.bool, pin_memory=True)
            flag.copy_(torch.cat(diffs).any(), non_blocking=True)
            done = torch.cuda.Event()  # type: ignore[no-untyped-call]
            done.record()
            self._deferred.append((ctx.current_step, old, diffs, flag, done, why))
            return
        if bool(torch.cat(diffs).any()):
            self._report(ctx, ctx.current_step, old, diffs, why)

    def _changed(
        self, old: list[tuple[list[Range], Any]], new: list[tuple[list[Range], Any]]
    ) -> set[int]:
        """Parameters whose digests differ (read now: windows are rare)."""
        out: set[int] = set()
        for (batch, o), (_, n) in zip(old, new, strict=True):
            hits = (o != n).reshape(-1).nonzero().reshape(-1).tolist()
            out.update(r.index for r in ranges_at(batch, hits, WIDTH if self._batched else 0))
        return out

    def _poll(self, ctx: GuardContext, *, wait: bool = False) -> None:
        """Read back CUDA verdicts whose copy has finished (all of them with ``wait``)."""
        self._renorm.poll(ctx, wait=wait)
        while self._deferred:
            step, old, diffs, flag, done, why = self._deferred[0]
            if not wait and not done.query():
                return
            done.synchronize()
            self._deferred.pop(0)
            if bool(flag):
                self._report(ctx, step, old, diffs, why)

    def _report(
        self,
        ctx: GuardContext,
        step: int,
        old: list[tuple[list[Range], Any]],
        diffs: list[Any],
        why: _Why,
    ) -> None:
        for (batch, _), diff in zip(old, diffs, strict=True):
            hits = diff.nonzero().reshape(-1).tolist()
            if not hits:
                continue
            for r in ranges_at(batch, hits, WIDTH if self._batched else 0):
                name, p = self._params[r.index]
                if why[0]:
                    message = (
                        f"parameter {name} is not bit-identical at the end of a "
                        "guard.swapped() block to what it was when the block began"
                    )
                    how = "not restored after a swap"
                elif r.index in why[1]:
                    message = (
                        f"parameter {name} changed between optimizer steps {step - 1} and "
                        f"{step} (written in place, and no declared write explains it)"
                    )
                    how = "content changed, written in place"
                else:
                    message = (
                        f"parameter {name} changed between optimizer steps {step - 1} and "
                        f"{step} without an in-place op autograd saw (.data write, raw "
                        "storage copy or similar)"
                    )
                    how = "content changed, version counter unchanged"
                ctx.emit(
                    Rule.WEIGHT_TAMPER,
                    Severity.CRITICAL,
                    message,
                    where=f"param:{name}",
                    evidence={
                        "parameter": name,
                        "elements": [r.start, r.end],
                        "how": how,
                        "shape": list(p.shape),
                    },
                    step=step,
                )

    def _identity_alert(
        self, ctx: GuardContext, name: str, old: tuple[int, int], now: tuple[int, int]
    ) -> None:
        how = "storage replaced (.data = ..., set_)" if old[0] != now[0] else "written in place"
        step = ctx.last_step + 1  # the step the window leads to (also from an open block)
        ctx.emit(
            Rule.WEIGHT_TAMPER,
            Severity.CRITICAL,
            f"parameter {name}: {how} between optimizer steps {step - 1} and {step}",
            where=f"param:{name}",
            evidence={
                "parameter": name,
                "how": how,
                "data_ptr": [old[0], now[0]],
                "version": [old[1], now[1]],
            },
            step=step,
        )


def _identity(p: Any) -> tuple[int, int]:
    return int(p.data_ptr()), int(p._version)


def _model_ids(model: Any) -> dict[str, int]:
    if model is None or not hasattr(model, "named_parameters"):
        return {}
    return {n: id(p) for n, p in model.named_parameters()}
