"""accelerate's ``SeedableRandomSampler``, recomputed independently; its loaders, located.

Every Hugging Face ``Trainer`` job, and ``Accelerator.prepare`` with a seedable sampler,
draws from ``accelerate.data_loader.SeedableRandomSampler``. accelerate is never imported
here: a class counts only if it *is* the class of an ``accelerate.data_loader`` module
that is already loaded (a subclass, or a look-alike, stays unverified).

The sampler reseeds its generator with ``initial_seed + epoch`` at the start of each
pass, draws ``torch.randperm`` from it, and adds one to ``epoch`` when the pass
completes. The recomputation seeds a generator of its own (``torch.Generator``,
``manual_seed`` and ``torch.randperm`` captured at import) and trusts exactly:

* ``initial_seed``, ``_num_samples``, ``replacement`` and the generator's device (the
  default device when it has none yet), read once, when the guard attaches;
* ``epoch`` as read when the guard's first pass begins (a resumed run honestly starts
  at a later epoch). After that the check counts for itself: a pass at epoch ``e`` that
  ran to its end is followed by ``e + 1``; after a pass that was broken off (or stopped
  right after its last batch without asking for more) the sampler may honestly start
  again at ``e`` or at ``e + 1``;
* ``len(data_source)`` at the start of each pass (a dataset may change size).

It trusts neither the sampler's generator (its state, or the object itself) nor
``__iter__``: a swapped generator changes nothing (the sampler reseeds it), while an
``initial_seed`` or ``epoch`` edited mid-run, a generator reseeded mid-pass (it matters
when ``num_samples`` spans several permutations), a patched ``__iter__`` (of the class:
Python ignores one set on the instance) or ``torch.randperm`` make the real order differ
from the recomputation, which raises ``runtime.data_order``.

Limits: what was edited before the guard attached, and the first pass's epoch, are taken
as honest; a ``data_source`` swapped for one of another length is followed, not
flagged; a loop that resets the epoch by hand after a completed pass (``set_epoch(0)``
every epoch, or accelerate's ``skip_first_batches`` resume recipe without
``set_epoch``) replays an order and is flagged, honest or not; after an alert the check
follows the sampler's epoch again, so one jump is reported once.

``DataLoaderShard`` and ``DataLoaderDispatcher`` answer ``isinstance(DataLoader)`` but
draw from a ``base_dataloader``; the guard installs its recorders there. A dispatcher on
several processes is not modelled: the main process draws and broadcasts, and the slice
each process keeps is cut from tensors, not indices. It is reported as
``data.unverified``; the main process's own sampler order is still verified.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch.utils.data import DataLoader

from trainguard.guard.checks.sampler_order import Plan

__all__ = [
    "SeedableOrder",
    "dispatcher_reason",
    "drawing_loader",
    "is_accelerate",
    "seedable_order",
]

_randperm = torch.randperm
_Generator = torch.Generator
_manual_seed = torch.Generator.manual_seed
_get_default_device = torch.get_default_device

_MODULE = "accelerate.data_loader"


def is_accelerate(obj: Any, name: str) -> bool:
    """``obj`` is an instance of exactly accelerate's class ``name``."""
    module = sys.modules.get(_MODULE)
    cls = getattr(module, name, None) if module is not None else None
    return cls is not None and type(obj) is cls


def seedable_order(sampler: Any) -> SeedableOrder | None:
    """The recomputation of an accelerate ``SeedableRandomSampler`` (None for others)."""
    return SeedableOrder(sampler) if is_accelerate(sampler, "SeedableRandomSampler") else None


class SeedableOrder:
    """What the guard read when it attached, and the epochs it has counted since."""

    def __init__(self, sampler: Any) -> None:
        self.sampler = sampler
        self.reason = ""
        self.initial_seed = 0
        self.num_samples: int | None = None
        self._last: int | None = None
        self._completed = False
        try:
            self.initial_seed = int(sampler.initial_seed)
            fixed = sampler._num_samples
            self.num_samples = None if fixed is None else int(fixed)
            generator = sampler.generator
            device = generator.device if generator is not None else _get_default_device()
            if sampler.replacement is not False:
                self.reason = "replacement=True: draws are not a permutation, fingerprinted only"
            elif torch.device(device).type != "cpu":
                self.reason = "SeedableRandomSampler on a non-CPU generator: fingerprinted only"
        except (AttributeError, TypeError, ValueError, OverflowError, RuntimeError) as exc:
            self.reason = f"SeedableRandomSampler without its usual attributes: {exc}"

    def plan(self) -> Plan:
        """The expected order of the pass about to begin."""
        return _SeedablePlan(self)

    def epoch_for(self, read: int) -> int:
        """The epoch this pass must use, counted by the check (see the module doc)."""
        last = self._last
        if last is None:
            expected = read
        elif self._completed:
            expected = last + 1
        elif read in (last, last + 1):
            expected = read
        else:
            expected = last
        # Follow the sampler from here on: a jump is reported once, not every pass after.
        self._last, self._completed = read, False
        return expected

    def completed(self) -> None:
        self._completed = True


class _SeedablePlan(Plan):
    def __init__(self, order: SeedableOrder) -> None:
        super().__init__()
        self._order = order
        self._own: torch.Generator | None = None
        self._n = self._full = self._rest = self._made = 0
        self._why = ""

    def _segment(self) -> torch.Tensor | None:
        if self._own is None:  # the moment the real sampler starts its body
            order, sampler = self._order, self._order.sampler
            n = len(sampler.data_source)
            read = int(sampler.epoch)
            epoch = order.epoch_for(read)
            self.evidence = {
                "sampler_epoch": read,
                "expected_epoch": epoch,
                "initial_seed": order.initial_seed,
            }
            seed_now = getattr(sampler, "initial_seed", None)
            if seed_now != order.initial_seed:
                self.evidence["sampler_initial_seed"] = repr(seed_now)[:100]
                self._why = "seed_edited"
            elif read != epoch:
                self._why = "epoch_edited"
            self._own = _Generator()
            _manual_seed(self._own, order.initial_seed + epoch)
            if n == 0:  # the real sampler fails on its own; nothing to compare
                return None
            m = order.num_samples if order.num_samples is not None else n
            self._n, self._full, self._rest = n, m // n, m % n
        index = self._made
        if index > self._full or (index == self._full and not self._rest):
            return None
        self._made += 1
        perm = _randperm(self._n, generator=self._own)
        return perm if index < self._full else perm[: self._rest]

    def finish(self) -> None:
        if self._own is not None:
            self._order.completed()

    def kind(self, pos: int, got: Any, want: Any) -> str:
        return self._why or super().kind(pos, got, want)


# -- loaders ---------------------------------------------------------------------------


def drawing_loader(loader: Any) -> Any:
    """The ``DataLoader`` that really draws: accelerate's ``DataLoaderShard`` and
    ``DataLoaderDispatcher`` answer ``isinstance(DataLoader)`` but iterate a
    ``base_dataloader`` they hold."""
    if issubclass(type(loader), DataLoader):
        return loader
    base = getattr(loader, "base_dataloader", None)
    return base if issubclass(type(base), DataLoader) else loader


def dispatcher_reason(loader: Any) -> str:
    """Why the batches of a ``DataLoaderDispatcher`` are not verified ("" when they are:
    on one process it hands on the main loader's batches whole)."""
    if not is_accelerate(loader, "DataLoaderDispatcher"):
        return ""
    try:
        processes = int(loader.state.num_processes)
    except (AttributeError, TypeError, ValueError):
        processes = 0
    if processes == 1:
        return ""
    return (
        "DataLoaderDispatcher on several processes: the main process draws and broadcasts, "
        "the slice each process keeps is not recomputed (the main process's sampler order is)"
    )
