"""runtime.data_content: what feeds the loader is watched by identity and by keyed bytes.

Each attack changes what the model is fed without touching the sampler's order, and the
test asserts the alert and the step it names; honest loaders (workers, persistent
workers, shuffled and distributed samplers, transforms, lazy caches, an IterableDataset)
stay silent. Attacks run before the forward of their step, so the guard's optimizer
pre-hook of that step is the first to see them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    SequentialSampler,
    Subset,
    TensorDataset,
)

from guardkit import Indexed, SpyGuard
from trainguard.findings import Rule
from trainguard.guard import Guard
from trainguard.guard.checks.data import DataCheck
from trainguard.ledger import read_records

B = 4


def run(
    dl: Any,
    *,
    epochs: int = 1,
    attacks: dict[int, Callable[[], None]] | None = None,
    setup: Callable[[], None] | None = None,
    **guard_kwargs: Any,
) -> SpyGuard:
    """Train on ``dl``; ``attacks[k]`` runs before the forward of optimizer step ``k``."""
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard_kwargs.setdefault("ledger", False)
    guard = SpyGuard(model, opt, dataloader=dl, checks=[DataCheck()], **guard_kwargs)
    step = 0
    try:
        for epoch in range(epochs):
            if hasattr(dl.sampler, "set_epoch"):
                dl.sampler.set_epoch(epoch)
            for batch in dl:
                step += 1
                if attacks and step in attacks:
                    attacks[step]()
                x, y = batch[0], batch[1]
                loss = ((model(x.float().reshape(len(x), -1)[:, :4]) - y.float()) ** 2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                guard.step(loss, batch=batch)
    finally:
        guard.close()
    return guard


def content(guard: Guard) -> list[tuple[int | None, str]]:
    return [(a.step, a.finding.location.path) for a in guard.alerts if a.rule == Rule.DATA_CONTENT]


def tensors(n: int = 12) -> TensorDataset:
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4)
    return TensorDataset(x, (x.sum(dim=1, keepdim=True) > 40).float())


def clean(guard: SpyGuard) -> None:
    assert guard.alerts == [], [a.finding.message for a in guard.alerts]


# -- honest loaders: silent -----------------------------------------------------------------


@pytest.mark.parametrize(("workers", "persistent"), [(0, False), (2, False), (2, True)])
def test_tensor_dataset_with_workers_is_silent(workers: int, persistent: bool) -> None:
    dl = DataLoader(
        tensors(), batch_size=B, shuffle=True, num_workers=workers, persistent_workers=persistent
    )
    clean(run(dl, epochs=2))


def test_distributed_sampler_subset_and_numpy_are_silent() -> None:
    ds = Subset(tensors(20), list(range(0, 20, 2)))
    sampler = DistributedSampler(ds, num_replicas=2, rank=1, seed=3)
    clean(run(DataLoader(ds, batch_size=2, sampler=sampler), epochs=3))

    class Arrays(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __init__(self) -> None:
            self.x = np.arange(48, dtype=np.float32).reshape(12, 4)
            self.y = np.zeros((12, 1), dtype=np.float32)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return torch.from_numpy(self.x[i]), torch.from_numpy(self.y[i])

    clean(run(DataLoader(Arrays(), batch_size=B, shuffle=True), epochs=2))


class Cached(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Transforms make new tensors per sample; a lazy cache fills a dict and a new
    attribute: none of it is the content at attach."""

    def __init__(self) -> None:
        self.base = torch.arange(48, dtype=torch.float32).reshape(12, 4)
        self.transform = lambda x: x * 2 + 1
        self.cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i not in self.cache:
            self.cache[i] = self.transform(self.base[i])
        self.last = self.cache[i]  # an attribute added after attach
        return self.cache[i], self.base[i, :1]


def test_transforms_and_lazy_caches_are_silent() -> None:
    clean(run(DataLoader(Cached(), batch_size=B, shuffle=True), epochs=3))


def test_iterable_dataset_is_silent_and_says_it_has_no_indices(tmp_path: Path) -> None:
    class Stream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
        def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            return iter(Indexed()[i][:2] for i in range(8))

    guard = run(DataLoader(Stream(), batch_size=B), ledger=tmp_path / "l", every=1)
    clean(guard)
    records = [r for r in read_records(tmp_path / "l") if r.message == "data.fingerprints"]
    assert records and records[0].evidence["contents"]  # the batches, fingerprinted
    assert all(r.evidence["indices"] is None for r in records)
    assert "iterable" in records[0].evidence["indices_unavailable"]


def test_authorized_edits_are_the_new_baseline() -> None:
    ds = tensors()
    guard_box: list[Guard] = []

    def relabel() -> None:
        with guard_box[0].authorized("pseudo-labels"):
            ds.tensors[1][:] = 1.0

    dl = DataLoader(ds, batch_size=B)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = SpyGuard(model, opt, dataloader=dl, checks=[DataCheck()], ledger=False)
    guard_box.append(guard)
    for n, (x, y) in enumerate(dl):
        if n == 1:
            relabel()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        guard.step()
    guard.close()
    clean(guard)


# -- attacks: runtime.data_content at the step ----------------------------------------------


def test_collate_fn_swapped_alerts_at_the_step() -> None:
    dl = DataLoader(tensors(), batch_size=B, shuffle=True)

    def evil(batch: list[Any]) -> Any:
        return torch.utils.data.default_collate(batch)

    guard = run(dl, epochs=2, attacks={2: lambda: setattr(dl, "collate_fn", evil)})
    assert content(guard) == [(2, "dataloader.collate_fn")]
    ev = guard.alerts[0].finding.evidence
    assert ev["after"]["qualname"].endswith("evil") and ev["change"] == "replaced"


def test_sampler_replaced_alerts_at_the_step() -> None:
    dl = DataLoader(tensors(), batch_size=B, shuffle=True)

    def swap() -> None:
        dl.batch_sampler.sampler = SequentialSampler(dl.dataset)

    guard = run(dl, epochs=2, attacks={3: swap})
    assert (3, "dataloader.batch_sampler.sampler") in content(guard)


def test_loader_sampler_replaced_through_dict_alerts() -> None:
    dl = DataLoader(tensors(), batch_size=B, shuffle=True)
    attack = {2: lambda: dl.__dict__.__setitem__("sampler", SequentialSampler(dl.dataset))}
    assert content(run(dl, attacks=attack)) == [(2, "dataloader.sampler")]


def test_dataset_replaced_alerts_at_the_step() -> None:
    dl = DataLoader(tensors(), batch_size=B)
    other = tensors()
    attack = {2: lambda: dl.__dict__.__setitem__("dataset", other)}
    assert (2, "dataloader.dataset") in content(run(dl, attacks=attack))


def test_dataset_tensor_attribute_rebound_alerts() -> None:
    ds = tensors()
    dl = DataLoader(ds, batch_size=B)
    attack = {3: lambda: setattr(ds, "tensors", (ds.tensors[0], torch.zeros(12, 1)))}
    assert content(run(dl, attacks=attack)) == [(3, "dataset.tensors")]


@pytest.mark.parametrize("how", ["data", "untyped_storage", "in_place", "numpy"])
def test_tensor_dataset_edited_in_memory_alerts_at_the_step(how: str) -> None:
    ds = tensors()
    labels = ds.tensors[1]

    def edit() -> None:
        if how == "data":
            labels.data[5] = 7.0  # .data has its own version counter
        elif how == "untyped_storage":
            raw = torch.empty(0, dtype=torch.float32).set_(labels.untyped_storage())
            raw[5] = 7.0
        elif how == "in_place":
            labels[5] = 7.0
        else:
            labels.numpy()[5] = 7.0

    version = labels._version
    guard = run(DataLoader(ds, batch_size=B, shuffle=True), epochs=2, attacks={4: edit})
    assert content(guard) == [(4, "dataset.tensors[1]")]
    assert (labels._version != version) == (how == "in_place")


def test_list_of_samples_element_replaced_alerts() -> None:
    class Samples(Dataset[tuple[torch.Tensor, torch.Tensor]]):
        def __init__(self) -> None:
            self.items = [(torch.full((4,), float(i)), torch.zeros(1)) for i in range(12)]

        def __len__(self) -> int:
            return len(self.items)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return self.items[i]

    ds = Samples()
    attack = {2: lambda: ds.items.__setitem__(3, (torch.zeros(4), torch.ones(1)))}
    guard = run(DataLoader(ds, batch_size=B), attacks=attack)
    assert content(guard) == [(2, "dataset.items[3]")]


def test_getitem_patched_after_attach_alerts_at_the_step() -> None:
    class Data(TensorDataset):
        pass

    x = torch.ones(12, 4)
    ds = Data(x, torch.zeros(12, 1))

    def patch() -> None:
        Data.__getitem__ = lambda self, i: (self.tensors[0][i], torch.ones(1))  # type: ignore[method-assign]

    guard = run(DataLoader(ds, batch_size=B), attacks={2: patch})
    assert content(guard) == [(2, "dataset.__getitem__")]


def _string_getitem() -> Any:
    source = "def __getitem__(self, i):\n    return self.tensors[0][i], self.tensors[1][i] * 0\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<string>", "exec"), namespace)  # the insider's code, from a string
    return namespace["__getitem__"]


def test_getitem_patched_before_guard_from_a_string_alerts_at_attach() -> None:
    class Data(TensorDataset):
        def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
            return super().__getitem__(i)

    honest = Data(*tensors().tensors)
    clean(run(DataLoader(honest, batch_size=B)))  # the class as written: trusted

    Data.__getitem__ = _string_getitem()  # type: ignore[method-assign]
    guard = run(DataLoader(Data(*tensors().tensors), batch_size=B))
    assert content(guard) == [(0, "dataset.__getitem__")]
    ev = guard.alerts[0].finding.evidence
    assert ev["file"] == "<string>" and ev["class"].endswith("Data")


def test_getitem_borrowed_from_another_module_alerts_at_attach() -> None:
    import guardkit

    class Data(TensorDataset):
        pass

    Data.__getitem__ = guardkit.Indexed.__getitem__  # type: ignore[method-assign,assignment]
    guard = run(DataLoader(Data(*tensors().tensors), batch_size=B))
    assert content(guard) == [(0, "dataset.__getitem__")]
    assert guard.alerts[0].finding.evidence["file"].endswith("guardkit.py")


# -- indices in the ledger ----------------------------------------------------------------


def test_fingerprints_carry_the_indices_of_each_step(tmp_path: Path) -> None:
    dl = DataLoader(Indexed(), batch_size=B, shuffle=True)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = Guard(model, opt, dataloader=dl, checks=[DataCheck()], ledger=tmp_path / "l",
                  every=2, key=b"k" * 32)  # fmt: skip
    seen = []
    for x, y, idx in dl:
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        guard.step()
        seen.append(idx.tolist())
    guard.close()
    events = [r.evidence for r in read_records(tmp_path / "l") if r.message == "data.fingerprints"]
    recorded = [(s, i) for e in events for s, i in zip(e["steps"], e["indices"], strict=True)]
    assert [s for s, _ in recorded] == [1, 2, 3]
    assert [_expand(i) for _, i in recorded] == seen


def _expand(compact: list[Any]) -> list[int]:
    out: list[int] = []
    for item in compact:
        out.extend(range(item[0], item[0] + item[1]) if isinstance(item, list) else [item])
    return out


def test_sequential_indices_are_runs_and_cost_little_per_step(tmp_path: Path) -> None:
    def ledger_bytes(shuffle: bool) -> float:
        path = tmp_path / f"l{shuffle}"
        ds = TensorDataset(torch.zeros(32 * 64, 4), torch.zeros(32 * 64, 1))
        dl = DataLoader(ds, batch_size=32, shuffle=shuffle)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        guard = Guard(model, opt, dataloader=dl, checks=[DataCheck()], ledger=path, every=16)
        for x, y in dl:
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()
            guard.step()
        guard.close()
        events = [r.evidence for r in read_records(path) if r.message == "data.fingerprints"]
        if not shuffle:
            steps = [s for e in events for s in e["steps"]]
            assert [i for e in events for i in e["indices"]] == [
                [[(s - 1) * 32, 32]] for s in steps
            ]
        return sum(len(json.dumps(e["indices"])) for e in events) / 64

    assert ledger_bytes(False) < 20
    assert ledger_bytes(True) < 32 * 6
