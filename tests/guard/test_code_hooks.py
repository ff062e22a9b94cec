"""runtime.monkeypatch: hooks present when the guard starts are judged, not adopted.
Verified library code and the job's entry script are events; any other code is an alert."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import guardkit
from trainguard.guard.checks.code import CodeCheck

MONKEYPATCH = "runtime.monkeypatch"
_OPTIM = importlib.import_module("torch.optim.optimizer")
_MODULE = importlib.import_module("torch.nn.modules.module")


def _marker(*args: Any) -> None:
    """A hook of this (project, not entry-script) module: it does nothing."""
    return None


def _spy(net: Any, opt: Any) -> guardkit.SpyGuard:
    return guardkit.SpyGuard(net, opt, checks=[CodeCheck(verify_source=False)], ledger=False)


_REGISTRATIONS: list[tuple[str, Callable[[Any, Any], Any], str]] = [
    (
        "forward pre hook",
        lambda n, o: n[0].register_forward_pre_hook(_marker),
        "model.0._forward_pre_hooks",
    ),
    (
        "backward hook",
        lambda n, o: n[2].register_full_backward_hook(_marker),
        "model.2._backward_hooks",
    ),
    (
        "global forward hook",
        lambda n, o: _MODULE.register_module_forward_hook(_marker),
        "torch.nn.modules.module._global_forward_hooks",
    ),
    (
        "tensor hook",
        lambda n, o: n[0].weight.register_hook(_marker),
        "parameter 0.weight._backward_hooks",
    ),
    (
        "post-accumulate-grad hook",
        lambda n, o: n[2].bias.register_post_accumulate_grad_hook(_marker),
        "parameter 2.bias._post_accumulate_grad_hooks",
    ),
    (
        "optimizer pre hook",
        lambda n, o: o.register_step_pre_hook(_marker),
        "optimizer._optimizer_step_pre_hooks",
    ),
    (
        "global optimizer post hook",
        lambda n, o: _OPTIM.register_optimizer_step_post_hook(_marker),
        "torch.optim.optimizer._global_optimizer_post_hooks",
    ),
]


@pytest.mark.parametrize(
    ("kind", "register", "where"), _REGISTRATIONS, ids=[r[0] for r in _REGISTRATIONS]
)
def test_a_project_hook_registered_before_the_guard_is_an_alert(
    kind: str, register: Callable[[Any, Any], Any], where: str
) -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handle = register(net, opt)
    try:
        guard = _spy(net, opt)
        guard.close()
    finally:
        handle.remove()
    assert [(a.rule.value, a.step, a.finding.location.path) for a in guard.alerts] == [
        (MONKEYPATCH, 0, where)
    ]
    assert "before the guard started" in guard.alerts[0].finding.message
    assert guard.alerts[0].severity.name == "HIGH"


def test_a_c_function_as_a_hook_is_an_alert() -> None:
    """``torch.Tensor.neg`` is torch's own code, and flips every gradient."""
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    handle = net[0].weight.register_hook(torch.Tensor.neg)  # type: ignore[index]
    try:
        guard = _spy(net, opt)
        guard.close()
    finally:
        handle.remove()
    assert [a.finding.location.path for a in guard.alerts] == ["parameter 0.weight._backward_hooks"]
    assert "not Python code" in guard.alerts[0].finding.message


def test_library_hook_registered_before_the_guard_is_an_event() -> None:
    """transformers' ``enable_input_require_grads`` (gradient checkpointing with frozen
    embeddings) registers a forward hook of its own installed code."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=32, n_positions=8)
    net = transformers.GPT2LMHeadModel(cfg)
    net.enable_input_require_grads()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    guard = _spy(net, opt)
    ids = torch.randint(0, 32, (2, 8))
    for _ in range(2):
        net(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        guard.step()
    guard.close()
    assert guard.alerts == []
    adopted = guard.events("code.hook_adopted")
    assert [e["where"] for e in adopted] == ["model.transformer.wte._forward_hooks"]
    assert adopted[0]["origins"] == ["library"]


def test_hooks_on_autograd_nodes_are_declared_unenumerable() -> None:
    net = guardkit.model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    guard = _spy(net, opt)
    guard.close()
    [event] = guard.events("code.unenumerable")
    assert "AccumulateGrad" in event["what"]


_ENTRY = """\
import json, sys, tempfile, os
import torch
from trainguard.guard import Guard
from trainguard.guard.checks.code import CodeCheck

def log_grad(module, grad_input, grad_output):
    return None

net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
net[0].register_full_backward_hook(log_grad)
ns = {}
exec(compile("def hidden(grad):\\n    return grad\\n", "<string>", "exec"), ns)
net[1].weight.register_hook(ns["hidden"])
folder = tempfile.mkdtemp()
path = os.path.join(folder, "tg_tmp_hook.py")
with open(path, "w") as fh:
    fh.write("def scale(grad):\\n    return grad\\n")
sys.path.insert(0, folder)
import tg_tmp_hook
net[1].bias.register_hook(tg_tmp_hook.scale)
opt = torch.optim.SGD(net.parameters(), lr=0.1)
seen = []

class Spy(Guard):
    def event(self, message, evidence):
        seen.append((message, dict(evidence)))
        super().event(message, evidence)

guard = Spy(net, opt, checks=[CodeCheck(verify_source=False)], ledger=False)
guard.close()
print(json.dumps({
    "alerts": [a.finding.location.path for a in guard.alerts],
    "adopted": [e["where"] for m, e in seen if m == "code.hook_adopted"],
}))
"""


def test_entry_script_hook_is_an_event_exec_and_temp_file_hooks_are_alerts(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_ENTRY))
    env = {**os.environ, "TRAINGUARD_LEDGER": ""}
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["adopted"] == ["model.0._backward_hooks"]
    assert sorted(out["alerts"]) == [
        "parameter 1.bias._backward_hooks",
        "parameter 1.weight._backward_hooks",
    ]
