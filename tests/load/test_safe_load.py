"""trainguard.load: scan first, then the narrowest unpickler; blocked loads say why."""

from __future__ import annotations

import argparse
import io
import os
import pathlib
import pickle
from pathlib import Path

import pytest

import trainguard
from trainguard import LoadBlocked, SuspiciousCallBlocked
from trainguard.findings import FileResult, GlobalRecord, Rule, Verdict
from trainguard.load import Allowed, GlobalRefused

torch = pytest.importorskip("torch")


class Payload:
    """Pickles as a call of os.system; only ever dumped here."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class SneakySetstate:
    """A user class whose __setstate__ shells out: the scanner sees only an unknown class."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __setstate__(self, state):
        os.system(f"touch {state['marker']}")


def test_loads_what_weights_only_refuses(tmp_path: Path):
    ckpt = {
        "w": torch.randn(3, 3),
        "args": argparse.Namespace(lr=0.1, out=pathlib.PosixPath("/runs/x")),
        "step": 7,
    }
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = trainguard.load(path)
    assert torch.equal(loaded["w"], ckpt["w"])
    assert loaded["args"] == ckpt["args"]


def test_whole_module_and_protocol_4(tmp_path: Path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU(), torch.nn.LayerNorm(4))
    torch.save(model, tmp_path / "m.pt")
    loaded = trainguard.load(tmp_path / "m.pt")
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), model(x))
    torch.save({"w": torch.ones(3)}, tmp_path / "p4.pt", pickle_protocol=4)
    assert torch.equal(trainguard.load(tmp_path / "p4.pt")["w"], torch.ones(3))


def test_blocked_load_names_file_member_global_rule(tmp_path: Path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": Payload(marker)}, path)
    seen = []
    with pytest.raises(LoadBlocked) as info:
        trainguard.load(path, on_finding=seen.append)
    err = info.value
    assert err.path == str(path)
    assert err.member and err.member.endswith("data.pkl")
    assert err.global_name == "os.system"
    assert err.rule == "scan.code_execution"
    assert seen and seen[0].rule is Rule.LOAD_BLOCKED
    assert err.finding is seen[0]
    assert not marker.exists()


def test_file_objects_and_bytes(tmp_path: Path):
    buf = io.BytesIO()
    torch.save({"w": torch.arange(4)}, buf)
    buf.seek(0)
    assert torch.equal(trainguard.load(buf)["w"], torch.arange(4))
    evil = io.BytesIO()
    torch.save({"x": Payload(tmp_path / "PWNED")}, evil)
    evil.seek(0)
    with pytest.raises(LoadBlocked):
        trainguard.load(evil)
    assert not (tmp_path / "PWNED").exists()


def test_unknown_class_needs_trust_and_then_runs_under_the_audit_hook(tmp_path: Path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "custom.pt"
    torch.save({"obj": SneakySetstate(marker)}, path)
    with pytest.raises(LoadBlocked) as info:
        trainguard.load(path)
    assert info.value.rule == "scan.unknown_global"
    seen = []
    with pytest.raises(SuspiciousCallBlocked) as blocked:
        trainguard.load(path, trusted=True, on_finding=seen.append)
    assert blocked.value.event == "os.system"
    assert seen[0].rule is Rule.SUSPICIOUS_CALL
    assert "stack" in seen[0].evidence
    assert not marker.exists()


def _result(*globs: tuple[str, str, str]) -> FileResult:
    records = tuple(
        GlobalRecord(f"{m}.{q}", m, q, None, "new", status, "test", 0) for m, q, status in globs
    )
    return FileResult("x.pkl", "pickle", Verdict.SAFE, (), True, globals=records)


def test_restricted_unpickler_returns_only_allowed_globals():
    allowed = Allowed(_result(("collections", "OrderedDict", "safe")))
    mod = allowed.pickle_module()
    from collections import OrderedDict

    assert mod.loads(pickle.dumps(OrderedDict(a=1), protocol=0)) == OrderedDict(a=1)
    with pytest.raises(GlobalRefused, match=r"argparse\.Namespace is not allowed") as info:
        mod.loads(pickle.dumps(argparse.Namespace(a=1)))
    assert isinstance(info.value, pickle.UnpicklingError)
    assert info.value.global_name == "argparse.Namespace"
    assert info.value.rule == "scan.differential"  # the scan never saw it


def test_unknown_and_dangerous_globals_are_never_in_the_table():
    result = _result(("argparse", "Namespace", "unknown"), ("os", "system", "dangerous"))
    assert Allowed(result).table == {}
    trusted = Allowed(result, trusted=True).table
    assert ("argparse", "Namespace") in trusted and ("os", "system") not in trusted
