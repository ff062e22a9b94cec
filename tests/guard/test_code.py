"""runtime.monkeypatch: replaced torch code, swapped code objects, new hooks, and silence
on honest runs (lazy torch wrappers, schedulers built late, transformers imported mid-run).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import marshal
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import guardkit
from trainguard.guard import Guard
from trainguard.guard.checks.code import CodeCheck
from trainguard.guard.checks.rng import RngCheck
from trainguard.ledger import read_records

MONKEYPATCH = "runtime.monkeypatch"
_ABSENT = object()


@contextlib.contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[Any]:
    """Set ``owner.name`` (class, module or instance); put back exactly what was there."""
    before = vars(owner).get(name, _ABSENT)
    original = getattr(owner, name)
    try:
        setattr(owner, name, value)
        yield original
    finally:
        if before is _ABSENT:
            delattr(owner, name)
        else:
            setattr(owner, name, before)


@contextlib.contextmanager
def swapped_code(fn: Any, code: Any) -> Iterator[None]:
    original = fn.__code__
    fn.__code__ = code
    try:
        yield
    finally:
        fn.__code__ = original


def _relu_code_from_tampered_source() -> Any:
    """What a patched ``functional.pyc`` would hold: the same file, qualname and lines,
    with one expression changed."""
    path = F.__file__
    source = Path(path).read_text(encoding="utf-8")
    tampered = source.replace("result = torch.relu(input)", "result = torch.relu(input) * 1.0")
    assert tampered != source
    module = compile(tampered, path, "exec", dont_inherit=True)
    for const in module.co_consts:
        if getattr(const, "co_qualname", None) == "relu":
            return const
    raise AssertionError("relu not found")


def _guard(net: Any, opt: Any, *, verify: bool = False, **kw: Any) -> tuple[Guard, CodeCheck]:
    check = CodeCheck(verify_source=verify)
    guard = Guard(net, opt, checks=[check], ledger=kw.pop("ledger", False), every=1, **kw)
    return guard, check


def _run(
    attacks: dict[int, Callable[[], None]] | None = None,
    *,
    steps: int = 5,
    opt_factory: Callable[[Any], Any] = lambda p: torch.optim.AdamW(p, lr=1e-3),
) -> list[tuple[str, int | None, str]]:
    net = guardkit.model()
    opt = opt_factory(net.parameters())
    guard, _ = _guard(net, opt)
    try:
        return guardkit.train(net, opt, guard, steps=steps, attacks=attacks)
    finally:
        guard.close()


# -- attacks after attach: caught at the step they first run in ----------------------------


def test_adamw_step_patched_on_the_class() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard, _ = _guard(net, opt)
    original = torch.optim.AdamW.step  # torch's hooked wrapper, now that an AdamW exists
    with contextlib.ExitStack() as stack:

        def evil_step(self: Any, closure: Any = None) -> Any:
            return original(self, closure)

        attack = {3: lambda: stack.enter_context(patched(torch.optim.AdamW, "step", evil_step))}
        alerts = guardkit.train(net, opt, guard, steps=5, attacks=attack)
        guard.close()
    assert torch.optim.AdamW.step is original
    assert alerts == [(MONKEYPATCH, 3, "torch.optim.AdamW.step")]
    alert = guard.alerts[0]
    assert alert.severity.name == "CRITICAL"
    assert "evil_step" in alert.finding.evidence["new"]["qualname"]
    assert "test_code.py" in alert.finding.evidence["new"]["file"]


@pytest.mark.parametrize(
    ("owner", "name", "where"),
    [
        (F, "gelu", "torch.nn.functional.gelu"),
        (F, "relu", "torch.nn.functional.relu"),
        (torch.utils.data.DataLoader, "__iter__", "torch.utils.data.DataLoader.__iter__"),
        (
            importlib.import_module("torch.optim.adam"),
            "_single_tensor_adam",
            "torch.optim.adam._single_tensor_adam",
        ),
        (importlib.import_module("torch.optim.adamw"), "adamw", "torch.optim.adamw.adamw"),
        (torch.optim.lr_scheduler.LRScheduler, "step", "torch.optim.lr_scheduler.LRScheduler.step"),
        (torch.utils.data.RandomSampler, "__iter__", "torch.utils.data.RandomSampler.__iter__"),
        (torch.nn.Module, "__call__", "torch.nn.Module.__call__"),
        (torch.nn.utils.clip_grad, "clip_grad_norm_", "torch.nn.utils.clip_grad.clip_grad_norm_"),
        (torch, "randperm", "torch.randperm"),
    ],
)
def test_replaced_torch_names_are_caught(owner: Any, name: str, where: str) -> None:
    with contextlib.ExitStack() as stack:
        original = getattr(owner, name)

        def evil(*args: Any, **kwargs: Any) -> Any:
            return original(*args, **kwargs)

        alerts = _run({4: lambda: stack.enter_context(patched(owner, name, evil))})
    assert getattr(owner, name) is original
    assert alerts == [(MONKEYPATCH, 4, where)]


def test_a_torch_function_moved_to_another_name() -> None:
    """Known code in the wrong place is still a replacement: gelu that computes silu."""
    with contextlib.ExitStack() as stack:
        alerts = _run({3: lambda: stack.enter_context(patched(F, "gelu", F.silu))})
    assert alerts == [(MONKEYPATCH, 3, "torch.nn.functional.gelu")]


def test_tensor_method_shadowed() -> None:
    with contextlib.ExitStack() as stack:
        original = torch.Tensor.add_

        def add_(self: Any, *args: Any, **kwargs: Any) -> Any:
            return original(self, *args, **kwargs)

        alerts = _run({2: lambda: stack.enter_context(patched(torch.Tensor, "add_", add_))})
    assert "add_" not in vars(torch.Tensor)
    assert alerts == [(MONKEYPATCH, 2, "torch.Tensor.add_")]


def test_code_swapped_in_place_after_attach() -> None:
    tampered = _relu_code_from_tampered_source()
    with contextlib.ExitStack() as stack:
        alerts = _run({3: lambda: stack.enter_context(swapped_code(F.relu, tampered))})
    assert F.relu.__code__ is not tampered
    assert alerts == [(MONKEYPATCH, 3, "torch.nn.functional.relu")]


def test_defaults_changed_in_place() -> None:
    defaults = F.dropout.__defaults__
    try:
        alerts = _run({3: lambda: setattr(F.dropout, "__defaults__", (0.9, True, False))})
    finally:
        F.dropout.__defaults__ = defaults
    assert alerts == [(MONKEYPATCH, 3, "torch.nn.functional.dropout")]


def test_hooks_registered_after_attach_are_caught() -> None:
    handles: list[Any] = []
    optimizer_module = importlib.import_module("torch.optim.optimizer")
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard, _ = _guard(net, opt)

    def hook(*args: Any) -> None:
        return None

    attacks = {
        2: lambda: handles.append(torch.nn.modules.module.register_module_forward_hook(hook)),
        3: lambda: handles.append(net[0].register_forward_pre_hook(hook)),  # type: ignore[index]
        4: lambda: handles.append(net[2].weight.register_hook(lambda g: g)),  # type: ignore[index]
        5: lambda: handles.append(opt.register_step_pre_hook(hook)),
        6: lambda: handles.append(optimizer_module.register_optimizer_step_post_hook(hook)),
    }
    try:
        alerts = guardkit.train(net, opt, guard, steps=7, attacks=attacks)
    finally:
        guard.close()
        for handle in handles:
            handle.remove()
    assert alerts == [
        (MONKEYPATCH, 2, "torch.nn.modules.module._global_forward_hooks"),
        (MONKEYPATCH, 3, "model.0._forward_pre_hooks"),
        (MONKEYPATCH, 4, "parameter 2.weight._backward_hooks"),
        (MONKEYPATCH, 5, "optimizer._optimizer_step_pre_hooks"),
        (MONKEYPATCH, 6, "torch.optim.optimizer._global_optimizer_post_hooks"),
    ]
    assert {a.severity.name for a in guard.alerts} == {"HIGH"}


def test_instance_level_replacements_are_caught() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard, _ = _guard(net, opt)
    real_step, real_forward = opt.step, net[0].forward  # type: ignore[index]

    class Impostor(torch.optim.AdamW):
        pass

    attacks = {
        2: lambda: setattr(net[0], "forward", lambda x: real_forward(x)),  # type: ignore[index]
        3: lambda: setattr(opt, "step", lambda closure=None: real_step(closure)),
        5: lambda: setattr(opt, "__class__", Impostor),
    }
    alerts = guardkit.train(net, opt, guard, steps=6, attacks=attacks)
    guard.close()
    assert alerts == [
        (MONKEYPATCH, 2, "model.0.forward"),
        (MONKEYPATCH, 3, "optimizer.step"),
        (MONKEYPATCH, 5, "optimizer.__class__"),
    ]


def test_changes_inside_authorized_are_accepted(tmp_path: Path) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard, _ = _guard(net, opt, ledger=tmp_path / "ledger")
    original = F.gelu

    def my_gelu(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    def authorized_patch() -> None:
        with guard.authorized("custom gelu"):
            F.gelu = my_gelu

    try:
        alerts = guardkit.train(net, opt, guard, steps=5, attacks={3: authorized_patch})
    finally:
        guard.close()
        F.gelu = original
    assert alerts == []
    accepted = [r for r in read_records(tmp_path / "ledger") if r.message == "code.accepted"]
    assert [r.evidence["where"] for r in accepted] == ["torch.nn.functional.gelu"]


# -- patches made before the guard started: the comparison with the source on disk ---------


def test_code_swapped_before_attach_fails_the_disk_comparison() -> None:
    tampered = _relu_code_from_tampered_source()
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    with swapped_code(F.relu, tampered):
        guard, check = _guard(net, opt, verify=True)
        assert check.wait_verified(60)
        alerts = guardkit.train(net, opt, guard, steps=2)
        guard.close()
    assert [(r, w) for r, _, w in alerts] == [(MONKEYPATCH, "torch.nn.functional.relu")]
    assert "does not match its source file" in guard.alerts[0].finding.message
    assert guard.alerts[0].severity.name == "CRITICAL"


def test_foreign_function_installed_before_attach() -> None:
    original = F.gelu

    def gelu(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    with patched(F, "gelu", gelu):
        guard, check = _guard(net, opt, verify=True)
        assert check.wait_verified(60)
        guard.close()
    assert [(a.rule.value, a.finding.location.path) for a in guard.alerts] == [
        (MONKEYPATCH, "torch.nn.functional.gelu")
    ]
    assert "outside torch" in guard.alerts[0].finding.message


_HONEST_MODEL = """\
import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.lin(x)
"""


def test_patched_pyc_of_an_installed_module(tmp_path: Path) -> None:
    """A real patched .pyc next to honest source: Python loads it (its header matches the
    source's mtime and size), nothing in memory ever changes, the disk comparison sees it."""
    site = tmp_path / "site-packages"
    site.mkdir()
    source = site / "tg_fake_model.py"
    source.write_text(_HONEST_MODEL)
    tampered = _HONEST_MODEL.replace("return self.lin(x)", "return self.lin(x) * 2")
    code = compile(tampered, str(source), "exec", dont_inherit=True)
    stat = source.stat()
    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, "little")
    header += (int(stat.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little")
    header += (stat.st_size & 0xFFFFFFFF).to_bytes(4, "little")
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir()
    pyc.write_bytes(header + marshal.dumps(code))
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    try:
        import tg_fake_model  # type: ignore[import-not-found]

        net = tg_fake_model.Net()
        x = torch.ones(1, 16)
        assert torch.equal(net(x), net.lin(x) * 2)  # the tampered code is what runs
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        guard, check = _guard(net, opt, verify=True)
        assert check.wait_verified(60)
        guard.close()
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("tg_fake_model", None)
    assert [(a.rule.value, a.finding.location.path) for a in guard.alerts] == [
        (MONKEYPATCH, "tg_fake_model.Net.forward")
    ]


# -- honest runs ---------------------------------------------------------------------------


def test_honest_adamw_lambdalr_run_is_silent_and_verified(tmp_path: Path) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min(1.0, (e + 1) / 5))
    guard, check = _guard(net, opt, verify=True, scheduler=sched, ledger=tmp_path / "ledger")
    assert check.wait_verified(60)
    alerts = guardkit.train(net, opt, guard, steps=8, scheduler=sched)
    guard.close()
    assert alerts == []
    records = read_records(tmp_path / "ledger")
    verified = [r.evidence for r in records if r.message == "code.verified"]
    assert len(verified) == 1
    assert verified[0]["ok"] > 500
    assert verified[0]["mismatch"] == verified[0]["missing"] == verified[0]["foreign"] == 0


def test_honest_sgd_steplr_built_after_the_guard_is_silent() -> None:
    """torch wraps lazily: ``Optimizer.step`` gets its hook wrapper for the first instance
    of each class, and a scheduler wraps ``optimizer.step`` on the instance."""
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    guard, _ = _guard(net, opt)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
    others: list[Any] = []

    def new_optimizers() -> None:
        for cls in (torch.optim.RMSprop, torch.optim.Adagrad, torch.optim.NAdam):
            other = cls(torch.nn.Linear(2, 2).parameters())
            others.append(torch.optim.lr_scheduler.StepLR(other, 2))

    alerts = guardkit.train(net, opt, guard, steps=6, scheduler=sched, attacks={3: new_optimizers})
    guard.close()
    assert alerts == []


def test_honest_dataloader_clipping_scaler_checkpointing_is_silent() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    data = torch.utils.data.TensorDataset(torch.randn(32, 16))
    loader = torch.utils.data.DataLoader(data, batch_size=8, shuffle=True)
    guard, _ = _guard(net, opt, dataloader=loader)
    scaler = torch.amp.GradScaler("cpu")
    for (x,) in loader:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = torch.utils.checkpoint.checkpoint(net, x, use_reentrant=False)
        scaler.scale(out.float().pow(2).mean()).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        guard.step()
    guard.close()
    assert guard.alerts == []


def test_torch_lazy_dynamo_wrapper_is_accepted() -> None:
    """torch._dynamo, imported by the first optimizer, rewraps ``torch.manual_seed`` with
    ``torch._disable_dynamo``; the same happening after the guard started is torch's own."""
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    original = torch.manual_seed
    guard, _ = _guard(net, opt)
    try:
        lazy = {2: lambda: setattr(torch, "manual_seed", torch._disable_dynamo(original))}
        alerts = guardkit.train(net, opt, guard, steps=3, attacks=lazy)
    finally:
        guard.close()
        torch.manual_seed = original
    assert alerts == []


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's own, importing dynamo
def test_torch_compile_after_the_guard_is_torch_own() -> None:
    """``model.compile()`` sets ``_compiled_call_impl`` on the instance, and the first use
    of dynamo wraps every optimizer's ``_init_group``: torch code around torch code."""
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard, check = _guard(net, opt)
    try:
        net.compile()  # lazy: nothing is compiled until the next forward, which never comes
        check.check_now(guard)
    finally:
        guard.close()
    assert guard.alerts == []


@pytest.mark.parametrize("rng_first", [True, False])
def test_rng_wrappers_are_not_a_monkeypatch(rng_first: bool) -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    code = CodeCheck()
    checks = [RngCheck(), code] if rng_first else [code, RngCheck()]
    guard = Guard(net, opt, checks=checks, ledger=False, every=1)
    assert code.wait_verified(60)
    guardkit.train(net, opt, guard, steps=3)
    guard.close()
    assert guard.alerts == []


def test_periodic_recheck_costs_a_few_ms() -> None:
    net = guardkit.model()
    opt = torch.optim.AdamW(net.parameters())
    guard, check = _guard(net, opt)
    guardkit.train(net, opt, guard, steps=2)
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        check.check_now(guard)
        samples.append(time.perf_counter() - start)
    guard.close()
    assert guard.alerts == []
    assert min(samples) < 0.05  # measured ~2 ms on a 2-core CPU box


_MIDWAY = """\
import json, random
import torch
from transformers import set_seed

set_seed(42)
from trainguard.guard import Guard
from trainguard.guard.checks.code import CodeCheck
from trainguard.guard.checks.rng import RngCheck

net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 2))
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: min(1.0, (e + 1) / 3))
code = CodeCheck()
guard = Guard(net, opt, scheduler=sched, checks=[RngCheck(), code], ledger=False, every=1, seed=42)
for step in range(1, 9):
    if step == 4:
        from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
        cfg = GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=8,
                         bos_token_id=0, eos_token_id=0)
        ids = torch.randint(0, 32, (2, 8))
        GPT2LMHeadModel(cfg)(ids, labels=ids).loss.backward()
    loss = net(torch.randn(4, 8)).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
    sched.step()
    guard.step(loss)
assert code.wait_verified(60)
guard.close()
print(json.dumps([[a.rule.value, a.step, a.finding.location.path] for a in guard.alerts]))
"""


def test_honest_run_importing_transformers_midway() -> None:
    pytest.importorskip("transformers")
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TRAINGUARD_LEDGER": ""}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_MIDWAY)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
