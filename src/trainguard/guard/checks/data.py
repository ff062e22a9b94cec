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
then drop samples. A sampler replaced behind the guard's recorder is not watched again
(under accelerate's wrappers the replay notices that no batches were produced for it).

Fingerprints, for a later replay (``data_contents``): a keyed BLAKE2b of each batch's
indices, and a keyed projection of the tensors handed to ``guard.step(batch=...)``,
recorded as ``data.fingerprints`` events. Samplers that cannot be recomputed
are fingerprinted only, with one ``data.unverified`` event saying which and why.
"""

from __future__ import annotations

import logging
import struct
import threading
import traceback
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    IterableDataset,
)

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.accelerate_batches import BatchModel, BatchPass, batch_model
from trainguard.guard.checks.accelerate_sampler import (
    SeedableOrder,
    dispatcher_reason,
    drawing_loader,
    seedable_order,
)
from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.checks.data_contents import Projector, hex_digest, index_digest, read_back
from trainguard.guard.checks.sampler_order import (
    Plan,
    equal,
    plain,
    plain_batch,
    plan_for,
    same,
    standard_batch_sampler,
    unverified_reason,
)
from trainguard.guard.checks.sampler_proxy import SamplerProxy

__all__ = ["DataCheck"]

log = logging.getLogger("trainguard.guard")

_MAX_WINDOW = 4096  # digests buffered before an event is written regardless of steps
_WHERE = "dataloader.sampler"
_WHERE_BATCHES = "dataloader.batch_sampler"


class DataCheck(Check):
    """Verify the sampler's index order and fingerprint what the loader yields.

    ``content_bytes`` bounds the bytes of each tensor of ``guard.step(batch=...)`` that
    are fingerprinted (a longer one is read on an even stride, the same on every device,
    so a replay elsewhere compares); 0 turns content fingerprints off.
    """

    name = "data"

    def __init__(self, *, content_bytes: int = 1 << 20) -> None:
        self.content_bytes = content_bytes
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
        self._window_epoch: int | None = None
        self._digests: list[str] = []
        self._digest_steps: list[int] = []
        self._contents: list[tuple[int, bytes, list[torch.Tensor]]] = []

    # -- hooks -------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        self._ctx = ctx
        self._key = bytes(ctx.key[:64])
        self._projector = Projector(bytes(ctx.key), self.content_bytes)
        loader = ctx.dataloader
        if loader is None:
            return
        if not isinstance(loader, DataLoader):
            self._note(loader, "not a torch DataLoader: only batch contents are fingerprinted")
            return
        if isinstance(loader.dataset, IterableDataset):
            self._note(loader.dataset, "iterable dataset: it orders itself, no sampler to check")
            return
        reason = dispatcher_reason(loader)
        if reason:
            self._note(loader, reason)
        loader = drawing_loader(loader)  # accelerate's wrappers draw from an inner loader
        outer = loader.batch_sampler
        if outer is None:  # batch_size=None: the sampler yields the indices itself
            self._install(loader, "sampler", loader.sampler, index=True)
            return
        standard = standard_batch_sampler(outer)
        if standard is None:
            self._note(outer, "custom batch sampler: order not verified, batches fingerprinted")
            self._install(loader, "batch_sampler", outer, watch=self._watch_batches)
            return
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

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        projector = self._projector
        if info.batch is not None and self.content_bytes > 0 and projector is not None:
            found = projector.batch(info.batch)
            if found is not None:
                with self._lock:
                    self._contents.append((int(ctx.current_step), *found))
        if info.optimizer_stepped and _completed(ctx) % max(int(ctx.every), 1) == 0:
            self._flush()

    def close(self, ctx: GuardContext) -> None:
        self._closed = True
        installed, self._installed = self._installed, []
        for owner, attr, original, proxy, on_loader in reversed(installed):
            if getattr(owner, attr, None) is proxy:  # leave a later replacement alone
                if on_loader:
                    object.__setattr__(owner, attr, original)
                else:
                    setattr(owner, attr, original)
        self._flush()
        # An epoch still being drawn keeps this check alive; without the guard it lets
        # the loader (and its persistent workers) be freed now, not by a later GC pass.
        self._ctx = None

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
        return self._stream(it, plan, _class_name(inner), batches=False)

    def _watch_batches(self, inner: Any) -> Iterator[Any]:
        return self._stream(iter(inner), None, _class_name(inner), batches=True)

    def _watch_wrapped(self, inner: Any) -> Iterator[Any]:
        it: Iterator[Any] = iter(inner)
        model = self._batches
        if self._closed or model is None:
            return it
        epoch, self._wrapped_passes = self._wrapped_passes, self._wrapped_passes + 1
        return self._wrapped(it, model.start(), _class_name(inner), epoch)

    def _wrapped(
        self, it: Iterator[Any], replay: BatchPass, name: str, epoch: int
    ) -> Iterator[Any]:
        """The batches accelerate's wrappers hand this process, each compared with the
        replay of the wrappers over the stock batch sampler's batches (``_take`` feeds
        it while the wrappers pull them) and recorded; one alert per pass."""
        self._tap = replay
        alive, count = True, 0
        for batch in it:
            if not self._closed:
                if alive:
                    found = self._replayed(replay, "check", batch)
                    if found is not None:
                        alive = False
                        self._batch_alert(replay, name, epoch, count, batch, *found)
                self._record([batch], True)
            count += 1
            yield batch
        if alive and not self._closed:
            found = self._replayed(replay, "leftover", None)
            if found is not None:
                self._batch_alert(replay, name, epoch, count, None, *found)
        if self._tap is replay:
            self._tap = None

    def _replayed(self, replay: BatchPass, what: str, batch: Any) -> tuple[str, Any] | None:
        try:
            return replay.check(batch) if what == "check" else replay.leftover()
        except Exception as exc:  # noqa: BLE001 - report, let the loader go on
            self._internal_error("replay", exc)
            return None

    def _stream(
        self, it: Iterator[Any], plan: Plan | None, name: str, *, batches: bool
    ) -> Iterator[Any]:
        """Yield what the inner iterator yields, unchanged, comparing and recording.

        A batch sampler pulls a batch's indices back to back, so they are pulled here a
        batch at a time (``islice``: no Python work per index) and compared when the
        batch is complete, still while the loader draws it. Pulls stop at each point
        where more of the expected order is needed, which is fetched right before the
        next pull: when the real sampler consumes its RNG for a new permutation."""
        if self._closed:
            yield from it
            return
        epoch = self._new_pass()
        whole = plan
        size = 1 if batches else self._group
        group: list[Any] = []
        pos = base = 0  # base: the position of exp[0]
        exp: list[Any] = []
        fetch_at = 0 if plan is not None else -1
        while True:
            if pos == fetch_at and plan is not None:
                plan, exp, base, fetch_at = self._extend(plan, exp, base, pos - len(group))
            want = size - len(group)
            if fetch_at > pos and plan is not None:
                want = min(want, fetch_at - pos)
            got = list(islice(it, want))
            pos += len(got)
            group += got
            if len(group) >= size:
                if plan is not None:
                    start = pos - len(group)
                    if not equal(group, exp[start - base : pos - base]):
                        self._mismatch(plan, name, epoch, start, group, exp[start - base :])
                        plan = None  # one alert per epoch
                self._take(group, batches)
                group = []
            if len(got) < want:
                break
            yield from got
            if self._closed:
                yield from it
                return
        if plan is not None:  # the sampler ended: the open batch, then the count
            if pos == fetch_at:
                plan, exp, base, fetch_at = self._extend(plan, exp, base, pos - len(group))
            start = pos - len(group)
            rest = exp[start - base :]
            if plan is not None and (
                not equal(group, rest[: len(group)]) or len(rest) > len(group)
            ):
                self._mismatch(plan, name, epoch, start, group, rest)
        if whole is not None:
            whole.finish()  # the sampler ran to its end
        if group and not self._drop_tail and not self._closed:
            self._take(group, batches)
        if not batches and not self._closed:
            self._take(None, batches)  # the end, for the wrappers' replay
        yield from got

    def _extend(
        self, plan: Plan, exp: list[Any], base: int, keep: int
    ) -> tuple[Plan | None, list[Any], int, int]:
        """The next chunk of expectations, keeping those from ``keep`` on (the open
        batch). Returns the plan (None after a failure), the list, its base, and the
        position of the next fetch (-1: the expected order has ended)."""
        pos = base + len(exp)
        try:
            more = plan.chunk(pos)
        except Exception as exc:  # noqa: BLE001 - report, let the loader go on
            self._internal_error("recompute", exc)
            return None, exp, base, -1
        if not more:
            return plan, exp, base, -1
        exp = exp[keep - base :] + more
        return plan, exp, keep, keep + len(exp)

    def _new_pass(self) -> int:
        with self._lock:
            epoch = self._passes
            self._passes += 1
        self._flush()
        with self._lock:
            self._window_epoch = epoch
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
            items = list(group[0]) if batches else group
            digest = index_digest(items, self._key)
            step = self._next_step()
            with self._lock:
                self._digests.append(digest)
                self._digest_steps.append(step)
                full = len(self._digests) >= _MAX_WINDOW
            if full:
                self._flush()
        except Exception as exc:  # noqa: BLE001 - report, let the loader go on
            self._internal_error("fingerprint", exc)

    def _mismatch(
        self, plan: Plan, name: str, epoch: int, start: int, got: list[Any], want: list[Any]
    ) -> None:
        """``got`` was drawn from ``start`` on where ``want`` was due (``want`` may run
        longer: the sampler ended early). Reports the first differing position."""
        if self._ctx is None or self._closed:
            return
        try:
            k = next(
                (
                    i
                    for i in range(max(len(got), len(want)))
                    if i >= len(got) or i >= len(want) or not same(got[i], want[i])
                ),
                0,
            )
            actual = got[k] if k < len(got) else None
            expected = want[k] if k < len(want) else None
            pos = start + k
            kind = plan.kind(pos, actual, expected)
            evidence: dict[str, Any] = {
                "epoch": epoch,
                "position": pos,
                "expected": plain(expected),
                "actual": plain(actual),
                "kind": kind,
                "sampler": name,
            }
            evidence.update(plan.evidence)
            self._ctx.emit(
                Rule.DATA_ORDER,
                Severity.HIGH,
                f"the sampler's order differs from its recomputation at epoch {epoch} "
                f"position {pos}: expected {expected!r}, got {actual!r} ({kind})",
                where=_WHERE,
                evidence=evidence,
                step=self._next_step(),
            )
        except Exception as exc:  # noqa: BLE001 - report, let the loader go on
            self._internal_error("alert", exc)

    def _batch_alert(
        self, replay: BatchPass, name: str, epoch: int, pos: int, got: Any, kind: str, want: Any
    ) -> None:
        """Batch ``pos`` of accelerate's wrappers was ``got`` where ``want`` was due
        (``None``: nothing was due, or nothing came)."""
        if self._ctx is None or self._closed:
            return
        try:
            expected, actual = plain_batch(want), plain_batch(got)
            evidence: dict[str, Any] = {
                "epoch": epoch,
                "batch": pos,
                "expected": expected,
                "actual": actual,
                "kind": kind,
                "sampler": name,
            }
            evidence.update(replay.evidence)
            self._ctx.emit(
                Rule.DATA_ORDER,
                Severity.HIGH,
                f"the batches of {name} differ from their recomputation at epoch {epoch} "
                f"batch {pos}: expected {expected!r:.200}, got {actual!r:.200} ({kind})",
                where=_WHERE_BATCHES,
                evidence=evidence,
                step=self._next_step(),
            )
        except Exception as exc:  # noqa: BLE001 - report, let the loader go on
            self._internal_error("alert", exc)

    def _next_step(self) -> int:
        return _completed(self._ctx) + 1 if self._ctx is not None else 0

    def _flush(self) -> None:
        with self._lock:
            if not self._digests and not self._contents:
                return
            steps = self._digest_steps + [c[0] for c in self._contents]
            evidence: dict[str, Any] = {
                "epoch": self._window_epoch,
                "first_step": min(steps),
                "digests": self._digests,
                "steps": self._digest_steps,
            }
            contents = self._contents
            self._digests, self._digest_steps, self._contents = [], [], []
        if contents:  # one read-back per device per event, never one per step
            values = iter(read_back([t for c in contents for t in c[2]]))
            rows = []
            for step, layout, digests in contents:
                numbers = struct.pack(f"<{len(digests)}q", *islice(values, len(digests)))
                rows.append([step, hex_digest(self._key, layout + numbers)])
            evidence["contents"] = rows
        if self._ctx is not None:
            self._ctx.event("data.fingerprints", evidence)

    def _internal_error(self, what: str, exc: Exception) -> None:
        """A guard bug inside the loader must not stop training: report, keep going."""
        try:
            if self._ctx is not None:
                self._ctx.emit(
                    Rule.GUARD_ERROR,
                    Severity.MEDIUM,
                    f"check data failed in {what}: {type(exc).__name__}: {exc}",
                    where="check:data",
                    evidence={"traceback": "".join(traceback.format_exception(exc, limit=8))},
                )
        except Exception:
            log.exception("trainguard data check could not report its own failure")


# -- small helpers ---------------------------------------------------------------------


def _completed(ctx: Any) -> int:
    """Optimizer steps completed (``Guard.steps``; ``current_step`` for other contexts)."""
    steps = getattr(ctx, "last_step", None)
    return int(steps if steps is not None else ctx.current_step)


def _class_name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"
