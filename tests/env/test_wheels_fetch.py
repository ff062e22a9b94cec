"""``env verify --wheels``: RECORD re-derived from the wheels on the package index.

The attack is the one RECORD alone cannot see: a file rewritten together with its RECORD
row. The "package index" here is a folder of wheels given to pip as ``PIP_FIND_LINKS``
with ``PIP_NO_INDEX``, i.e. pip's configured index, which is what the check trusts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from envkit import Env, record_hash

from trainguard.cli import main
from trainguard.env import exit_code, verify


def _rewrite_with_record(env: Env) -> Path:
    target = env.site / "tinypkg" / "optim.py"
    new = b"def step(lr):\n    return lr * 9.9\n"
    target.write_bytes(new)
    info = env.dist_info("tinypkg")
    rows = (info / "RECORD").read_text().splitlines()
    rows = [
        f"tinypkg/optim.py,{record_hash(new)},{len(new)}" if r.startswith("tinypkg/optim.py,")
        else r
        for r in rows
    ]  # fmt: skip
    (info / "RECORD").write_text("\n".join(rows) + "\n")
    return target


@pytest.fixture
def index(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip's configured index: the env's own wheels, and nothing from the network."""
    folder = tmp_path / "index"
    shutil.copytree(env.wheelhouse, folder)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


def test_rewritten_record_is_caught_by_fetched_wheels(env, clean_environ, state, index) -> None:
    target = _rewrite_with_record(env)
    blind = verify(python=env.python, environment=clean_environ)
    assert not any(f.location.path == str(target) for f in blind.findings)  # RECORD agrees
    report = verify(python=env.python, environment=clean_environ, wheels=True)
    modified = {f.location.path: f for f in report.findings if f.rule.value == "env.file_modified"}
    assert modified[str(target)].evidence["source"] == "wheel"
    assert report.checked.wheels == 3
    assert exit_code(report) == 1
    kept = sorted(p.name for p in (state / "wheels").glob("*.whl"))
    assert [n.split("-")[0] for n in kept] == ["proj", "shim", "tinypkg"]


def test_fetched_wheels_are_kept_and_reused(env, clean_environ, state, index) -> None:
    verify(python=env.python, environment=clean_environ, wheels=True)
    for wheel in index.iterdir():
        wheel.unlink()  # the index is gone: the state folder's copies must do
    target = _rewrite_with_record(env)
    report = verify(python=env.python, environment=clean_environ, wheels=True)
    assert str(target) in {f.location.path for f in report.findings}
    assert not any("no wheel" in n for n in report.notes)


def test_a_name_the_index_lacks_is_said_not_passed(env, clean_environ, state, index) -> None:
    for wheel in index.glob("shim-*.whl"):
        wheel.unlink()
    report = verify(python=env.python, environment=clean_environ, wheels=True)
    said = [n for n in report.notes if "no wheel on the package index" in n]
    assert said and "shim==1.0" in said[0] and "tinypkg" not in said[0]
    assert report.checked.wheels == 2


def test_cli_wheels_flag(env, clean_environ, state, index, capsys, monkeypatch) -> None:
    for name in os.environ.keys() - clean_environ.keys() - {"PIP_NO_INDEX", "PIP_FIND_LINKS"}:
        monkeypatch.delenv(name)  # start-up variables this machine may set: not the subject
    target = _rewrite_with_record(env)
    code = main(["env", "verify", "--python", env.python, "--wheels", "--format", "json"])
    doc = json.loads(capsys.readouterr().out)
    paths = {f["location"]["path"] for f in doc["findings"] if f["rule"] == "env.file_modified"}
    assert code == 1 and str(target) in paths, doc["summary"]
