"""DataCheck: the sampler's order is recomputed independently and checked index by index.

Honest runs (every torch sampler configuration, workers, restarts) must raise nothing;
patched samplers and a patched ``torch.randperm`` must raise ``runtime.data_order`` at
the step whose batch the bad index belongs to.
"""

from __future__ import annotations

import contextlib
import copy
import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
)

from trainguard.errors import GuardStopped
from trainguard.findings import Rule
from trainguard.guard import Guard
from trainguard.guard.checks.data import DataCheck
from trainguard.ledger import read_records

B = 4


from guardkit import Indexed, N, SpyGuard  # noqa: E402


def run(
    dl: Any,
    *,
    epochs: int = 1,
    setup: Callable[[Guard], None] | None = None,
    each: Callable[[int], None] | None = None,
    guard_cls: type[Guard] = SpyGuard,
    **guard_kwargs: Any,
) -> tuple[Any, list[list[int]]]:
    """A tiny real training loop; returns the guard and the indices of each step."""
    torch.manual_seed(0)
    # dropout draws from the global RNG between the sampler's draws, like real training
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard_kwargs.setdefault("ledger", False)
    guard = guard_cls(model, opt, dataloader=dl, checks=[DataCheck()], **guard_kwargs)
    steps: list[list[int]] = []
    try:
        if setup is not None:
            setup(guard)
        for epoch in range(epochs):
            if hasattr(dl.sampler, "set_epoch"):
                dl.sampler.set_epoch(epoch)
            for x, y, idx in dl:
                loss = ((model(x) - y) ** 2).mean()
                loss.backward()
                opt.step()
                opt.zero_grad()
                guard.step(loss)
                steps.append(torch.as_tensor(idx).reshape(-1).tolist())
                if each is not None:
                    each(len(steps))
    finally:
        guard.close()
    return guard, steps


def order_alerts(guard: Guard) -> list[Any]:
    return [a for a in guard.alerts if a.rule == Rule.DATA_ORDER]


def assert_clean(guard: Any, *, verified: bool = True) -> None:
    assert guard.alerts == [], [a.finding.message for a in guard.alerts]
    if verified:
        assert guard.events("data.unverified") == []
    assert guard.events("data.fingerprints"), "no fingerprints were recorded"


def _dist(n: int, rank: int, *, drop_last: bool, shuffle: bool = True) -> DistributedSampler[Any]:
    return DistributedSampler(
        Indexed(n), num_replicas=2, rank=rank, shuffle=shuffle, seed=7, drop_last=drop_last
    )


# -- honest runs: nothing -----------------------------------------------------------------


@pytest.mark.parametrize("drop_last", [False, True])
def test_random_sampler_without_generator_is_clean(drop_last: bool) -> None:
    dl = DataLoader(Indexed(), batch_size=B, shuffle=True, drop_last=drop_last)
    guard, steps = run(dl, epochs=3)
    assert_clean(guard)
    assert len(steps) == 3 * (2 if drop_last else 3)


def test_random_sampler_with_generator_shared_with_the_loader_is_clean() -> None:
    # DataLoader(shuffle=True, generator=g): the loader's base seed and the permutation
    # draw from the same generator, in an order the guard must not disturb
    g = torch.Generator().manual_seed(1)
    dl = DataLoader(Indexed(), batch_size=B, shuffle=True, generator=g)
    guard, _ = run(dl, epochs=3)
    assert_clean(guard)


def test_the_guard_does_not_change_the_order() -> None:
    def orders(watched: bool) -> list[list[int]]:
        dl = DataLoader(Indexed(), batch_size=B, shuffle=True)
        if watched:
            return run(dl, epochs=2)[1]
        torch.manual_seed(0)
        nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))  # same RNG use
        return [b[2].tolist() for _ in range(2) for b in dl]

    # no dropout draws in the plain loop, so compare only the first epoch's order
    assert orders(True)[:3] == orders(False)[:3]


@pytest.mark.parametrize("generator", [False, True])
@pytest.mark.parametrize("samples", [25, 7])
def test_random_sampler_with_other_sample_counts_is_clean(generator: bool, samples: int) -> None:
    g = torch.Generator().manual_seed(3) if generator else None
    sampler = RandomSampler(Indexed(), num_samples=samples, generator=g)
    dl = DataLoader(Indexed(), batch_size=B, sampler=sampler, generator=g)

    def touch(step: int) -> None:  # honest use of the same generator mid-epoch
        if g is not None and step == 2:
            torch.randint(10, (3,), generator=g)

    guard, steps = run(dl, epochs=2, each=touch)
    assert_clean(guard)
    assert sum(len(s) for s in steps) == 2 * samples


def test_sequential_order_is_clean() -> None:
    dl = DataLoader(Indexed(), batch_size=B, shuffle=False)
    guard, steps = run(dl, epochs=2)
    assert_clean(guard)
    assert steps[:3] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@pytest.mark.parametrize("rank", [0, 1])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [True, False])
def test_distributed_sampler_over_three_epochs_is_clean(
    rank: int, drop_last: bool, shuffle: bool
) -> None:
    sampler = _dist(11, rank, drop_last=drop_last, shuffle=shuffle)
    dl = DataLoader(Indexed(11), batch_size=2, sampler=sampler)
    guard, steps = run(dl, epochs=3)
    assert_clean(guard)
    per_epoch = 5 if drop_last else 6
    assert sum(len(s) for s in steps) == 3 * per_epoch


@pytest.mark.parametrize("persistent", [False, True])
def test_worker_processes_still_load_and_are_clean(persistent: bool) -> None:
    dl = DataLoader(
        Indexed(), batch_size=B, shuffle=True, num_workers=2, persistent_workers=persistent
    )
    guard, steps = run(dl, epochs=2)
    assert_clean(guard)
    assert sorted(i for s in steps[:3] for i in s) == list(range(N))


def test_distributed_sampler_with_workers_is_clean() -> None:
    dl = DataLoader(Indexed(11), batch_size=2, sampler=_dist(11, 1, drop_last=False), num_workers=2)
    guard, _ = run(dl, epochs=2)
    assert_clean(guard)


def test_batch_size_none_random_is_clean_and_restored() -> None:
    dl = DataLoader(Indexed(), batch_size=None, shuffle=True)
    original = dl.sampler
    before = dict(vars(dl))
    guard, steps = run(dl, epochs=2)
    assert_clean(guard)
    assert len(steps) == 2 * N
    assert dl.sampler is original
    assert vars(dl) == before


def test_batch_size_none_distributed_set_epoch_goes_through_the_proxy() -> None:
    sampler = _dist(11, 0, drop_last=False)
    dl = DataLoader(Indexed(11), batch_size=None, sampler=sampler)
    guard, _ = run(dl, epochs=3)  # run() calls dl.sampler.set_epoch: the proxy's
    assert_clean(guard)
    assert sampler.epoch == 2


def test_partial_epoch_then_restart_is_clean() -> None:
    for dl in (
        DataLoader(Indexed(), batch_size=B, shuffle=True),
        DataLoader(Indexed(11), batch_size=2, sampler=_dist(11, 0, drop_last=True)),
    ):
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        guard = SpyGuard(model, opt, dataloader=dl, checks=[DataCheck()], ledger=False)
        for _ in range(2):
            for n, (x, y, _idx) in enumerate(dl):  # abandon the epoch after 2 batches
                ((model(x) - y) ** 2).mean().backward()
                opt.step()
                opt.zero_grad()
                guard.step()
                if n == 1:
                    break
        for x, y, _idx in dl:  # then a full one
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
            opt.zero_grad()
            guard.step()
        guard.close()
        assert_clean(guard)


def test_custom_batch_sampler_is_unverified_and_fingerprinted() -> None:
    class Pairs:
        def __iter__(self) -> Iterator[list[int]]:
            return iter([[9, 0], [1, 8], [2, 7]])

        def __len__(self) -> int:
            return 3

    dl = DataLoader(Indexed(), batch_sampler=Pairs())
    guard, steps = run(dl, epochs=2)
    assert guard.alerts == []
    assert steps[:3] == [[9, 0], [1, 8], [2, 7]]
    (note,) = guard.events("data.unverified")
    assert note["class"].endswith("Pairs")
    digests = [d for e in guard.events("data.fingerprints") for d in e["digests"]]
    assert len(digests) == 6 and digests[:3] == digests[3:]
    assert isinstance(dl.batch_sampler, Pairs)


def test_sampler_subclass_is_unverified_but_never_alerts() -> None:
    class Shuffled(RandomSampler):  # like accelerate's SeedableRandomSampler
        def __iter__(self) -> Iterator[int]:
            yield from reversed(list(super().__iter__()))

    dl = DataLoader(Indexed(), batch_size=B, sampler=Shuffled(Indexed()))
    guard, _ = run(dl, epochs=2)
    assert guard.alerts == []
    (note,) = guard.events("data.unverified")
    assert note["class"].endswith("Shuffled")
    assert guard.events("data.fingerprints")


def test_replacement_sampler_is_unverified() -> None:
    sampler = RandomSampler(Indexed(), replacement=True, num_samples=12)
    guard, _ = run(DataLoader(Indexed(), batch_size=B, sampler=sampler), epochs=2)
    assert guard.alerts == []
    (note,) = guard.events("data.unverified")
    assert "replacement" in note["reason"]


def test_list_sampler_is_unverified_but_loads() -> None:
    dl = DataLoader(Indexed(), batch_size=B, sampler=[3, 1, 4, 1, 5, 9])
    guard, steps = run(dl, epochs=2)
    assert guard.alerts == []
    assert steps[:2] == [[3, 1, 4, 1], [5, 9]]
    assert guard.events("data.unverified")[0]["class"] == "builtins.list"


def test_iterable_dataset_is_noted() -> None:
    class Stream(torch.utils.data.IterableDataset[Any]):
        def __iter__(self) -> Iterator[Any]:
            return iter(Indexed()[i] for i in range(N))

    guard, steps = run(DataLoader(Stream(), batch_size=B))
    assert guard.alerts == [] and len(steps) == 3
    assert "iterable" in guard.events("data.unverified")[0]["reason"]


def test_gradient_accumulation_is_clean_and_alerts_at_the_optimizer_step() -> None:
    def accumulate(tamper: bool) -> Guard:
        dl = DataLoader(Indexed(), batch_size=2, shuffle=True)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        guard = SpyGuard(model, opt, dataloader=dl, checks=[DataCheck()], ledger=False)
        with tamper_random(swap(6)) if tamper else contextlib.nullcontext():
            for _ in range(2):
                for n, (x, y, _idx) in enumerate(dl, 1):  # 2 batches per optimizer step
                    ((model(x) - y) ** 2).mean().backward()
                    if n % 2 == 0:
                        opt.step()
                        opt.zero_grad()
                    guard.step()
        guard.close()
        return guard

    assert_clean(accumulate(False))
    (alert,) = order_alerts(accumulate(True))
    assert alert.step == 2  # position 6 is in the 4th batch: the 2nd optimizer step


def test_not_a_dataloader_is_noted_not_crashed() -> None:
    batches = [(torch.ones(2, 4), torch.ones(2, 1), torch.tensor([0, 1]))]

    class Loader(list[Any]):
        sampler = None

    guard, _ = run(Loader(batches))
    assert guard.alerts == []
    assert guard.events("data.unverified")[0]["reason"].startswith("not a torch DataLoader")


# -- the proxy -------------------------------------------------------------------------


def test_proxy_delegates_pickles_as_original_and_close_restores() -> None:
    dl = DataLoader(Indexed(11), batch_size=2, sampler=_dist(11, 0, drop_last=False))
    inner = dl.batch_sampler.sampler
    model = nn.Linear(4, 1)
    guard = Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), dataloader=dl,
                  checks=[DataCheck()], ledger=False)  # fmt: skip
    proxy = dl.batch_sampler.sampler
    assert proxy is not inner and dl.sampler is inner
    assert isinstance(proxy, DistributedSampler)
    assert len(proxy) == len(inner) == 6
    proxy.set_epoch(4)
    assert inner.epoch == 4 and proxy.epoch == 4
    proxy.seed = 11
    assert inner.seed == 11
    for clone in (pickle.loads(pickle.dumps(proxy)), copy.copy(proxy), copy.deepcopy(proxy)):
        assert type(clone) is DistributedSampler and clone.seed == 11
    started = iter(dl)
    next(started)
    guard.close()
    assert dl.batch_sampler.sampler is inner
    assert list(started)  # an epoch begun under the guard still finishes after close
    assert guard.alerts == []


# -- attacks: runtime.data_order at the right step ---------------------------------------


@contextlib.contextmanager
def patched(cls: Any, name: str, evil: Callable[[Any], Any]) -> Iterator[None]:
    original = cls.__dict__[name]
    setattr(cls, name, evil(original))
    try:
        yield
    finally:
        setattr(cls, name, original)


def tamper_random(edit: Callable[[list[int]], list[int]], *, on_pass: int = 0) -> Any:
    """RandomSampler.__iter__ that draws exactly like the real one, then edits the order."""

    def evil(original: Any) -> Any:
        calls = [0]

        def __iter__(self: Any) -> Iterator[int]:
            order = list(original(self))
            calls[0] += 1
            yield from (edit(order) if calls[0] - 1 == on_pass else order)

        return __iter__

    return patched(RandomSampler, "__iter__", evil)


def swap(k: int) -> Callable[[list[int]], list[int]]:
    def edit(order: list[int]) -> list[int]:
        order[k], order[k + 1] = order[k + 1], order[k]
        return order

    return edit


ATTACKS = {
    "swap": (swap(5), 5, "skipped"),
    "drop": (lambda o: o[:6] + o[7:], 6, "skipped"),
    "duplicate": (lambda o: [*o[:7], o[2], *o[8:]], 7, "duplicated"),
    "foreign": (lambda o: [*o[:3], 10**6, *o[4:]], 3, "foreign"),
    "early_end": (lambda o: o[:-1], 9, "early_end"),
    "extra": (lambda o: [*o, o[0]], 10, "extra"),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_tampered_random_sampler_alerts_at_the_step(attack: str) -> None:
    edit, position, kind = ATTACKS[attack]
    dl = DataLoader(Indexed(), batch_size=B, shuffle=True)
    with tamper_random(edit, on_pass=1):  # epoch 0 honest, epoch 1 tampered
        guard, _ = run(dl, epochs=3)
    (alert,) = order_alerts(guard)
    assert alert.step == 3 + position // B + 1  # 3 steps per epoch
    ev = alert.finding.evidence
    assert (ev["epoch"], ev["position"], ev["kind"]) == (1, position, kind)
    assert ev["sampler"].endswith("RandomSampler")
    assert guard.repeats[(Rule.DATA_ORDER.value, "dataloader.sampler")] == 1


def test_tampered_sampler_with_explicit_generator_alerts() -> None:
    dl = DataLoader(Indexed(), batch_size=B, shuffle=True, generator=torch.Generator())
    with tamper_random(swap(0)):
        guard, _ = run(dl)
    (alert,) = order_alerts(guard)
    assert alert.step == 1


def test_tampered_sampler_alerts_with_batch_size_none() -> None:
    dl = DataLoader(Indexed(), batch_size=None, shuffle=True)
    with tamper_random(swap(4)):
        guard, _ = run(dl)
    (alert,) = order_alerts(guard)
    assert alert.step == 5  # one sample per step


def test_tampered_sampler_alerts_with_workers_no_later_than_the_batch() -> None:
    dl = DataLoader(Indexed(), batch_size=B, shuffle=True, num_workers=2)
    with tamper_random(swap(5)):
        guard, _ = run(dl)
    (alert,) = order_alerts(guard)
    assert 1 <= alert.step <= 5 // B + 1  # workers prefetch: drawn before it trains


def test_distributed_sampler_ignoring_the_epoch_alerts_in_epoch_one() -> None:
    def evil(original: Any) -> Any:
        def __iter__(self: Any) -> Iterator[int]:
            saved, self.epoch = self.epoch, 0
            try:
                return original(self)  # type: ignore[no-any-return]
            finally:
                self.epoch = saved

        return __iter__

    for rank in (0, 1):
        honest, stale = _dist(11, rank, drop_last=False), _dist(11, rank, drop_last=False)
        honest.set_epoch(1)
        first = next(i for i, (a, b) in enumerate(zip(honest, stale, strict=True)) if a != b)
        dl = DataLoader(Indexed(11), batch_size=2, sampler=_dist(11, rank, drop_last=False))
        with patched(DistributedSampler, "__iter__", evil):
            guard, _ = run(dl, epochs=3)
        (alert,) = order_alerts(guard)
        assert alert.step == 3 + first // 2 + 1  # 3 steps per epoch
        ev = alert.finding.evidence
        assert ev["epoch"] == 1 and ev["sampler_epoch"] == 1 and ev["rank"] == rank


@pytest.mark.parametrize(
    "make",
    [
        lambda: DataLoader(Indexed(), batch_size=B, shuffle=True),
        lambda: DataLoader(Indexed(), batch_size=B, shuffle=True, generator=torch.Generator()),
        lambda: DataLoader(Indexed(11), batch_size=2, sampler=_dist(11, 1, drop_last=True)),
    ],
    ids=["random", "random-generator", "distributed"],
)
def test_patched_randperm_after_attach_alerts(make: Callable[[], DataLoader[Any]]) -> None:
    real = torch.randperm
    restore: list[Callable[[], None]] = []

    def setup(guard: Guard) -> None:
        def randperm(*args: Any, **kwargs: Any) -> torch.Tensor:
            return real(*args, **kwargs).roll(1)

        torch.randperm = randperm  # type: ignore[assignment]
        restore.append(lambda: setattr(torch, "randperm", real))

    try:
        guard, _ = run(make(), setup=setup)
    finally:
        for undo in restore:
            undo()
    assert torch.randperm is real
    (alert,) = order_alerts(guard)
    assert alert.step == 1


def test_wrapped_batch_sampler_still_verifies_its_sampler() -> None:
    class Shard(BatchSampler):  # like accelerate's BatchSamplerShard
        def __init__(self, inner: BatchSampler) -> None:
            self.batch_sampler = inner
            self.batch_size, self.drop_last = inner.batch_size, inner.drop_last

        def __iter__(self) -> Iterator[list[int]]:
            return iter(self.batch_sampler)

        def __len__(self) -> int:
            return len(self.batch_sampler)

    inner = BatchSampler(RandomSampler(Indexed()), B, drop_last=False)
    dl = DataLoader(Indexed(), batch_sampler=Shard(inner))
    with tamper_random(swap(4)):
        guard, _ = run(dl)
    (alert,) = order_alerts(guard)
    assert alert.step == 2
    assert guard.events("data.unverified")[0]["class"].endswith("Shard")


def test_stop_on_stops_before_the_bad_batch_is_applied() -> None:
    dl = DataLoader(Indexed(), batch_size=B, shuffle=True)
    held: list[Guard] = []
    with tamper_random(swap(5)), pytest.raises(GuardStopped) as stopped:
        run(dl, stop_on="high", setup=held.append)
    # drawn for step 2, raised from step 2's optimizer pre-hook: step 2 never applied
    assert stopped.value.alert is not None and stopped.value.alert.step == 2
    assert held[0].steps == 1


# -- fingerprints in the ledger ------------------------------------------------------------


def _fingerprints(path: Path) -> list[dict[str, Any]]:
    return [
        dict(r.evidence)
        for r in read_records(path)
        if r.kind == "event" and r.message == "data.fingerprints"
    ]


def _ledger_run(path: Path, *, tamper: bool = False) -> tuple[Any, list[list[int]]]:
    dl = DataLoader(Indexed(), batch_size=B, shuffle=True)
    key = b"k" * 32
    with tamper_random(swap(5)) if tamper else contextlib.nullcontext():
        return run(dl, epochs=2, guard_cls=Guard, ledger=path, every=2, key=key)


def test_ledger_gets_fingerprints_and_alerts(tmp_path: Path) -> None:
    guard, steps = _ledger_run(tmp_path / "l")
    assert guard.alerts == []
    events = _fingerprints(tmp_path / "l")
    assert [e["epoch"] for e in events] == [0, 0, 1, 1]  # every=2, new window per epoch
    assert [e["first_step"] for e in events] == [1, 3, 4, 5]
    assert [s for e in events for s in e["steps"]] == list(range(1, 7))
    assert sum(len(e["digests"]) for e in events) == len(steps) == 6
    honest = [d for e in events for d in e["digests"]]

    _ledger_run(tmp_path / "again")
    assert [d for e in _fingerprints(tmp_path / "again") for d in e["digests"]] == honest

    _ledger_run(tmp_path / "bad", tamper=True)
    tampered = [d for e in _fingerprints(tmp_path / "bad") for d in e["digests"]]
    assert tampered[0] == honest[0] and tampered[1:3] != honest[1:3]
    alerts = [r for r in read_records(tmp_path / "bad") if r.alert == Rule.DATA_ORDER.value]
    assert [(a.step, a.severity) for a in alerts] == [(2, "high")]


def _contents_run(path: Path, scale: float = 1.0, budget: int = 1 << 20) -> list[list[Any]]:
    dl = DataLoader(Indexed(), batch_size=B, shuffle=False)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    check = DataCheck(content_bytes=budget)
    guard = Guard(model, opt, dataloader=dl, checks=[check], ledger=path, every=4, key=b"k" * 32)
    for x, y, idx in dl:
        ((model(x) - y) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        x = x * scale
        guard.step(batch={"x": x.to(torch.bfloat16), "y": y, "idx": idx, "meta": ["a"]})
    guard.close()
    (event,) = _fingerprints(path)
    return list(event["contents"])


def test_batch_contents_are_fingerprinted(tmp_path: Path) -> None:
    contents = _contents_run(tmp_path / "l")
    assert [c[0] for c in contents] == [1, 2, 3]
    assert len({c[1] for c in contents}) == 3
    assert _contents_run(tmp_path / "same") == contents
    changed = _contents_run(tmp_path / "changed", scale=2.0)
    assert all(a[1] != b[1] for a, b in zip(changed, contents, strict=True))


def test_batch_contents_over_the_budget_are_read_on_a_stride(tmp_path: Path) -> None:
    exact = _contents_run(tmp_path / "exact")
    strided = _contents_run(tmp_path / "strided", budget=8)  # 2 bf16 per row of x
    assert len({c[1] for c in strided}) == 3
    assert [c[1] for c in strided] != [c[1] for c in exact]
    assert _contents_run(tmp_path / "again", budget=8) == strided
