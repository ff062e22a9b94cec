"""``guard.authorized()`` is honoured only for the callers ``trainguard.guard.authority``
trusts: the entry script's code as it is on disk, trainguard's own modules, modules the
operator names, and the supervisor's token. Each test attacks one of those trusts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from trainguard.findings import Rule
from trainguard.guard import authority
from trainguard.guard.checks.hyper import HyperCheck
from trainguard.guard.core import Guard

torch = pytest.importorskip("torch")

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    from trainguard.guard.checks.hyper import HyperCheck
    from trainguard.guard.core import Guard

    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = Guard(model, opt, checks=[HyperCheck()], ledger=False)

    def step():
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        guard.step()

    def lower_lr(lr):
        with guard.authorized("lower the LR by hand"):
            opt.param_groups[0]["lr"] = lr

    step()
    lower_lr(0.05)  # a function of the script
    step()
    with guard.authorized("top level"):  # the script's module-level code
        opt.param_groups[0]["lr"] = 0.04
    step()
    seen = len(guard.alerts)
    # the attack: code of the attacker's making, compiled under the script's own name and
    # run in its globals, so the frame looks like the script's
    fake = "def sneak():\\n    with guard.authorized('sneak'):\\n"
    fake += "        opt.param_groups[0]['lr'] = 9.0\\n"
    exec(compile(fake, __file__, "exec"), globals())
    sneak()
    step()
    print(json.dumps({
        "honest": [a.rule.value for a in guard.alerts[:seen]],
        "attack": [[a.rule.value, a.finding.location.path] for a in guard.alerts[seen:]],
    }))
    """
)


def test_the_entry_script_is_trusted_and_a_fake_under_its_name_is_not(tmp_path: Path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["honest"] == []
    rules = [rule for rule, _ in got["attack"]]
    assert Rule.GUARD_AUTHORIZATION.value in rules
    (where,) = [w for r, w in got["attack"] if r == Rule.GUARD_AUTHORIZATION.value]
    assert where.startswith(f"authorized:{script}:")
    # the window was not honoured: the LR change inside it is tampering
    assert Rule.OPTIMIZER_TAMPER.value in rules


def _guarded() -> tuple[Guard, torch.optim.Optimizer, torch.nn.Module]:
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return Guard(model, opt, checks=[HyperCheck()], ledger=False), opt, model


def _step(guard: Guard, opt: torch.optim.Optimizer, model: torch.nn.Module) -> None:
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    guard.step()


def _module(name: str, source: str, **names: object) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(names)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


EDIT = (
    "def edit(guard, opt, **kw):\n"
    "    with guard.authorized('edit', **kw):\n"
    "        opt.param_groups[0]['lr'] = 0.01\n"
)


def test_foreign_code_gets_an_alert_and_no_window(monkeypatch: pytest.MonkeyPatch):
    plugin = _module("some_plugin", EDIT)
    monkeypatch.setitem(sys.modules, "some_plugin", plugin)
    guard, opt, model = _guarded()
    _step(guard, opt, model)
    plugin.edit(guard, opt)
    _step(guard, opt, model)
    rules = [a.rule for a in guard.alerts]
    assert rules[0] is Rule.GUARD_AUTHORIZATION and Rule.OPTIMIZER_TAMPER in rules
    (auth,) = [a for a in guard.alerts if a.rule is Rule.GUARD_AUTHORIZATION]
    assert auth.finding.evidence["honoured"] is False and "stack" in auth.finding.evidence
    assert not guard.is_authorized


def test_a_function_added_to_a_configured_module_later_is_not_its_code(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(authority, "_configured", ("test_cfg_*",))
    module = _module("test_cfg_mod", EDIT)
    monkeypatch.setitem(sys.modules, "test_cfg_mod", module)
    guard, opt, model = _guarded()
    module.edit(guard, opt)  # the module's own code, as it was first seen: honoured
    _step(guard, opt, model)
    assert guard.alerts == []
    exec(compile(EDIT.replace("edit", "late"), "<attacker>", "exec"), module.__dict__)
    module.late(guard, opt)  # same globals, same module, code of the attacker's making
    _step(guard, opt, model)
    assert guard.alerts[0].rule is Rule.GUARD_AUTHORIZATION


def test_the_supervisors_token_is_taken_from_the_environment_and_honoured(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(authority, "_token_digest", None)
    env = {authority.TOKEN_ENV: "per-run-secret", "OTHER": "x"}
    assert authority.take_token(env)
    assert env == {"OTHER": "x"}  # gone from the job's environment
    plugin = _module("token_plugin", EDIT)
    monkeypatch.setitem(sys.modules, "token_plugin", plugin)
    guard, opt, model = _guarded()
    plugin.edit(guard, opt, token="per-run-secret")
    _step(guard, opt, model)
    assert guard.alerts == []
    plugin.edit(guard, opt, token="guessed")
    _step(guard, opt, model)
    assert guard.alerts[0].rule is Rule.GUARD_AUTHORIZATION


def test_trainguards_own_callers_verify_against_their_files():
    """The HF callback opens the resume window: its code, loaded from the installed file
    (or its cached bytecode), equals that file compiled now."""
    from trainguard.integrations import hf

    codes = [f.__code__ for f in vars(hf.TrainguardCallback).values() if hasattr(f, "__code__")]
    assert codes and all(authority._on_disk(c, hf) for c in codes)
    fake = compile("def on_train_begin(): pass\n", hf.__file__, "exec").co_consts[0]
    assert not authority._on_disk(fake, hf)
