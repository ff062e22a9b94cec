"""accelerate's batch-sampler wrappers, replayed over the batches they really wrap.

On several processes ``Accelerator.prepare`` (and so every multi-process ``Trainer``)
wraps the loader's ``BatchSampler`` in ``accelerate.data_loader.BatchSamplerShard``,
which hands this process every ``num_processes``-th batch (or a slice of each batch,
``split_batches``) and completes the tail from the first batches (``even_batches``);
``skip_first_batches`` wraps it again in ``SkipBatchSampler``, which drops the first
``skip_batches``. Only exactly those classes are modelled (see ``accelerate_sampler``).

``BatchPass`` replays the wrappers step by step over the batches the wrapped stock
``BatchSampler`` really produced, whose indices ``DataCheck`` verifies on their own
against the sampler's recomputation. The replay trusts every setting of the wrappers
(``num_processes``, ``process_index``, ``split_batches``, ``even_batches``,
``batch_size``, ``drop_last``, ``skip_batches``, the wrapped batch size) as read when
the guard attaches, and nothing of their ``__iter__``: a shard told mid-run to serve
another process's batches, to drop its padded tail, or patched to skip a batch yields
batches the replay does not, and ``DataCheck`` raises ``runtime.data_order``. So does a
shard that yields before the stock batch sampler has produced anything (its sampler, and
the guard's recorder with it, replaced behind the shard).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from trainguard.guard.checks.accelerate_sampler import is_accelerate
from trainguard.guard.checks.sampler_order import equal

__all__ = ["BatchModel", "BatchPass", "batch_model"]


@dataclass(frozen=True)
class _ShardSpec:
    processes: int
    index: int
    split: bool
    even: bool
    batch_size: int | None
    inner_batch_size: int | None
    drop_last: bool

    def start(self) -> _Shard:
        return _Shard(self)


@dataclass(frozen=True)
class _SkipSpec:
    skip: int

    def start(self) -> _Skip:
        return _Skip(self.skip)


@dataclass(frozen=True)
class BatchModel:
    """The wrappers between the loader and its stock ``BatchSampler``, innermost first,
    as they were configured when the guard attached."""

    stages: tuple[_ShardSpec | _SkipSpec, ...]
    evidence: dict[str, Any]

    def start(self) -> BatchPass:
        return BatchPass(self)


def batch_model(outer: Any, standard: Any) -> BatchModel | str:
    """The model of the wrappers from ``outer`` down to ``standard``, or why there is
    none (a wrapper that is not exactly accelerate's)."""
    stages: list[_ShardSpec | _SkipSpec] = []
    evidence: dict[str, Any] = {}
    node = outer
    try:
        while node is not standard and len(stages) < 4:
            if is_accelerate(node, "BatchSamplerShard"):
                spec = _ShardSpec(
                    processes=int(node.num_processes),
                    index=int(node.process_index),
                    split=bool(node.split_batches),
                    even=bool(node.even_batches),
                    batch_size=_int_or_none(node.batch_size),
                    inner_batch_size=_int_or_none(getattr(node.batch_sampler, "batch_size", None)),
                    drop_last=bool(node.drop_last),
                )
                if spec.processes < 1 or (spec.split and not spec.inner_batch_size):
                    return "BatchSamplerShard with settings accelerate itself rejects"
                stages.append(spec)
                evidence.update(
                    num_processes=spec.processes,
                    process_index=spec.index,
                    split_batches=spec.split,
                    even_batches=spec.even,
                )
            elif is_accelerate(node, "SkipBatchSampler"):
                skip = _SkipSpec(int(node.skip_batches))
                stages.append(skip)
                evidence["skip_batches"] = skip.skip
            else:
                return "batch sampler with its own __iter__: its sampler is verified"
            node = node.batch_sampler
    except (AttributeError, TypeError, ValueError, OverflowError) as exc:
        return f"accelerate batch sampler without its usual attributes: {exc}"
    if node is not standard:
        return "batch sampler with its own __iter__: its sampler is verified"
    return BatchModel(tuple(reversed(stages)), evidence)


class BatchPass:
    """One pass of the wrappers, replayed over the stock batch sampler's real batches.

    ``add`` and ``end`` are called as the stock ``BatchSampler`` produces its batches
    (always before the wrappers above it can see them); ``check`` is called with each
    batch the outermost wrapper yields, ``leftover`` when it stops."""

    def __init__(self, model: BatchModel) -> None:
        self.evidence = dict(model.evidence)
        self._stages = [spec.start() for spec in model.stages]
        self._ready: deque[list[Any]] = deque()
        self._ended = False

    def add(self, batch: list[Any]) -> None:
        self._ready.extend(self._push([list(batch)], 0))

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        for i, stage in enumerate(self._stages):
            self._ready.extend(self._push(stage.finish(), i + 1))

    def check(self, batch: Any) -> tuple[str, Any] | None:
        """None when ``batch`` is the one due; else a kind and the batch that was due."""
        if not self._ready:
            return ("extra", None) if self._ended else ("unexplained", None)
        want = self._ready.popleft()
        if _same_batch(batch, want):
            return None
        later = any(_same_batch(batch, b) for b in self._ready)
        return ("skipped" if later else "foreign"), want

    def leftover(self) -> tuple[str, Any] | None:
        """At the real end of the pass: what was still due (None when nothing was)."""
        if self._ready:
            return "early_end", self._ready[0]
        return None if self._ended else ("early_end", None)

    def _push(self, batches: list[list[Any]], level: int) -> list[list[Any]]:
        for stage in self._stages[level:]:
            out: list[list[Any]] = []
            for b in batches:
                out += stage.feed(b)
            batches = out
        return batches


class _Skip:
    """``SkipBatchSampler.__iter__``."""

    def __init__(self, skip: int) -> None:
        self._skip = skip
        self._seen = 0

    def feed(self, batch: list[Any]) -> list[list[Any]]:
        self._seen += 1
        return [batch] if self._seen > self._skip else []

    def finish(self) -> list[list[Any]]:
        return []


class _Shard:
    """``BatchSamplerShard.__iter__`` (accelerate 1.x), turned inside out: ``feed`` gets
    the wrapped sampler's batches one at a time, ``finish`` its end. Written line for
    line after accelerate's loops, aliasing of the lists included."""

    def __init__(self, spec: _ShardSpec) -> None:
        self.s = spec
        self._idx = -1
        self._initial: list[Any] = []
        self._pending: list[Any] | None = None
        self._last: list[Any] = []

    def feed(self, batch: list[Any]) -> list[list[Any]]:
        s = self.s
        self._idx += 1
        idx = self._idx
        self._last = batch
        if s.split:
            length = (s.inner_batch_size or 0) // s.processes
            if idx == 0:
                self._initial = batch
            if len(batch) == s.batch_size:
                return [batch[length * s.index : length * (s.index + 1)]]
            return []
        if not s.drop_last and idx < s.processes:
            if s.batch_size is None:
                self._initial.append(batch)
            else:
                self._initial += batch
        if idx % s.processes == s.index:
            self._pending = batch
        if idx % s.processes == s.processes - 1 and (
            s.batch_size is None or len(batch) == s.batch_size
        ):
            out, self._pending = self._pending, None
            return [] if out is None else [out]
        return []

    def finish(self) -> list[list[Any]]:
        return self._finish_split() if self.s.split else self._finish_no_split()

    def _finish_split(self) -> list[list[Any]]:
        s = self.s
        length = (s.inner_batch_size or 0) // s.processes
        batch, initial = self._last, self._initial
        if s.drop_last or not initial or s.batch_size is None or len(batch) >= s.batch_size:
            return []
        if not s.even:
            if len(batch) > length * s.index:
                return [batch[length * s.index : length * (s.index + 1)]]
            return []
        while len(initial) < s.batch_size:
            initial += initial
        batch = batch + initial
        return [batch[length * s.index : length * (s.index + 1)]]

    def _finish_no_split(self) -> list[list[Any]]:
        s = self.s
        initial, pending = self._initial, self._pending
        if s.drop_last or not initial:
            return []
        out: list[list[Any]] = []
        if not s.even:
            if pending:
                out.append(pending)
            return out
        if pending and (s.batch_size is None or len(pending) == s.batch_size):
            out.append(pending)
        need = s.processes * s.batch_size if s.batch_size is not None else s.processes
        while len(initial) < need:
            initial += initial
        batch, idx = self._last, self._idx
        if s.batch_size is None or len(batch) == s.batch_size:
            batch, idx = [], idx + 1
        cycle = 0
        while idx % s.processes != 0 or len(batch) > 0:
            if s.batch_size is None:
                batch = initial[cycle]
                if idx % s.processes == s.index:
                    out.append(batch)
                cycle += 1
            else:
                end = cycle + s.batch_size - len(batch)
                batch += initial[cycle:end]
                if idx % s.processes == s.index:
                    out.append(batch)
                cycle = end
            batch = []
            idx += 1
        return out


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _same_batch(got: Any, want: list[Any]) -> bool:
    try:
        items = list(got)
    except Exception:  # noqa: BLE001 - a hostile batch may raise anything: not equal
        return False
    return equal(items, want)
