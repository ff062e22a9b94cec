"""What decides the data a loader yields, held by identity and compared every step.

Why: the insider does not need to touch the sampler's order to change what the model is
fed: ``loader.collate_fn = evil``, ``loader.__dict__["dataset"] = other``, a swapped
``batch_sampler.sampler``, ``MyDataset.__getitem__ = evil`` or ``ds.transform = evil``
all go through ordinary attribute writes, and each is a pointer comparison away.

What is watched (taken when the guard attaches, after the data check installed its
recorders; every comparison is ``is``, or ``==`` for plain numbers and strings):

- the guard's ``dataloader``; accelerate's wrapper's ``base_dataloader``;
- the drawing ``DataLoader``'s ``dataset``, ``sampler``, ``batch_sampler``,
  ``collate_fn``, ``worker_init_fn`` and ``generator`` (its own ``__dict__``, which is
  where ``object.__setattr__`` and ``__dict__`` writes land);
- the sampler under each trainguard recorder, and the configuration of torch's stock
  samplers and accelerate's ``SeedableRandomSampler`` (every ``__dict__`` entry but
  ``epoch``; entries that were ``None`` at attach are lazily set and not watched);
- each dataset reachable from the loader (nested through attributes, lists and tuples,
  up to ``DEPTH``: ``Subset``, ``ConcatDataset``...): its class, the methods the loader
  calls on it (``__getitem__``, ``__getitems__`` also on the instance, ``__iter__``,
  ``__len__``) resolved through the class's MRO, its ``len()``, and its attributes that
  hold datasets, tensors, arrays, lists, tuples or callables (transforms). List
  attributes are compared element by element on a rotation (``LIST_WINDOW`` a step) and
  by length; their tensors, and every tensor and array, go to ``data_tensors``.

What it trusts: the objects as they are at attach (``data_origin`` judges the methods'
code then); dict attributes and attributes added later (lazy caches), and the internals
of the iterator a loader is running (which copied ``collate_fn`` and the dataset when it
was created) are not watched. A change inside ``guard.authorized()`` is accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch.utils.data import (
    BatchSampler,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

from trainguard.guard.checks._codehash import SourceIndex, describe
from trainguard.guard.checks.accelerate_sampler import is_accelerate
from trainguard.guard.checks.data_origin import METHODS, Origin, judge_methods
from trainguard.guard.checks.data_tensors import Change, ContentWatch
from trainguard.guard.checks.sampler_proxy import SamplerProxy

__all__ = ["DEPTH", "LIST_WINDOW", "LoaderWatch"]

DEPTH = 4
LIST_WINDOW = 256
_MAX_ELEMENTS = 100_000  # tensors of a list attribute fingerprinted one by one
_LOADER_ATTRS = ("dataset", "sampler", "batch_sampler", "collate_fn", "worker_init_fn", "generator")
_STOCK_SAMPLERS = (RandomSampler, SequentialSampler, DistributedSampler, BatchSampler)
_MISSING = object()


@dataclass(slots=True)
class _Slot:
    where: str
    read: Callable[[], Any]
    expected: Any


class _ListWatch:
    __slots__ = ("cursor", "items", "value", "where")

    def __init__(self, where: str, value: list[Any]) -> None:
        self.where = where
        self.value = value
        self.items = list(value)
        self.cursor = 0


class LoaderWatch:
    """The identity snapshot of one loader, its samplers and datasets."""

    def __init__(self, contents: ContentWatch, index: SourceIndex) -> None:
        self.contents = contents
        self.origins: list[Origin] = []
        self._index = index
        self._slots: list[_Slot] = []
        self._lists: list[_ListWatch] = []
        self._seen: set[int] = set()
        self._classes: set[type] = set()

    # -- building --------------------------------------------------------------------

    def watch_guard(self, ctx: Any, given: Any, drawing: Any) -> None:
        self._slot("guard.dataloader", lambda: ctx.dataloader)
        if drawing is not given:
            self._attr(given, "base_dataloader", "dataloader.base_dataloader")
        for name in _LOADER_ATTRS:
            self._attr(drawing, name, f"dataloader.{name}", keep_none=True)
        for name in ("sampler", "batch_sampler"):
            self.sampler(getattr(drawing, name, None), f"dataloader.{name}")
        dataset = vars(drawing).get("dataset")
        if dataset is not None:
            self.dataset(dataset, "dataset")

    def sampler(self, obj: Any, where: str) -> None:
        if obj is None or id(obj) in self._seen:
            return
        self._seen.add(id(obj))
        if type(obj) is SamplerProxy:  # what stands under the recorder
            proxy = obj
            self._slot(f"{where}(recorded)", lambda: object.__getattribute__(proxy, "_tg_inner"))
            obj = object.__getattribute__(proxy, "_tg_inner")
            if id(obj) in self._seen:
                return
            self._seen.add(id(obj))
        stock = type(obj) in _STOCK_SAMPLERS or is_accelerate(obj, "SeedableRandomSampler")
        if not stock:
            return
        for name, value in list(vars(obj).items()):
            if name == "epoch" or value is None:
                continue
            self._attr(obj, name, f"{where}.{name}")
            if name in ("sampler", "batch_sampler"):
                self.sampler(value, f"{where}.{name}")

    def dataset(self, ds: Any, where: str, depth: int = 0) -> None:
        if id(ds) in self._seen or depth > DEPTH:
            return
        self._seen.add(id(ds))
        self._slot(f"{where}.__class__", lambda: type(ds))
        for method in METHODS:
            self._slot(f"{where}.{method}", _resolver(ds, method))
        cls = type(ds)
        if cls not in self._classes:
            self._classes.add(cls)
            self.origins.extend(judge_methods(cls, self._index))
        if not isinstance(ds, IterableDataset) and _resolve(ds, "__len__") is not None:
            try:
                len(ds)
            except Exception:  # noqa: BLE001 - a dataset without a usable length
                pass
            else:
                self._slot(f"len({where})", lambda: _length(ds))
        state = getattr(ds, "__dict__", None)
        if not isinstance(state, dict):
            return
        for name, value in list(state.items()):
            self._value(value, f"{where}.{name}", _reader(state, name), depth)

    def _value(self, value: Any, where: str, read: Callable[[], Any], depth: int) -> None:
        if _is_dataset(value):
            self._slot(where, read)
            self.dataset(value, where, depth + 1)
        elif self.contents.add(where, value):
            self._slot(where, read)
        elif isinstance(value, list | tuple) and value:
            self._slot(where, read)
            self._elements(value, where, depth)
        elif isinstance(value, range) or (callable(value) and not isinstance(value, type)):
            self._slot(where, read)

    def _elements(self, value: list[Any] | tuple[Any, ...], where: str, depth: int) -> None:
        for k, element in enumerate(value[:_MAX_ELEMENTS]):
            if _is_dataset(element):
                self.dataset(element, f"{where}[{k}]", depth + 1)
            else:
                self.contents.add(f"{where}[{k}]", element)
        if isinstance(value, list):
            self._lists.append(_ListWatch(where, value))

    def _attr(self, owner: Any, name: str, where: str, *, keep_none: bool = False) -> None:
        state = getattr(owner, "__dict__", None)
        if not isinstance(state, dict) or (state.get(name) is None and not keep_none):
            return
        self._slot(where, _reader(state, name))

    def _slot(self, where: str, read: Callable[[], Any]) -> None:
        self._slots.append(_Slot(where, read, read()))

    # -- checking --------------------------------------------------------------------

    def check(self, step: int) -> list[Change]:
        """Every slot, then a window of every watched list (microseconds)."""
        changes: list[Change] = []
        for slot in self._slots:
            now = slot.read()
            was = slot.expected
            if now is was or (
                _plain(now) and _plain(was) and type(now) is type(was) and now == was
            ):
                continue
            slot.expected = now
            evidence = {"before": _describe(was), "after": _describe(now)}
            changes.append(Change(slot.where, step, "replaced", evidence))
        for lw in self._lists:
            change = _list_change(lw, step)
            if change is not None:
                changes.append(change)
        return changes


def _list_change(lw: _ListWatch, step: int) -> Change | None:
    value, items = lw.value, lw.items
    if len(value) != len(items):
        lw.items = list(value)
        what = f"its length changed from {len(items)} to {len(value)}"
        return Change(lw.where, step, what, {"before": len(items), "after": len(value)})
    n = len(items)
    start = lw.cursor
    end = min(n, start + LIST_WINDOW)
    lw.cursor = 0 if end >= n else end
    for k in range(start, end):
        if value[k] is not items[k]:
            lw.items[k] = value[k]
            what = f"element {k} was replaced"
            evidence = {"index": k, "before": _describe(items[k]), "after": _describe(value[k])}
            return Change(f"{lw.where}[{k}]", step, what, evidence)
    return None


def _reader(state: dict[str, Any], name: str) -> Callable[[], Any]:
    return lambda: state.get(name, _MISSING)


def _resolver(obj: Any, method: str) -> Callable[[], Any]:
    return lambda: _resolve(obj, method)


def _resolve(obj: Any, method: str) -> Any:
    if method == "__getitems__":
        state = getattr(obj, "__dict__", None)
        if isinstance(state, dict) and method in state:
            return state[method]
    for cls in type(obj).__mro__:
        if method in cls.__dict__:
            return cls.__dict__[method]
    return None


def _length(ds: Any) -> Any:
    try:
        return len(ds)
    except Exception as exc:  # noqa: BLE001 - a length that stopped working is a change
        return f"len() failed: {type(exc).__name__}"


def _is_dataset(value: Any) -> bool:
    return isinstance(value, Dataset) and not isinstance(value, type)


def _same_value(now: Any, was: Any) -> bool:
    return _plain(now) and type(now) is type(was) and bool(now == was)


def _plain(value: Any) -> bool:
    return isinstance(value, int | float | str | bytes | bool)


def _describe(value: Any) -> dict[str, Any]:
    if value is _MISSING:
        return {"value": "<deleted>"}
    if _plain(value) or value is None:
        return {"value": value}
    return describe(value)
