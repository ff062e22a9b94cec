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

How it attaches: a recording proxy replaces the object that yields indices in the main
process (worker processes only receive indices, so ``num_workers > 0`` is covered):
``batch_sampler.sampler`` of a standard ``BatchSampler``, or the loader's ``sampler``
itself when ``batch_size=None``. The proxy answers ``isinstance`` like the sampler it
wraps, delegates every attribute (``set_epoch``, ``epoch``...), pickles as the original,
and ``close()`` puts the original back.

Steps: an index is attributed to the optimizer step that was running when the loader
drew it (``guard.steps + 1``: the batch drawn after step ``t`` trains step ``t + 1``).
With ``num_workers > 0`` the loader draws ``num_workers * prefetch_factor`` batches
ahead, so an alert may come that many steps *before* the bad batch trains.

Limits: a sampler whose epoch never advances (``set_epoch`` not called, or patched to do
nothing) repeats its order honestly as far as this check can tell; a thread drawing from
the global CPU RNG in the microseconds between the snapshot and a ``RandomSampler``'s
seed draw would make the snapshot stale; a ``DistributedSampler`` whose dataset changed
length after it was built is flagged, because its cached sizes then drop samples.

Fingerprints, for a later replay: a keyed BLAKE2b of each batch's indices, and a keyed
projection of the tensors handed to ``guard.step(batch=...)`` (two tensor operations per
tensor, computed where the tensor lives, read back once per event, equal on every
device), recorded as ``data.fingerprints`` events. Samplers that cannot be recomputed
are fingerprinted only, with one ``data.unverified`` event saying which and why.
"""

from __future__ import annotations

import hashlib
import logging
import math
import struct
import threading
import traceback
from collections.abc import Callable, Iterator, Mapping
from itertools import islice
from typing import Any

import torch
from torch.utils.data import (
    DataLoader,
    IterableDataset,
)

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.checks.sampler_order import (
    Plan,
    plan_for,
    standard_batch_sampler,
    unverified_reason,
)

__all__ = ["DataCheck"]

log = logging.getLogger("trainguard.guard")

_Generator = torch.Generator  # captured at import, as in sampler_order
_MAX_WINDOW = 4096  # digests buffered before an event is written regardless of steps
_WHERE = "dataloader.sampler"


class DataCheck(Check):
    """Verify the sampler's index order and fingerprint what the loader yields.

    ``content_bytes`` bounds the bytes of each tensor of ``guard.step(batch=...)`` that
    are fingerprinted (a longer one is read on an even stride, the same on every device,
    so a replay elsewhere compares); 0 turns content fingerprints off.
    """

    name = "data"

    def __init__(self, *, content_bytes: int = 1 << 20) -> None:
        self.content_bytes = content_bytes
        self._projector: _Projector | None = None
        self._ctx: GuardContext | None = None
        self._key = b""
        self._closed = False
        self._installed: tuple[Any, str, Any, Any, bool] | None = None
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
        self._projector = _Projector(bytes(ctx.key), self.content_bytes)
        loader = ctx.dataloader
        if loader is None:
            return
        if not isinstance(loader, DataLoader):
            self._note(loader, "not a torch DataLoader: only batch contents are fingerprinted")
            return
        if isinstance(loader.dataset, IterableDataset):
            self._note(loader.dataset, "iterable dataset: it orders itself, no sampler to check")
            return
        outer = loader.batch_sampler
        if outer is None:  # batch_size=None: the sampler yields the indices itself
            self._install(loader, "sampler", loader.sampler, index=True)
            return
        standard = standard_batch_sampler(outer)
        if standard is None:
            self._note(outer, "custom batch sampler: order not verified, batches fingerprinted")
            self._install(loader, "batch_sampler", outer, index=False)
            return
        if standard is not outer:
            self._note(outer, "batch sampler with its own __iter__: its sampler is verified")
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
        installed, self._installed = self._installed, None
        if installed is not None:
            owner, attr, original, proxy, on_loader = installed
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

    def _install(self, owner: Any, attr: str, original: Any, *, index: bool) -> None:
        """Put the proxy in place; ``DataLoader`` forbids ``setattr`` of its samplers
        after ``__init__``, so the loader's own attributes are set under it."""
        watch = self._watch_indices if index else self._watch_batches
        proxy = _SamplerProxy(original, watch)
        on_loader = isinstance(owner, DataLoader)
        try:
            if on_loader:
                object.__setattr__(owner, attr, proxy)
            else:
                setattr(owner, attr, proxy)
        except (AttributeError, TypeError, ValueError) as exc:
            self._note(original, f"could not install the recorder: {exc}")
            return
        self._installed = (owner, attr, original, proxy, on_loader)
        if on_loader and getattr(owner, "_index_sampler", None) is not proxy:
            object.__setattr__(owner, attr, original)  # this torch draws from elsewhere
            self._installed = None
            self._note(original, "the loader does not draw from the replaced sampler")
        elif index:
            reason = unverified_reason(original)
            if reason:
                self._note(original, reason)

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
                reason = unverified_reason(inner)
                if reason:
                    self._note(inner, reason)
                else:
                    plan = plan_for(inner)
            except Exception as exc:  # noqa: BLE001 - never break the loader; report instead
                self._internal_error("plan", exc)
        return self._stream(it, plan, _class_name(inner), batches=False)

    def _watch_batches(self, inner: Any) -> Iterator[Any]:
        return self._stream(iter(inner), None, _class_name(inner), batches=True)

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
                    if not _equal(group, exp[start - base : pos - base]):
                        self._mismatch(plan, name, epoch, start, group, exp[start - base :])
                        plan = None  # one alert per epoch
                self._record(group, batches)
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
                not _equal(group, rest[: len(group)]) or len(rest) > len(group)
            ):
                self._mismatch(plan, name, epoch, start, group, rest)
        if group and not self._drop_tail and not self._closed:
            self._record(group, batches)
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

    def _record(self, group: list[Any], batches: bool) -> None:
        try:
            items = list(group[0]) if batches else group
            digest = _index_digest(items, self._key)
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
                    if i >= len(got) or i >= len(want) or not _same(got[i], want[i])
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
                "expected": _plain(expected),
                "actual": _plain(actual),
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
            values = iter(_read_back([t for c in contents for t in c[2]]))
            rows = []
            for step, layout, digests in contents:
                numbers = struct.pack(f"<{len(digests)}q", *islice(values, len(digests)))
                rows.append([step, _hex(self._key, layout + numbers)])
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


class _SamplerProxy:
    """Stands where the sampler stood; every use but ``__iter__`` goes to the original.

    ``__class__`` answers with the original's class so ``isinstance`` checks in user
    code and frameworks (accelerate looks for its sampler classes) keep working; pickling
    and copying produce the original, never the proxy.
    """

    __slots__ = ("_tg_inner", "_tg_watch")
    _tg_inner: Any
    _tg_watch: Callable[[Any], Iterator[Any]]

    def __init__(self, inner: Any, watch: Callable[[Any], Iterator[Any]]) -> None:
        object.__setattr__(self, "_tg_inner", inner)
        object.__setattr__(self, "_tg_watch", watch)

    @property  # type: ignore[misc]
    def __class__(self) -> type[Any]:
        return type(self._tg_inner)

    def __iter__(self) -> Iterator[Any]:
        return self._tg_watch(self._tg_inner)

    def __len__(self) -> int:
        return len(self._tg_inner)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_tg_"):
            raise AttributeError(name)
        return getattr(self._tg_inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._tg_inner, name, value)

    def __delattr__(self, name: str) -> None:
        delattr(self._tg_inner, name)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self._tg_inner.__reduce_ex__(protocol)

    def __repr__(self) -> str:
        return f"<trainguard recorder of {self._tg_inner!r}>"


# -- fingerprints ----------------------------------------------------------------------


def _index_digest(items: list[Any], key: bytes) -> str:
    try:
        return _hex(key, b"q" + struct.pack(f"<{len(items)}q", *items))
    except (struct.error, TypeError, OverflowError, ValueError):  # not plain int indices
        return _hex(key, b"r" + repr(items).encode())


class _Projector:
    """Keyed projections of batch tensors: ``sum(x_i * r_i)`` over the tensor's bits
    read as int32 (products wrap mod 2^32, the sum is int64), with ``r`` secret odd
    integers. Integer arithmetic is exact and order-free, so CPU and GPU agree; one
    changed element always changes the sum, and cancelling changes need ``r``. A tensor
    over the budget is read on an even stride (recorded in the layout)."""

    def __init__(self, key: bytes, budget: int) -> None:
        self.limit = max(1, budget // 4)
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8, person=b"tg.data").digest())
        g = _Generator()
        g.manual_seed(seed & ((1 << 63) - 1))
        r = torch.randint(-(2**31), 2**31 - 1, (self.limit,), generator=g, dtype=torch.int64)
        self._r = {torch.device("cpu"): (r | 1).to(torch.int32)}

    def batch(self, batch: Any) -> tuple[bytes, list[torch.Tensor]] | None:
        """The layout (names, dtypes, shapes, strides) of the tensors in a batch (nested
        lists, tuples, mappings) and their projections, left on their devices."""
        tensors: list[torch.Tensor] = []
        layout: list[str] = []
        _collect(batch, tensors, layout, 0)
        if not tensors:
            return None
        digests = []
        for t in tensors:
            try:
                x = _int32(t.detach().reshape(-1))
                stride = max(1, math.ceil(x.numel() / self.limit))
                x = x[::stride]
                r = self._r.get(x.device)
                if r is None:
                    r = self._r[x.device] = self._r[torch.device("cpu")].to(x.device)
                digests.append((x * r[: x.numel()]).sum(dtype=torch.int64))
                layout.append(f"/{stride}")
            except (RuntimeError, TypeError):  # sparse, quantized, meta tensors
                layout.append("/unhashed")
        return "|".join(layout).encode(), digests


def _int32(flat: torch.Tensor) -> torch.Tensor:
    """The bits of a flat tensor as int32 (bytes widened when the size is not a multiple
    of 4)."""
    if flat.dtype == torch.bool:
        flat = flat.view(torch.uint8)
    if flat.numel() * flat.element_size() % 4:
        return flat.contiguous().view(torch.uint8).to(torch.int32)
    try:
        return flat.view(torch.int32)
    except RuntimeError:  # a storage offset not aligned to 4 bytes
        return flat.clone().view(torch.int32)


def _collect(obj: Any, tensors: list[torch.Tensor], layout: list[str], depth: int) -> None:
    if isinstance(obj, torch.Tensor):
        tensors.append(obj)
        layout.append(f"{obj.dtype}{tuple(obj.shape)}")
    elif depth < 4 and isinstance(obj, Mapping):
        for k, v in list(obj.items())[:256]:
            layout.append(repr(k)[:100])
            _collect(v, tensors, layout, depth + 1)
    elif depth < 4 and isinstance(obj, list | tuple):
        for v in obj[:256]:
            _collect(v, tensors, layout, depth + 1)


def _read_back(values: list[torch.Tensor]) -> list[int]:
    """0-d tensors to ints with one transfer per device."""
    out = [0] * len(values)
    by_device: dict[Any, list[int]] = {}
    for i, v in enumerate(values):
        by_device.setdefault(v.device, []).append(i)
    for where in by_device.values():
        for i, number in zip(where, torch.stack([values[i] for i in where]).tolist(), strict=True):
            out[i] = int(number)
    return out


def _hex(key: bytes, data: bytes) -> str:
    return hashlib.blake2b(data, key=key, digest_size=16).hexdigest()


# -- small helpers ---------------------------------------------------------------------


def _completed(ctx: Any) -> int:
    """Optimizer steps completed (``Guard.steps``; ``current_step`` for other contexts)."""
    steps = getattr(ctx, "last_step", None)
    return int(steps if steps is not None else ctx.current_step)


def _same(item: Any, want: Any) -> bool:
    try:
        return type(item) is not bool and bool(item == want) and int(item) == want
    except Exception:  # noqa: BLE001 - a hostile item may raise anything: not equal
        return False


def _equal(got: list[Any], want: list[Any]) -> bool:
    """List equality at C speed; equal values select the same sample, whatever their
    int-like type. Items that cannot be compared plainly go through ``_same``."""
    if len(got) != len(want):
        return False
    try:
        return bool(got == want)
    except Exception:  # noqa: BLE001 - a hostile item may raise anything: compare slowly
        return all(map(_same, got, want))


def _plain(value: Any) -> Any:
    if value is None or type(value) is int:
        return value
    try:
        return int(value)
    except Exception:  # noqa: BLE001 - evidence only: fall back to its repr
        return repr(value)[:200]


def _class_name(obj: Any) -> str:
    kind = type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"
