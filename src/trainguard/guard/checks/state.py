"""Everything else the step depends on must not move between optimizer steps either.

The weights check covers the parameters the optimizer trains. A step also computes with
the model's buffers, its frozen parameters, the plain attributes of its modules and the
optimizer's state; an insider who cannot touch the weights unseen can steer training
through any of these. This check extends the same continuity to them. Contents are held
as exact copies of their integer views (``state_digests.Snap``: one ``torch.cat`` to take,
one more and one ``torch.equal`` to verify, however many tensors) up to a limit, and as
keyed ``Fingerprinter`` digests (``Hashed``) beyond it; identity is the tensor object and
its ``(data_ptr, _version)``. What each optimizer hook covers, and why that suffices:

* buffers and frozen parameters (``state_model.py``), ``runtime.weight_tamper``. Their
  baseline is taken once (attach, a changed parameter set, the end of an authorized
  block) and never re-taken from what the run did, so a write persists until found.
  Both hooks: every slot of every module's ``_buffers``/``_parameters`` holds the same
  object at the same address (a bumped version alone, as DDP rebroadcasting identical
  buffers, sends the shares holding that tensor to be verified now: the content
  decides), and the copy is verified: all of them up to ``constant_limit`` elements,
  else the tensors of up to ``small`` elements. Pre-step hook only: beyond the limit, one
  of at most ``every`` keyed shares (digests: a copy of all would cost their memory), in
  one fixed order drawn from the run's key, so each share is verified once in any
  ``every`` consecutive steps, and an edit made while another share is due is found
  within that many steps (its baseline carried over). A write inside the optimizer step
  is found at that post-hook when it bumps the version or lies in the copy, otherwise
  when its share comes due, like a write made after the post-hook.
* normalization statistics (BatchNorm, SyncBatchNorm, InstanceNorm with running stats),
  copied and verified at both hooks (each hook's content becomes the next baseline):
  between two hooks, ``num_batches_tracked`` must advance by exactly the number of
  training-mode forwards a pre-hook counted (InstanceNorm: not at all), and
  ``running_mean``/``running_var`` may change only if there was such a forward. Both hooks
  are needed: forwards run every step, so the pre-hook alone could not tell a write from
  an update.
* module attributes and submodules: compared by identity, then by exact value, at both
  hooks (microseconds: a list of ``(dict, key, value)``). ``runtime.weight_tamper``.
* optimizer state (``state_optim.py``), ``runtime.optimizer_tamper``: it may change only
  inside the optimizer step, so it is taken at the post-step hook (the optimizer's own
  result) and verified at the next pre-step hook, and nothing at the other two. Pre-step:
  the structure and the identity of every tensor (``exp_avg``, ``exp_avg_sq``,
  ``momentum_buffer``, ``step`` ...): the same dicts, keys and objects, the same address
  and version (an in-place op or a storage swap of any of them, every step); and the
  content: all of it up to ``full_limit`` elements, else every tensor of up to ``small``
  elements (``step`` counts, biases, norm gains) plus the keyed share due, one of at most
  ``every`` (a copy when a share fits ``full_limit``, else digests; on CUDA one batched
  digest of every element, every step).
  What the rotation cannot give: a write that bypasses the version counter (``.data``,
  raw storage) to a share that is not due is folded by the next step into state that is
  the optimizer's own result from then on, so no later baseline taken from the
  optimizer's output can show it (none other is possible: the state changes honestly at
  every step). Such a one-off edit is found with probability ``1/len(shares)``, unseen
  by code without the key; an edit repeated in every window, which steering the moments
  takes, within one rotation. Below ``full_limit`` (and on CUDA) every window is covered.

What the check takes as given: the post-step copy is the optimizer's own result,
i.e. the guard's post-hook runs after every other post-hook of the optimizer (``core.py``
keeps it last) and no check after this one, nor a declared after-step write, writes
buffers or optimizer state; changes made inside ``guard.authorized()`` are the user's
(``rebaseline`` accepts the state at the block's end, and a write made just before the
block opens is absorbed with it); a training-mode forward of a normalization layer may
set its running statistics to anything (they are not recomputed); the module tree is
read through ``named_modules()`` when the guard attaches, when the parameter set changes
and at the end of an authorized block; a copy follows the addresses it was built over
(an optimizer tensor at a new address is re-planned at the post-hook, and found as a
swapped storage at the pre-hook). On CUDA a verdict is read without stalling the stream,
one step late at most.

Cost (``benchmarks/state_check_cost.py``, 2-layer d=128 GPT, 470k parameters, 84 AdamW
state tensors, CPU): about 0.6 ms a step (two ``cat``s, an ``equal``, one 64k-element
share, ``optimizer.state`` walked by identity), where a digest per state tensor at both
hooks cost 3.7 ms.
"""

from __future__ import annotations

from typing import Any

from trainguard.guard.checks._deferred import Verdicts
from trainguard.guard.checks._ranges import Range
from trainguard.guard.checks.base import Check, GuardContext
from trainguard.guard.checks.fingerprint import Fingerprinter
from trainguard.guard.checks.state_alerts import (
    changed_alerts,
    judge_norms,
    optimizer_alert,
    weight_alert,
)
from trainguard.guard.checks.state_digests import (
    Baseline,
    Digests,
    Hashed,
    Snap,
    Store,
    keyed,
    layout,
    unwatchable,
)
from trainguard.guard.checks.state_model import Modes, Scan, differs, scan, shown
from trainguard.guard.checks.state_optim import Walk, faults, refresh, walk

__all__ = ["StateCheck"]


class StateCheck(Check):
    name = "state"

    def __init__(
        self,
        *,
        full_limit: int = 1 << 18,
        constant_limit: int = 1 << 18,
        small: int = 1 << 12,
        batched: bool | None = None,
    ) -> None:
        self.full_limit = full_limit
        self.constant_limit = constant_limit
        self.small = small
        self._batched = batched
        self._fp: Fingerprinter | None = None
        self._dg: Digests | None = None
        self._scan = Scan()
        self._ident: list[tuple[int, int] | None] = []
        self._const_snap: Snap | None = None
        self._const_shares: list[Baseline] = []
        self._share_of: dict[int, list[int]] = {}  # id(constant) -> shares holding it
        self._same: tuple[tuple[Any, ...], tuple[Any, ...]] = ((), ())  # sizes, attrs
        self._cursor = 0
        self._norm_snap: Snap | None = None
        self._nbt_base: Any = None
        self._walk: Walk | None = None
        self._opt_sig: tuple[int, ...] | None = None
        self._opt_snap: Snap | None = None
        self._opt_shares: list[Baseline] = []
        self._opt_due: Baseline | None = None
        self._opt_store: tuple[Store, Store] = ({}, {})
        self._opt_cursor = 0
        self._verdicts = Verdicts()
        self._key = b""
        self._modes: Modes | None = None

    # -- hooks -------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        self._fp = Fingerprinter(ctx.key)
        self._key = ctx.key
        self._model(ctx)
        self._modes = Modes(ctx.model) if ctx.model is not None else None
        self._optimizer_baseline(ctx)

    def params_changed(self, ctx: GuardContext) -> None:
        """The optimizer's parameter set changed: a parameter it now trains leaves the
        frozen set (the weights check covers it), one it dropped joins it."""
        self._poll(ctx, wait=True)
        self._model(ctx)

    def before_step(self, ctx: GuardContext) -> None:
        self._poll(ctx)
        self._model_check(ctx, pre=True)
        modes = self._modes
        for name in modes.changed() if modes is not None else []:
            assert modes is not None
            mode = "eval" if modes.model.training else "training"
            self._weight_alert(
                ctx, f"mode:{name}", f"module {name} is in {mode} mode unlike the model around "
                "it (dropout or normalization switched for it alone)", ctx.current_step,
            )  # fmt: skip
        if self._walk is not None:
            for f in faults(ctx.optimizer, self._walk):
                self._optimizer_alert(ctx, f.where, f.what, ctx.current_step)
        if self._opt_snap is not None:
            self._verify(ctx, "optimizer", self._opt_snap)
        if self._opt_due is not None:
            self._verify(ctx, "optimizer", self._opt_due)
        self._opt_due = None

    def after_step(self, ctx: GuardContext) -> None:
        self._poll(ctx)
        self._model_check(ctx, pre=False)
        self._optimizer_baseline(ctx)

    def rebaseline(self, ctx: GuardContext) -> None:
        """An ``authorized()`` block ended: what changed is named, then accepted."""
        self._poll(ctx, wait=True)
        attrs = [a.where for a in self._scan.attrs if differs(a)[0]]
        optim = faults(ctx.optimizer, self._walk) if self._walk is not None else []
        ctx.event(
            "state.authorized",
            {
                "check": self.name,
                "attributes": attrs[:50],
                "optimizer": [f.where for f in optim][:50],
            },
        )
        self._model(ctx)
        self._optimizer_baseline(ctx, advance=False)
        self._modes = Modes(ctx.model) if ctx.model is not None else None

    def close(self, ctx: GuardContext) -> None:
        self._poll(ctx, wait=True)
        for norm in self._scan.norms:
            norm.hook.remove()

    # -- the model ---------------------------------------------------------------------

    def _model(self, ctx: GuardContext) -> None:
        """(Re)read the model and take the baselines of its constants and statistics."""
        for norm in self._scan.norms:
            norm.hook.remove()
        model = ctx.model
        trained = {id(p) for _, p in ctx.named_parameters}
        ok = model is not None and hasattr(model, "named_modules")
        self._scan = scan(model, trained, unwatchable) if ok else Scan()
        s = self._scan
        if s.skipped:
            ctx.event("state.unverified", {"check": self.name, "tensors": dict(s.skipped)})
        tensors = s.constants + s.norm_tensors + list(ctx.named_parameters)
        cuda = any(getattr(t, "is_cuda", False) for _, t in tensors)
        assert self._fp is not None
        self._dg = dg = Digests(self._fp, batched=cuda if self._batched is None else self._batched)
        copied, shares = layout(
            s.constants,
            self.constant_limit,
            self.small,
            ctx.every,
            hash_all=cuda or bool(self._batched),
        )
        self._const_snap = Snap(s.constants, copied) if copied else None
        self._const_shares = [Hashed(dg, s.constants, ranges) for ranges in shares]
        self._share_of = {}
        for k, ranges in enumerate(shares):
            for r in ranges:
                self._share_of.setdefault(id(s.constants[r.index][1]), []).append(k)
        for base in [self._const_snap, *self._const_shares]:
            if base is not None:
                base.take()  # fixed: verified against, never re-taken until rebaseline
        self._ident = [_identity(h.tensor) for h in s.held]
        self._same = (
            tuple((o, n) for _, o, n in s.sizes),
            tuple((a.owner, a.key, a.value) for a in s.attrs if not a.mutable),
        )
        everything = [Range(i, 0, int(t.numel())) for i, (_, t) in enumerate(s.norm_tensors)]
        self._norm_snap = Snap(s.norm_tensors, everything) if everything else None
        if self._norm_snap is not None:
            self._norm_snap.take()
        self._nbt_base = _stack(self._tracked())
        for norm in s.norms:
            norm.forwards = 0

    def _tracked(self) -> list[Any]:
        s = self._scan
        return [s.norm_tensors[n.tracked][1] for n in s.norms if n.tracked is not None]

    def _model_check(self, ctx: GuardContext, *, pre: bool) -> None:
        s, step = self._scan, ctx.current_step
        same = self._same
        if not (
            all(len(o) == n for o, n in same[0])
            and all(o.get(k, _GONE) is v for o, k, v in same[1])
        ):
            self._moved(ctx, step)
        for a in [a for a in s.attrs if a.mutable]:
            self._attr(ctx, a, step)
        self._held(ctx, step, pre=pre)
        self._norm_check(ctx)

    def _moved(self, ctx: GuardContext, step: int) -> None:
        """Something in the module tree is not what it was (``_same`` said so): name it."""
        s = self._scan
        for where, owner, n in [x for x in s.sizes if len(x[1]) != x[2]]:
            self._weight_alert(ctx, where, f"the {where} changed: {n} -> {len(owner)}", step)
        for a in [a for a in s.attrs if not a.mutable]:
            self._attr(ctx, a, step)

    def _attr(self, ctx: GuardContext, a: Any, step: int) -> None:
        changed, now = differs(a)
        if changed:
            what = "was replaced by another module" if a.frozen is None else "changed"
            old = "" if a.frozen is None else f": {shown(a.value)} -> {shown(now)}"
            self._weight_alert(ctx, a.where, f"{a.where} {what}{old}", step)

    def _held(self, ctx: GuardContext, step: int, *, pre: bool) -> None:
        """Buffers and frozen parameters: identity at both hooks, content (module
        docstring)."""
        s = self._scan
        due: set[int] = set()
        for i, h in enumerate(s.held):
            now_t = h.owner.get(h.key, _GONE)
            if now_t is not h.tensor:
                self._weight_alert(ctx, h.where, f"{h.where} was replaced by another object", step)
                continue
            ident, base = _identity(h.tensor), self._ident[i]
            if ident == base or ident is None or base is None:
                continue
            if ident[0] != base[0]:
                self._weight_alert(ctx, h.where, f"{h.where}: storage replaced", step)
            else:
                due.update(self._share_of.get(id(h.tensor), ()))  # content decides
            self._ident[i] = ident
        if self._const_snap is not None:
            self._verify(ctx, "constants", self._const_snap)
        if pre and self._const_shares:
            due.add(keyed(self._key, b"constants", self._cursor, len(self._const_shares)))
            self._cursor += 1
        for k in sorted(due):
            self._verify(ctx, "constants", self._const_shares[k])

    def _norm_check(self, ctx: GuardContext) -> None:
        s, snap = self._scan, self._norm_snap
        if not s.norms or snap is None:
            return
        import torch

        diffs = snap.diffs(retake=True)
        now = _stack(self._tracked())
        advance = (now - self._nbt_base) if now is not None else None
        counts = [n.forwards for n in s.norms]
        if diffs is None:
            device = advance.device if advance is not None else "cpu"
            flags = torch.zeros(1, dtype=torch.int64, device=device)
        else:
            flags = torch.cat([d.to(torch.int64) for d in diffs]).sum().reshape(1)
        verdict = flags if advance is None else torch.cat([flags.to(advance.device), advance])
        self._verdicts.push(("norms", ctx.current_step, snap, diffs or [], counts), verdict)
        self._nbt_base = now
        for norm in s.norms:
            norm.forwards = 0
        if not getattr(verdict, "is_cuda", False):
            self._poll(ctx)

    # -- the optimizer -----------------------------------------------------------------

    def _optimizer_baseline(self, ctx: GuardContext, *, advance: bool = True) -> None:
        """Right after the optimizer's own update: copy (or hash) what the next pre-step
        hook verifies. ``advance`` False (an authorized block ended) re-takes the share
        that was due rather than moving the rotation on."""
        last = self._walk
        w = refresh(ctx.optimizer, last) if last is not None else None
        if w is None:
            w = walk(ctx.optimizer, {id(p): n for n, p in ctx.named_parameters})
        self._walk = w
        assert self._dg is not None
        moved = last is None or w.entries is not last.entries or _moved(w, last)
        if moved and w.signature() != self._opt_sig:
            self._opt_sig = w.signature()
            cuda = any(getattr(t, "is_cuda", False) for _, t in w.tensors)
            copied, shares = layout(
                w.tensors,
                self.full_limit,
                self.small,
                ctx.every,
                hash_all=cuda or bool(self._batched),
            )
            self._opt_snap = Snap(w.tensors, copied) if copied else None
            store, spare = self._opt_store
            largest = max((sum(r.end - r.start for r in rs) for rs in shares), default=0)
            snap = not (cuda or self._batched) and largest <= self.full_limit
            self._opt_shares = [
                Snap(w.tensors, rs, store, spare) if snap else Hashed(self._dg, w.tensors, rs)
                for rs in shares
            ]
        if self._opt_snap is not None:
            self._opt_snap.take()
        self._opt_due = None
        if self._opt_shares:
            counter = self._opt_cursor if advance else max(self._opt_cursor - 1, 0)
            self._opt_due = self._opt_shares[
                keyed(self._key, b"optimizer", counter, len(self._opt_shares))
            ]
            self._opt_due.take()
            self._opt_cursor += int(advance)

    # -- verdicts ----------------------------------------------------------------------

    def _verify(self, ctx: GuardContext, kind: str, base: Baseline) -> None:
        diffs = base.diffs()
        if diffs is None:
            return  # compared on the host: unchanged
        import torch

        flag = torch.cat([d.to(torch.int64) for d in diffs]).sum().reshape(1)
        self._verdicts.push((kind, ctx.current_step, base, diffs, []), flag)
        if not getattr(flag, "is_cuda", False):
            self._poll(ctx)

    def _poll(self, ctx: GuardContext, *, wait: bool = False) -> None:
        for (kind, step, old, diffs, counts), verdict in self._verdicts.ready(wait=wait):
            changed = old.changed(diffs) if verdict[0] else []
            if kind == "norms":
                judge_norms(ctx, self._scan.norms, step, set(changed), counts, verdict[1:])
            else:
                changed_alerts(ctx, kind, [old.tensors[i][0] for i in changed], step)

    def _weight_alert(self, ctx: GuardContext, where: str, what: str, step: int) -> None:
        weight_alert(ctx, where, what, step)

    def _optimizer_alert(self, ctx: GuardContext, where: str, what: str, step: int) -> None:
        optimizer_alert(ctx, where, what, step)


_GONE = object()


def _moved(w: Walk, last: Walk) -> bool:
    """Whether a tensor of an unchanged structure now lives at another address."""
    return any(a[0] != b[0] for a, b in zip(w.idents, last.idents, strict=True))


def _identity(t: Any) -> tuple[int, int] | None:
    if t is None or not hasattr(t, "data_ptr"):
        return None
    return int(t.data_ptr()), int(t._version)


def _stack(tensors: list[Any]) -> Any:
    if not tensors:
        return None
    import torch

    device = tensors[0].device
    return torch.stack([t.detach().reshape(()).to(device, torch.int64) for t in tensors])
