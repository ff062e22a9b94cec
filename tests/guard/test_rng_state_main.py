"""Epoch reseeding by the job's own entry script is an event; a repeated seed that replays
the stream is MEDIUM; a reseed from any other code (an imported module, code compiled
under the script's file name) stays HIGH. Each job runs as ``__main__`` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys
import torch
import helper
from trainguard.guard import Guard
from trainguard.guard.checks.rng import RngCheck

torch.manual_seed(0)
net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.5), torch.nn.Linear(8, 1))
opt = torch.optim.SGD(net.parameters(), lr=0.01)
fake = {{}}
exec(compile("import torch\\ndef reseed(e):\\n    torch.manual_seed(e)\\n", __file__, "exec"), fake)
guard = Guard(net, opt, checks=[RngCheck()], ledger=False)
for epoch in range(3):
    {reseed}
    for _ in range(3):
        net(torch.randn(2, 4)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        guard.step()
guard.close()
print(json.dumps([[a.rule.value, a.step, a.finding.location.path, a.severity.name]
                  for a in guard.alerts]))
"""

HELPER = """
import torch

def reseed(epoch):
    torch.manual_seed(100 + epoch)
"""


def _run(tmp_path: Path, reseed: str) -> list[list[object]]:
    (tmp_path / "helper.py").write_text(HELPER)
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(reseed=reseed))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: list[list[object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_seed_plus_epoch_from_the_entry_script_is_silent(tmp_path: Path) -> None:
    assert _run(tmp_path, "torch.manual_seed(100 + epoch)") == []


def test_the_same_seed_every_epoch_is_medium(tmp_path: Path) -> None:
    alerts = _run(tmp_path, "torch.manual_seed(7)")
    assert alerts == [["runtime.rng_reseed", 4, "rng_state.cpu", "MEDIUM"]]  # epoch 1 replays 0


@pytest.mark.parametrize(
    ("reseed", "where"),
    [
        ("helper.reseed(epoch)", "torch.manual_seed"),  # an imported module of the project
        ("fake['reseed'](100 + epoch)", "torch.manual_seed"),  # compiled as train.py
        ("exec('torch.manual_seed(100 + epoch)')", "torch.manual_seed"),  # <string>
    ],
    ids=["imported module", "fake file name", "exec"],
)
def test_reseeds_from_other_code_stay_high(tmp_path: Path, reseed: str, where: str) -> None:
    alerts = _run(tmp_path, reseed)
    assert [a[2:] for a in alerts] == [[where, "HIGH"]]
    assert alerts[0][1] == 1  # epoch 0 reseeds after the guard started
