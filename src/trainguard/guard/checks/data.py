"""Data order: the sampler must yield the order its own definition implies.

Why: a re-ordered, thinned or padded data stream (a patched sampler, a patched
``torch.randperm``, an epoch that never advances) changes what the model learns without
touching weights or optimizer code. For the samplers torch ships (exactly
``RandomSampler``, ``DistributedSampler`` and ``SequentialSampler``) the order is a pure
function of state the guard can read: the RNG state just before the sampler draws, or
``seed + epoch``. So the guard recomputes it with its own references to
``torch.randperm`` and ``torch.Generator`` (taken when this module is imported) and
compares every index as the loader draws it. An attacker who patches torch *before* this
module is imported poisons both sides; that is out of reach of any in-process check.
accelerate's ``SeedableRandomSampler`` (every Hugging Face ``Trainer``) is recomputed the
same way, from ``initial_seed`` and an epoch the check counts itself; its
``BatchSamplerShard`` and ``SkipBatchSampler`` are replayed over the batches they wrap
(``accelerate_sampler`` and ``accelerate_batches`` say what each trusts).

How it attaches: a recording proxy replaces the object that yields indices in the main
process (worker processes only receive indices, so ``num_workers > 0`` is covered):
``batch_sampler.sampler`` of a standard ``BatchSampler``, or the loader's ``sampler``
itself when ``batch_size=None``; under accelerate's wrappers a second proxy replaces the
loader's ``batch_sampler``, and what it yields is what is fingerprinted. accelerate's
``DataLoaderShard`` is looked through to the ``DataLoader`` it iterates. The proxy
answers ``isinstance`` like the sampler it wraps, delegates every attribute
(``set_epoch``, ``epoch``...), pickles as the original, and ``close()`` puts the
original back.

Steps: an index is attributed to the optimizer step that was running when the loader
drew it (``guard.steps + 1``: the batch drawn after step ``t`` trains step ``t + 1``).
With ``num_workers > 0`` the loader draws ``num_workers * prefetch_factor`` batches
ahead, so an alert may come that many steps *before* the bad batch trains.

Limits: a torch sampler whose epoch never advances (``set_epoch`` not called, or patched
to do nothing) repeats its order honestly as far as this check can tell; a thread
drawing from the global CPU RNG in the microseconds between the snapshot and a
``RandomSampler``'s seed draw would make the snapshot stale; a ``DistributedSampler``
whose dataset changed length after it was built is flagged, because its cached sizes
then drop samples. A sampler replaced behind the guard's recorder is not recomputed again; the
replacement itself is ``runtime.data_content``.

Fingerprints, for a later replay (``data_window``): each batch's sample indices (compact)
with their keyed BLAKE2b, and a keyed projection of the tensors handed to
``guard.step(batch=...)``, recorded as ``data.fingerprints`` events. Samplers that
cannot be recomputed are fingerprinted only, with one ``data.unverified`` event saying
which and why.

Content (``runtime.data_content``): at every optimizer step, before the update, the
objects that decide what the loader yields are compared by identity (``data_watch``:
the loader's ``collate_fn``, samplers, dataset, the dataset's class and methods, its
tensors' data pointers), and a keyed rotation of the dataset's tensors and arrays is
verified against their fingerprints at attach (``data_tensors``); the dataset's
fetching code is judged once at attach (``data_origin``). Each names what changed and
the step. What each of those trusts is said in its module.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import (
    DataLoader,
    IterableDataset,
)

from trainguard.guard.checks._codehash import SourceIndex
from trainguard.guard.checks.accelerate_batches import BatchModel, BatchPass, batch_model
from trainguard.guard.checks.accelerate_sampler import (
    SeedableOrder,
    dispatcher_reason,
    drawing_loader,
    seedable_order,
)
from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.checks.data_alerts import (
    batch_alert,
    content_alert,
    internal_error,
    order_alert,
)
from trainguard.guard.checks.data_contents import Projector
from trainguard.guard.checks.data_streams import order_stream, wrapped_stream
from trainguard.guard.checks.data_tensors import Change, ContentWatch
from trainguard.guard.checks.data_watch import LoaderWatch
from trainguard.guard.checks.data_window import FingerprintWindow
from trainguard.guard.checks.sampler_order import (
    Plan,
    plan_for,
    standard_batch_sampler,
    unverified_reason,
)
from trainguard.guard.checks.sampler_proxy import SamplerProxy

__all__ = ["DataCheck"]


class DataCheck(Check):
    """Verify the sampler's index order, watch what feeds the loader, fingerprint both.

    ``content_bytes`` bounds the bytes of each tensor of ``guard.step(batch=...)`` that
    are fingerprinted (a longer one is read on an even stride, the same on every device,
    so a replay elsewhere compares); 0 turns content fingerprints off.
    ``dataset_bytes`` is how many bytes of the dataset's tensors are verified per step
    (0: identity only), ``dataset_cap`` how many are fingerprinted at attach at most.
    """

    name = "data"

    def __init__(
        self,
        *,
        content_bytes: int = 1 << 20,
        dataset_bytes: int = 1 << 18,
        dataset_cap: int = 1 << 28,
    ) -> None:
        self.content_bytes = content_bytes
        self.dataset_bytes = dataset_bytes
        self.dataset_cap = dataset_cap
        self._projector: Projector | None = None
        self._ctx: GuardContext | None = None
        self._key = b""
        self._closed = False
        self._installed: list[tuple[Any, str, Any, Any, bool]] = []
        self._seedable: SeedableOrder | None = None  # accelerate's sampler, if that is it
        self._batches: BatchModel | None = None  # accelerate's batch-sampler wrappers
        self._tap: BatchPass | None = None  # the wrappers' replay of the current pass
        self._wrapped_passes = 0
        self._group = 1
        self._drop_tail = False
        self._passes = 0
        self._unverified: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._window: FingerprintWindow | None = None
        self._watch: LoaderWatch | None = None
        self._index = SourceIndex()

    # -- hooks -------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        self._ctx = ctx
        self._key = bytes(ctx.key[:64])
        self._projector = Projector(bytes(ctx.key), self.content_bytes)
        self._window = FingerprintWindow(self._key, ctx.event)
        self._window.unavailable = self._recorders(ctx.dataloader)
        self._build_watch(ctx, at_attach=True)

    def before_step(self, ctx: GuardContext) -> None:
        """Identity of the loader's parts and a slice of the dataset's bytes: before the
        optimizer applies the step, so ``stop_on`` can keep a poisoned step out."""
        watch = self._watch
        if watch is None:
            return
        step = int(ctx.current_step)
        self._report(ctx, watch.check(step))
        if self.dataset_bytes > 0:
            self._report(ctx, watch.contents.check(step))

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        projector, window = self._projector, self._window
        if info.batch is not None and self.content_bytes > 0 and projector is not None:
            found = projector.batch(info.batch)
            if found is not None and window is not None:
                window.add_contents(int(ctx.current_step), *found)
        if info.optimizer_stepped and _completed(ctx) % max(int(ctx.every), 1) == 0:
            self._flush()
            if self._watch is not None:  # dataset bytes off the CPU: one read-back
                self._report(ctx, self._watch.contents.resolve())

    def rebaseline(self, ctx: GuardContext) -> None:
        """What the user changed inside ``guard.authorized()`` is the new baseline."""
        self._build_watch(ctx, at_attach=False)

    def close(self, ctx: GuardContext) -> None:
        self._closed = True
        installed, self._installed = self._installed, []
        for owner, attr, original, proxy, on_loader in reversed(installed):
            if getattr(owner, attr, None) is proxy:  # leave a later replacement alone
                if on_loader:
                    object.__setattr__(owner, attr, original)
                else:
                    setattr(owner, attr, original)
        if self._watch is not None:
            self._report(ctx, self._watch.contents.resolve())
        self._watch = None
        self._flush()
        # An epoch still being drawn keeps this check alive; without the guard it lets
        # the loader (and its persistent workers) be freed now, not by a later GC pass.
        self._ctx = None

    # -- installing --------------------------------------------------------------------

    def _recorders(self, loader: Any) -> str:
        """Install the recorders; returns why the loader has no sample indices ("" when
        it has them)."""
        if loader is None:
            return "no dataloader was given to the guard"
        if not isinstance(loader, DataLoader):
            self._note(loader, "not a torch DataLoader: only batch contents are fingerprinted")
            return "not a torch DataLoader"
        if isinstance(loader.dataset, IterableDataset):
            self._note(loader.dataset, "iterable dataset: it orders itself, no sampler to check")
            return "iterable dataset: it yields samples, not indices"
        reason = dispatcher_reason(loader)
        if reason:
            self._note(loader, reason)
        loader = drawing_loader(loader)  # accelerate's wrappers draw from an inner loader
        outer = loader.batch_sampler
        if outer is None:  # batch_size=None: the sampler yields the indices itself
            self._install(loader, "sampler", loader.sampler, index=True)
            return ""
        standard = standard_batch_sampler(outer)
        if standard is None:
            self._note(outer, "custom batch sampler: order not verified, batches fingerprinted")
            self._install(loader, "batch_sampler", outer, watch=self._watch_batches)
            return ""
        if standard is not outer:
            model = batch_model(outer, standard)
            if isinstance(model, str):
                self._note(outer, model)
            elif self._install(loader, "batch_sampler", outer, watch=self._watch_wrapped):
                self._batches = model
        size = standard.batch_size
        self._group = size if isinstance(size, int) and size > 0 else 1
        self._drop_tail = bool(standard.drop_last)
        self._install(standard, "sampler", standard.sampler, index=True)
        return ""

    def _build_watch(self, ctx: GuardContext, *, at_attach: bool) -> None:
        """Snapshot the loader's parts and fingerprint the dataset (again, after an
        ``authorized()`` block); at attach, judge the dataset's code."""
        given = ctx.dataloader
        self._watch = None
        if not isinstance(given, DataLoader):
            return
        contents = ContentWatch(self._key, budget=self.dataset_bytes, cap=self.dataset_cap)
        watch = LoaderWatch(contents, self._index)
        watch.watch_guard(ctx, given, drawing_loader(given))
        contents.seal()
        self._watch = watch
        for where, reason in contents.notes:
            self._note(where, reason)
        if contents.skipped:
            self._note(given, f"dataset content over the cap: {contents.skipped} bytes skipped")
        if not at_attach:
            return
        step = int(ctx.current_step)
        for origin in watch.origins:
            if origin.note:
                self._note(origin.owner, origin.note)
            if origin.problem:
                where = f"dataset.{origin.method}"
                content_alert(ctx, where, origin.problem, origin.evidence(), step)

    def _report(self, ctx: GuardContext, changes: list[Change]) -> None:
        for change in changes:
            content_alert(ctx, change.where, change.what, change.evidence, change.step)

    # -- installing --------------------------------------------------------------------

    def _install(
        self,
        owner: Any,
        attr: str,
        original: Any,
        *,
        index: bool = False,
        watch: Callable[[Any], Iterator[Any]] | None = None,
    ) -> bool:
        """Put the proxy in place; ``DataLoader`` forbids ``setattr`` of its samplers
        after ``__init__``, so the loader's own attributes are set under it."""
        proxy = SamplerProxy(original, self._watch_indices if watch is None else watch)
        on_loader = isinstance(owner, DataLoader)
        try:
            if on_loader:
                object.__setattr__(owner, attr, proxy)
            else:
                setattr(owner, attr, proxy)
        except (AttributeError, TypeError, ValueError) as exc:
            self._note(original, f"could not install the recorder: {exc}")
            return False
        if on_loader and getattr(owner, "_index_sampler", None) is not proxy:
            object.__setattr__(owner, attr, original)  # this torch draws from elsewhere
            self._note(original, "the loader does not draw from the replaced sampler")
            return False
        self._installed.append((owner, attr, original, proxy, on_loader))
        if index:
            self._seedable = seedable_order(original)  # reads what it trusts, now
            reason = self._reason(original)
            if reason:
                self._note(original, reason)
        return True

    def _reason(self, sampler: Any) -> str:
        seedable = self._seedable
        if seedable is not None and seedable.sampler is sampler:
            return seedable.reason
        return unverified_reason(sampler)

    def _note(self, obj: Any, reason: str) -> None:
        name = _class_name(obj)
        if (name, reason) in self._unverified or self._ctx is None:
            return
        self._unverified.add((name, reason))
        self._ctx.event("data.unverified", {"class": name, "reason": reason})

    # -- the recording streams ---------------------------------------------------------

    def _watch_indices(self, inner: Any) -> Iterator[Any]:
        it = iter(inner)  # at the same moment as without the guard
        plan: Plan | None = None
        if not self._closed:
            try:
                reason = self._reason(inner)
                seedable = self._seedable
                if reason:
                    self._note(inner, reason)
                elif seedable is not None and seedable.sampler is inner:
                    plan = seedable.plan()
                else:
                    plan = plan_for(inner)
            except Exception as exc:  # noqa: BLE001 - never break the loader; report instead
                self._internal_error("plan", exc)
        return order_stream(self, it, plan, _class_name(inner), batches=False)

    def _watch_batches(self, inner: Any) -> Iterator[Any]:
        return order_stream(self, iter(inner), None, _class_name(inner), batches=True)

    def _watch_wrapped(self, inner: Any) -> Iterator[Any]:
        it: Iterator[Any] = iter(inner)
        model = self._batches
        if self._closed or model is None:
            return it
        epoch, self._wrapped_passes = self._wrapped_passes, self._wrapped_passes + 1
        return wrapped_stream(self, it, model.start(), _class_name(inner), epoch)

    def _new_pass(self) -> int:
        with self._lock:
            epoch = self._passes
            self._passes += 1
        if self._window is not None:
            self._window.new_pass(epoch)
        return epoch

    def _take(self, group: list[Any] | None, batches: bool) -> None:
        """Record a batch (``None``: the pass ended); under accelerate's wrappers, hand
        it to their replay instead: what they yield is what this process trains on, and
        is recorded there."""
        tap = None if batches else self._tap
        try:
            if tap is not None and group is not None:
                tap.add(group)
            elif tap is not None:
                tap.end()
            elif group is not None:
                self._record(group, batches)
        except Exception as exc:  # noqa: BLE001 - report, let the loader go on
            self._internal_error("replay", exc)

    def _record(self, group: list[Any], batches: bool) -> None:
        try:
            if self._window is not None:
                self._window.add(self._next_step(), list(group[0]) if batches else group)
        except Exception as exc:  # noqa: BLE001 - report, let the loader go on
            self._internal_error("fingerprint", exc)

    def _alert_order(
        self, plan: Plan, name: str, epoch: int, start: int, got: list[Any], want: list[Any]
    ) -> None:
        if self._ctx is not None and not self._closed:
            order_alert(self._ctx, plan, name, epoch, start, got, want, self._next_step())

    def _alert_batch(
        self, replay: BatchPass, name: str, epoch: int, pos: int, got: Any, kind: str, want: Any
    ) -> None:
        if self._ctx is not None and not self._closed:
            evidence = dict(replay.evidence)
            batch_alert(self._ctx, evidence, name, epoch, pos, got, kind, want, self._next_step())

    def _next_step(self) -> int:
        return _completed(self._ctx) + 1 if self._ctx is not None else 0

    def _flush(self) -> None:
        if self._window is not None:
            self._window.flush()

    def _internal_error(self, what: str, exc: Exception) -> None:
        internal_error(self._ctx, what, exc)


# -- small helpers ---------------------------------------------------------------------


def _completed(ctx: Any) -> int:
    """Optimizer steps completed (``Guard.steps``; ``current_step`` for other contexts)."""
    steps = getattr(ctx, "last_step", None)
    return int(steps if steps is not None else ctx.current_step)


def _class_name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"
