"""DataCheck over accelerate's samplers: every Hugging Face ``Trainer`` job draws from them.

Honest runs with real accelerate (``Accelerator.prepare``, ``BatchSamplerShard`` on two
processes built directly, a tiny ``Trainer`` with the trainguard callback, and its resume
through ``skip_first_batches``) must be verified (no ``data.unverified``) and raise
nothing. Then the insider edits the sampler, the shard or torch, and the check either
raises ``runtime.data_order`` or the test pins the documented limit.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, SequentialSampler

accelerate = pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")

from accelerate import Accelerator  # noqa: E402
from accelerate.data_loader import (  # noqa: E402
    BatchSamplerShard,
    SeedableRandomSampler,
    SkipBatchSampler,
    prepare_data_loader,
    skip_first_batches,
)
from accelerate.utils import DataLoaderConfiguration  # noqa: E402

from trainguard.findings import Rule  # noqa: E402
from trainguard.guard import Guard  # noqa: E402
from trainguard.guard.checks.accelerate_batches import BatchModel, batch_model  # noqa: E402
from trainguard.guard.checks.data import DataCheck  # noqa: E402
from trainguard.ledger import read_records  # noqa: E402

B = 4


from guardkit import Indexed, N, SpyGuard  # noqa: E402


def run(
    dl: Any,
    *,
    epochs: int = 1,
    each: Callable[[int, int], None] | None = None,
    set_epoch: Callable[[int], None] | None = None,
) -> tuple[SpyGuard, list[list[list[int]]]]:
    """A tiny training loop; returns the guard and, per epoch, each step's indices.
    ``each(epoch, step)`` runs after every step (the insider's hook)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    guard = SpyGuard(model, opt, dataloader=dl, checks=[DataCheck()], ledger=False)
    seen: list[list[list[int]]] = []
    try:
        for epoch in range(epochs):
            if set_epoch is not None:
                set_epoch(epoch)
            seen.append([])
            for x, y, idx in dl:
                ((model(x) - y) ** 2).mean().backward()
                opt.step()
                opt.zero_grad()
                guard.step()
                seen[-1].append(torch.as_tensor(idx).reshape(-1).tolist())
                if each is not None:
                    each(epoch, guard.steps)
    finally:
        guard.close()
    return guard, seen


def assert_verified_and_silent(guard: SpyGuard) -> None:
    assert guard.alerts == [], [a.finding.message for a in guard.alerts]
    assert guard.events("data.unverified") == []
    assert guard.events("data.fingerprints"), "no fingerprints were recorded"


def order_alerts(guard: Guard) -> list[Any]:
    return [a for a in guard.alerts if a.rule == Rule.DATA_ORDER]


def seedable(n: int = N, *, seed: int = 5, num_samples: int | None = None) -> Any:
    return SeedableRandomSampler(Indexed(n), num_samples=num_samples, data_seed=seed)


def sharded(
    process: int,
    *,
    n: int = N,
    batch: int = B,
    processes: int = 2,
    seedable_sampler: bool = True,
    **kw: Any,
) -> Any:
    """What ``Accelerator.prepare`` builds on ``processes`` processes, for one of them."""
    torch.manual_seed(1)  # the non-seedable path seeds a generator from the global RNG
    return prepare_data_loader(
        DataLoader(Indexed(n), batch_size=batch, shuffle=True),
        num_processes=processes,
        process_index=process,
        use_seedable_sampler=seedable_sampler,
        data_seed=3,
        **kw,
    )


# -- the replay of BatchSamplerShard / SkipBatchSampler equals accelerate's own code -----


def _replayed(outer: Any, standard: BatchSampler) -> list[list[int]]:
    model = batch_model(outer, standard)
    assert isinstance(model, BatchModel), model
    replay = model.start()
    for b in standard:
        replay.add(b)
    replay.end()
    out: list[list[int]] = []
    while (found := replay.check([-1])) is not None and found[0] != "extra":
        out.append(found[1])
    return out


@pytest.mark.parametrize("split", [False, True])
def test_replay_equals_accelerate_on_every_small_configuration(split: bool) -> None:
    cases = 0
    for n, batch, processes, drop_last, even, skip in itertools.product(
        range(1, 12), range(1, 5), range(1, 4), (False, True), (False, True), (0, 1, 3)
    ):
        if split and batch % processes:
            continue  # accelerate refuses these
        for process in range(processes):
            standard = BatchSampler(SequentialSampler(range(n)), batch, drop_last)
            shard = BatchSamplerShard(standard, processes, process, split, even)
            for outer in (shard, SkipBatchSampler(shard, skip)):
                real = [list(b) for b in outer]
                assert _replayed(outer, standard) == real, (n, batch, processes, process)
                cases += 1
    assert cases > 500


def test_a_look_alike_wrapper_is_not_modelled() -> None:
    class Shard(BatchSamplerShard):  # a subclass may iterate however it likes
        pass

    standard = BatchSampler(SequentialSampler(range(N)), B, False)
    assert isinstance(batch_model(Shard(standard, 2, 0), standard), str)


# -- honest runs with real accelerate: verified, silent ---------------------------------


@pytest.mark.parametrize("seedable_sampler", [False, True])
def test_accelerator_prepare_one_process_is_verified(seedable_sampler: bool) -> None:
    config = DataLoaderConfiguration(use_seedable_sampler=seedable_sampler, data_seed=3)
    accelerator = Accelerator(cpu=True, dataloader_config=config)
    dl = accelerator.prepare(DataLoader(Indexed(), batch_size=B, shuffle=True))
    kind = SeedableRandomSampler if seedable_sampler else torch.utils.data.RandomSampler
    assert type(dl.batch_sampler.sampler) is kind
    guard, epochs = run(dl, epochs=3)
    assert_verified_and_silent(guard)
    assert [sorted(i for b in e for i in b) for e in epochs] == [list(range(N))] * 3
    assert epochs[0] != epochs[1] != epochs[2]  # the epoch really moves the order


@pytest.mark.parametrize("seedable_sampler", [True, False])
@pytest.mark.parametrize(
    "options",
    [{}, {"split_batches": True}, {"even_batches": False}, {"drop_last": True}],
    ids=["plain", "split", "uneven", "drop_last"],
)
def test_batch_sampler_shard_on_two_processes_is_verified(
    options: dict[str, Any], seedable_sampler: bool
) -> None:
    drop_last = options.pop("drop_last", False)
    per_process: list[list[list[list[int]]]] = []
    for process in (0, 1):
        torch.manual_seed(1)
        dl = prepare_data_loader(
            DataLoader(Indexed(), batch_size=B, shuffle=True, drop_last=drop_last),
            num_processes=2,
            process_index=process,
            use_seedable_sampler=seedable_sampler,
            data_seed=3,
            **options,
        )
        assert type(dl.batch_sampler) is BatchSamplerShard
        guard, epochs = run(dl, epochs=3)
        assert_verified_and_silent(guard)
        per_process.append(epochs)
    if seedable_sampler and not options and not drop_last:
        # together the two processes see every sample of each epoch (the tail padded)
        for a, b in zip(*per_process, strict=True):
            assert {i for batch in a + b for i in batch} == set(range(N))


@pytest.mark.parametrize("process", [0, 1])
def test_batch_sampler_shard_built_directly_is_verified(process: int) -> None:
    sampler = seedable(11)
    shard = BatchSamplerShard(BatchSampler(sampler, B, False), 2, process)
    dl = DataLoader(Indexed(11), batch_sampler=shard)
    guard, epochs = run(dl, epochs=3, set_epoch=sampler.set_epoch)
    assert_verified_and_silent(guard)
    assert [len(e) for e in epochs] == [2, 2, 2]  # 3 batches, padded to 4 across the two


def test_shard_with_worker_processes_is_verified() -> None:
    torch.manual_seed(1)
    dl = prepare_data_loader(
        DataLoader(Indexed(17), batch_size=B, shuffle=True, num_workers=2),
        num_processes=2,
        process_index=1,
        use_seedable_sampler=True,
    )
    guard, _ = run(dl, epochs=2)
    assert_verified_and_silent(guard)


def test_accelerate_resume_recipe_is_verified_when_it_sets_the_epoch() -> None:
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(
        use_seedable_sampler=True, data_seed=3))  # fmt: skip
    dl = accelerator.prepare(DataLoader(Indexed(), batch_size=B, shuffle=True))
    model = nn.Linear(4, 1)
    guard = SpyGuard(model, torch.optim.SGD(model.parameters(), lr=0.1), dataloader=dl,
                     checks=[DataCheck()], ledger=False)  # fmt: skip
    for epoch in range(3):  # resumed one batch into epoch 0, as accelerate's examples do
        dl.set_epoch(epoch)
        active = accelerator.skip_first_batches(dl, 1) if epoch == 0 else dl
        for x, y, _ in active:
            ((model(x) - y) ** 2).mean().backward()
            guard.step()
    guard.close()
    assert_verified_and_silent(guard)


def test_shard_skip_first_batches_resume_is_verified() -> None:
    dl = sharded(1)
    resumed = skip_first_batches(dl, 1)  # a resume one batch into the epoch
    guard, epochs = run(resumed, epochs=2)
    assert_verified_and_silent(guard)
    assert [len(e) for e in epochs] == [1, 1]


def test_skip_first_batches_of_a_plain_loader_is_verified_and_its_skip_trusted() -> None:
    resumed = skip_first_batches(DataLoader(Indexed(), batch_size=2, shuffle=True), 2)
    assert type(resumed.batch_sampler) is SkipBatchSampler
    guard, epochs = run(resumed, epochs=2)
    assert_verified_and_silent(guard)
    assert [len(e) for e in epochs] == [3, 3]

    resumed = skip_first_batches(DataLoader(Indexed(), batch_size=2, shuffle=True), 2)

    def edit(epoch: int, step: int) -> None:
        resumed.batch_sampler.skip_batches = 4  # the insider drops two more batches

    guard, epochs = run(resumed, epochs=2, each=edit)
    assert [len(e) for e in epochs] == [2, 1]  # the edit after step 1 already bites
    (alert,) = order_alerts(guard)
    ev = alert.finding.evidence
    assert (ev["epoch"], ev["batch"], ev["kind"], ev["skip_batches"]) == (0, 1, "skipped", 2)
    assert alert.step == 2


def test_dispatcher_on_one_process_is_verified() -> None:
    dl = prepare_data_loader(
        DataLoader(Indexed(), batch_size=B, shuffle=True),
        put_on_device=True,
        device=torch.device("cpu"),
        dispatch_batches=True,
    )
    assert type(dl).__name__ == "DataLoaderDispatcher"
    guard, _ = run(dl, epochs=2)
    assert_verified_and_silent(guard)


def test_dispatcher_on_several_processes_is_reported_unverified() -> None:
    dl = prepare_data_loader(
        DataLoader(Indexed(), batch_size=B, shuffle=True),
        put_on_device=True,
        device=torch.device("cpu"),
        dispatch_batches=True,
    )
    dl.state = SimpleNamespace(num_processes=2, process_index=0)  # read at attach only
    model = nn.Linear(4, 1)
    guard = SpyGuard(model, torch.optim.SGD(model.parameters(), lr=0.1), dataloader=dl,
                     checks=[DataCheck()], ledger=False)  # fmt: skip
    guard.close()
    (note,) = guard.events("data.unverified")
    assert note["class"].endswith("DataLoaderDispatcher")
    assert "slice each process keeps is not recomputed" in note["reason"]


def test_close_puts_both_samplers_back() -> None:
    dl = sharded(0)
    base = dl.base_dataloader
    shard, inner = base.batch_sampler, base.batch_sampler.batch_sampler.sampler
    model = nn.Linear(4, 1)
    guard = Guard(model, torch.optim.SGD(model.parameters(), lr=0.1), dataloader=dl,
                  checks=[DataCheck()], ledger=False)  # fmt: skip
    assert base.batch_sampler is not shard and isinstance(base.batch_sampler, BatchSamplerShard)
    assert shard.batch_sampler.sampler is not inner
    guard.close()
    assert base.batch_sampler is shard and shard.batch_sampler.sampler is inner


# -- attacks on SeedableRandomSampler ---------------------------------------------------


def _plain(sampler: Any) -> DataLoader[Any]:
    """The sampler in a plain loader: one batch per step, no prefetch, exact steps."""
    return DataLoader(Indexed(len(sampler.data_source)), batch_size=B, sampler=sampler)


@contextlib.contextmanager
def patched(cls: Any, name: str, value: Any) -> Iterator[None]:
    original = cls.__dict__[name]
    setattr(cls, name, value)
    try:
        yield
    finally:
        setattr(cls, name, original)


def test_honest_seedable_in_a_plain_loop_is_verified() -> None:
    sampler = seedable()
    guard, epochs = run(_plain(sampler), epochs=3, set_epoch=sampler.set_epoch)
    assert_verified_and_silent(guard)
    assert epochs[0] != epochs[1]


def test_replaced_iter_that_ignores_the_epoch_is_caught_in_epoch_one() -> None:
    def frozen(self: Any) -> Iterator[int]:  # the insider: the same order every epoch
        g = torch.Generator().manual_seed(self.initial_seed)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()

    sampler = seedable()
    with patched(SeedableRandomSampler, "__iter__", frozen):
        guard, _ = run(_plain(sampler), epochs=3)
    (alert,) = order_alerts(guard)  # epoch 0 is honest; one alert per pass from then on
    ev = alert.finding.evidence
    assert (ev["epoch"], ev["position"], alert.step) == (1, 0, 4)
    assert ev["sampler"].endswith("SeedableRandomSampler")


def test_seed_edited_mid_run_is_caught_at_the_next_pass() -> None:
    sampler = seedable()

    def edit(epoch: int, step: int) -> None:
        if step == 2:
            sampler.initial_seed = 1234

    guard, _ = run(_plain(sampler), epochs=2, each=edit)
    (alert,) = order_alerts(guard)
    ev = alert.finding.evidence
    assert (ev["epoch"], ev["position"], ev["kind"]) == (1, 0, "seed_edited")
    assert ev["initial_seed"] == 5 and ev["sampler_initial_seed"] == "1234"
    assert alert.step == 4


@pytest.mark.parametrize("how", ["attribute", "set_epoch"])
def test_epoch_edited_mid_pass_is_caught_at_the_next_pass(how: str) -> None:
    sampler = seedable()

    def edit(epoch: int, step: int) -> None:
        if step == 2:  # the current pass is unaffected; the next starts at 8, not 1
            if how == "attribute":
                sampler.epoch = 7
            else:
                sampler.set_epoch(7)

    guard, _ = run(_plain(sampler), epochs=3, each=edit)
    (alert,) = order_alerts(guard)  # reported once; the check then follows the sampler
    ev = alert.finding.evidence
    assert (ev["epoch"], ev["kind"], ev["sampler_epoch"], ev["expected_epoch"]) == (
        1,
        "epoch_edited",
        8,
        1,
    )


def test_an_epoch_that_never_advances_is_flagged() -> None:
    # The documented limit: set_epoch(0) after every completed pass replays the order,
    # whether the insider or a careless loop does it. It is flagged either way.
    sampler = seedable()
    guard, epochs = run(_plain(sampler), epochs=3, set_epoch=lambda e: sampler.set_epoch(0))
    assert epochs[0] == epochs[1] == epochs[2]
    (alert,) = order_alerts(guard)
    assert (alert.finding.evidence["epoch"], alert.finding.evidence["kind"]) == (1, "epoch_edited")
    assert guard.repeats[(Rule.DATA_ORDER.value, "dataloader.sampler")] == 2  # every pass


def test_an_epoch_broken_off_may_restart_at_the_same_epoch() -> None:
    sampler = seedable()
    model = nn.Linear(4, 1)
    dl = _plain(sampler)
    guard = SpyGuard(model, torch.optim.SGD(model.parameters(), lr=0.1), dataloader=dl,
                     checks=[DataCheck()], ledger=False)  # fmt: skip
    for stop in (1, 1, None, None):  # two passes broken off, then two whole ones
        for n, (x, y, _) in enumerate(dl):
            ((model(x) - y) ** 2).mean().backward()
            guard.step()
            if n == stop:
                break
    guard.close()
    assert_verified_and_silent(guard)
    assert sampler.epoch == 2


def test_swapped_generator_is_harmless_but_a_reseeded_one_mid_pass_is_caught() -> None:
    # two permutations per pass: the second is drawn from the generator's state
    sampler = seedable(num_samples=2 * N)

    def swap(epoch: int, step: int) -> None:
        if step == 1:  # a fresh generator: the sampler reseeds it at the next pass
            sampler.generator = torch.Generator().manual_seed(99)

    guard, _ = run(_plain(sampler), epochs=2, each=swap)
    assert_verified_and_silent(guard)

    sampler = seedable(num_samples=2 * N)

    def reseed(epoch: int, step: int) -> None:
        if step == 1:  # mid-pass: the second permutation of this pass changes
            sampler.generator.manual_seed(99)

    guard, _ = run(_plain(sampler), epochs=1, each=reseed)
    (alert,) = order_alerts(guard)
    assert alert.finding.evidence["position"] == N and alert.step == N // B + 1


def test_patched_randperm_is_caught_under_the_trainer_sampler() -> None:
    real = torch.randperm

    def rolled(*args: Any, **kwargs: Any) -> torch.Tensor:
        return real(*args, **kwargs).roll(1)

    sampler = seedable()
    dl = _plain(sampler)

    def patch(epoch: int, step: int) -> None:
        torch.randperm = rolled

    try:
        guard, _ = run(dl, epochs=2, each=patch)
    finally:
        torch.randperm = real
    (alert,) = order_alerts(guard)
    assert alert.finding.evidence["epoch"] == 1


def test_limits_first_epoch_and_data_source_length_are_followed() -> None:
    # Documented limits, pinned: the first pass's epoch is what the sampler says, and a
    # data_source of another length is followed (the order stays a permutation of it).
    sampler = seedable()
    sampler.set_epoch(5)  # before the first pass

    def shrink(epoch: int, step: int) -> None:
        if step == 3:
            sampler.data_source = Indexed(6)

    guard, epochs = run(_plain(sampler), epochs=2, each=shrink)
    assert order_alerts(guard) == []
    assert sorted(i for b in epochs[1] for i in b) == list(range(6))


def test_subclass_and_replacement_stay_unverified_and_silent() -> None:
    class Mine(SeedableRandomSampler):  # type: ignore[misc]
        pass

    for sampler in (
        Mine(Indexed(), data_seed=1),
        SeedableRandomSampler(Indexed(), replacement=True, num_samples=8, data_seed=1),
    ):
        guard, _ = run(_plain(sampler), epochs=2)
        assert guard.alerts == []
        (note,) = guard.events("data.unverified")
        assert "fingerprinted only" in note["reason"]


# -- attacks on BatchSamplerShard -------------------------------------------------------


def test_process_index_edited_mid_run_is_caught() -> None:
    dl = sharded(0, n=17)  # 5 batches: the shard pads the tail from the first ones

    def edit(epoch: int, step: int) -> None:
        if epoch == 1 and step == 4:
            dl.batch_sampler.process_index = 1  # this process now trains on 1's batches

    guard, _ = run(dl, epochs=2, each=edit)
    (alert,) = order_alerts(guard)
    ev = alert.finding.evidence
    assert (ev["epoch"], ev["process_index"], ev["num_processes"]) == (1, 0, 2)
    assert ev["sampler"].endswith("BatchSamplerShard")
    assert ev["kind"] in {"skipped", "foreign"}


def test_shard_iter_that_drops_a_batch_is_caught() -> None:
    original = BatchSamplerShard.__iter__

    def thinned(self: Any) -> Iterator[list[int]]:
        for n, b in enumerate(original(self)):
            if n != 1:
                yield b

    dl = sharded(1, n=17)
    with patched(BatchSamplerShard, "__iter__", thinned):
        guard, _ = run(dl, epochs=1)
    (alert,) = order_alerts(guard)
    assert alert.finding.evidence["batch"] == 1
    assert alert.finding.evidence["kind"] == "skipped"


def test_uneven_tail_flipped_mid_run_is_caught() -> None:
    dl = sharded(1, n=11)  # 3 batches on 2 processes: process 1 gets a padded tail

    def edit(epoch: int, step: int) -> None:
        dl.batch_sampler.even_batches = False  # process 1 silently loses its tail batch

    guard, epochs = run(dl, epochs=2, each=edit)
    assert [len(e) for e in epochs] == [2, 1]
    (alert,) = order_alerts(guard)
    ev = alert.finding.evidence
    assert (ev["epoch"], ev["kind"], ev["actual"]) == (1, "early_end", None)


def test_inner_sampler_replaced_behind_the_shard_is_caught() -> None:
    dl = sharded(0)

    def edit(epoch: int, step: int) -> None:
        if step == 1:  # replaces the guard's recorder too: nothing verifies indices now
            standard = dl.batch_sampler.batch_sampler
            standard.sampler = SequentialSampler(Indexed())

    guard, _ = run(dl, epochs=2, each=edit)
    (alert,) = order_alerts(guard)
    assert alert.finding.evidence["kind"] == "unexplained"
    assert alert.finding.evidence["epoch"] == 1


# -- a real Hugging Face Trainer with the trainguard callback ---------------------------


class _Tokens(Dataset[dict[str, Any]]):
    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.rows = torch.randint(0, 64, (24, 8), generator=g)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"input_ids": self.rows[i], "labels": self.rows[i]}


@pytest.fixture
def quiet(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TRAINGUARD_LEDGER", raising=False)
    monkeypatch.delenv("TRAINGUARD_RUN_KEY", raising=False)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _train(
    out: Path,
    ledger: Path,
    max_steps: int,
    resume: str | None = None,
    extra: list[Any] | None = None,
) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from trainguard.integrations.hf import TrainguardCallback

    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=4,  # 6 batches per epoch
        learning_rate=1e-3,
        save_strategy="steps",
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
    )
    callback = TrainguardCallback(ledger=ledger, checks=[DataCheck()])
    trainer = Trainer(
        model=GPT2LMHeadModel(config),
        args=args,
        train_dataset=_Tokens(),
        callbacks=[callback, *(extra or [])],
    )
    trainer.train(resume_from_checkpoint=resume)
    return callback


def _data_records(ledger: Path) -> tuple[list[Any], list[Any], list[Any]]:
    records = read_records(ledger)
    unverified = [r for r in records if r.evidence.get("event") == "data.unverified"]
    prints = [r for r in records if r.evidence.get("event") == "data.fingerprints"]
    alerts = [r for r in records if r.kind == "alert"]
    return unverified, prints, alerts


def test_trainer_run_and_its_resumes_are_verified_and_silent(tmp_path: Path, quiet: None) -> None:
    # 6 batches per epoch, 8 steps: the run crosses into a second epoch
    first = _train(tmp_path / "run", tmp_path / "first", max_steps=8)
    assert first.guard is not None and first.guard.steps == 8
    unverified, prints, alerts = _data_records(tmp_path / "first")
    assert unverified == [] and alerts == []
    assert {r.evidence["epoch"] for r in prints} == {0, 1}

    # checkpoint-4: mid-epoch (skip_first_batches); checkpoint-6: the epoch boundary
    for at in (4, 6):
        ledger = tmp_path / f"resumed-{at}"
        again = _train(
            tmp_path / "run", ledger, max_steps=8, resume=str(tmp_path / "run" / f"checkpoint-{at}")
        )
        assert again.guard is not None and again.guard.steps == 8 - at
        unverified, prints, alerts = _data_records(ledger)
        assert unverified == [] and alerts == [], (unverified, alerts)
        assert prints


def test_trainer_sampler_seed_edited_by_a_callback_is_caught(tmp_path: Path, quiet: None) -> None:
    from transformers import TrainerCallback

    class Insider(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                kwargs["train_dataloader"].batch_sampler.sampler.initial_seed += 1

    callback = _train(tmp_path / "run", tmp_path / "l", max_steps=8, extra=[Insider()])
    assert callback.guard is not None
    (alert,) = order_alerts(callback.guard)
    ev = alert.finding.evidence
    assert (ev["epoch"], ev["position"], ev["kind"]) == (1, 0, "seed_edited")
    assert ev["sampler"].endswith("SeedableRandomSampler")
