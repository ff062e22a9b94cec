"""Every pickle entry point under ``protect()``: restricted even when the scan misses.

A scanner miss is simulated by replacing the scan every loader calls
(``trainguard.load._restricted.scan_source``) with one that drops what it found: the
verdict is ``safe`` and only the globals it allowed are listed. The marker payload must
then be refused by the restricted unpickler, by name, and never run. Honest files go
through the same entry points with the real scan and load as they should.
"""

from __future__ import annotations

import _pickle
import dataclasses
import io
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")
joblib = pytest.importorskip("joblib")
dill = pytest.importorskip("dill")

import trainguard  # noqa: E402
from trainguard.findings import FileResult, Verdict  # noqa: E402
from trainguard.load import _restricted  # noqa: E402

from pk import payload  # noqa: E402


@pytest.fixture
def scanner_misses(monkeypatch: pytest.MonkeyPatch) -> None:
    real = _restricted.scan_source

    def blind(source: Any, policy: Any, limits: Any) -> FileResult:
        result = real(source, policy, limits)
        kept = tuple(g for g in result.globals if g.status == "safe")
        return dataclasses.replace(result, verdict=Verdict.SAFE, findings=(), globals=kept)

    monkeypatch.setattr(_restricted, "scan_source", blind)


def _read(path: Path) -> io.BytesIO:
    return io.BytesIO(path.read_bytes())


def _subclass_load(path: Path) -> Any:
    class Mine(pickle.Unpickler):  # defined by a user after protect()
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(module, name)

    return Mine(_read(path)).load()


_PICKLE_ENTRIES: dict[str, Callable[[Path], Any]] = {
    "pickle.load": lambda p: pickle.load(_read(p)),
    "pickle.loads": lambda p: pickle.loads(p.read_bytes()),
    "pickle.Unpickler": lambda p: pickle.Unpickler(_read(p)).load(),
    "pickle.Unpickler subclass": _subclass_load,
    "pickle._load": lambda p: pickle._load(_read(p)),  # type: ignore[attr-defined]
    "pickle._loads": lambda p: pickle._loads(p.read_bytes()),  # type: ignore[attr-defined]
    "pickle._Unpickler": lambda p: pickle._Unpickler(_read(p)).load(),  # type: ignore[attr-defined]
    "_pickle.load": lambda p: _pickle.load(_read(p)),
    "_pickle.loads": lambda p: _pickle.loads(p.read_bytes()),
    "_pickle.Unpickler": lambda p: _pickle.Unpickler(_read(p)).load(),
    "dill.load": lambda p: dill.load(_read(p)),
    "dill.loads": lambda p: dill.loads(p.read_bytes()),
}


def _refused(exc: BaseException, marker: Path) -> None:
    assert "system is not allowed" in str(exc), exc
    assert not marker.exists()


@pytest.mark.parametrize("entry", sorted(_PICKLE_ENTRIES))
def test_pickle_entry_points_refuse_what_the_scan_missed(
    entry: str, tmp_path: Path, scanner_misses: None
) -> None:
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"a": 1, "hook": payload(marker)}, protocol=4))
    with trainguard.protected(), pytest.raises(pickle.UnpicklingError) as info:
        _PICKLE_ENTRIES[entry](path)
    assert isinstance(info.value, trainguard.LoadBlocked)
    assert info.value.global_name in ("os.system", "posix.system")
    _refused(info.value, marker)


@pytest.mark.parametrize("entry", sorted(_PICKLE_ENTRIES))
def test_pickle_entry_points_load_honest_files(entry: str, tmp_path: Path) -> None:
    data = {"a": [1, 2.5, "x"], "od": OrderedDict(b=1), "t": (None, True)}
    path = tmp_path / "clean.pkl"
    path.write_bytes(pickle.dumps(data, protocol=2))
    with trainguard.protected():
        assert _PICKLE_ENTRIES[entry](path) == data


@pytest.mark.parametrize("load", ["torch.load", "torch.serialization.load"])
def test_torch_load_refuses_what_the_scan_missed(
    load: str, tmp_path: Path, scanner_misses: None
) -> None:
    marker = tmp_path / "PWNED"
    torch.save({"w": torch.ones(2), "hook": payload(marker)}, tmp_path / "evil.pt")
    with trainguard.protected(), pytest.raises(pickle.UnpicklingError) as info:
        fn = torch.load if load == "torch.load" else torch.serialization.load  # the wrapper
        fn(tmp_path / "evil.pt", weights_only=False)
    _refused(info.value, marker)


def test_torch_load_honest_checkpoint_both_ways(tmp_path: Path) -> None:
    import argparse

    ckpt = {"w": torch.randn(3, 3), "args": argparse.Namespace(lr=0.1), "step": 7}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    torch.save({"w": ckpt["w"]}, tmp_path / "weights.pt")
    with trainguard.protected():
        full = torch.load(tmp_path / "ckpt.pt", weights_only=False)
        weights = torch.load(tmp_path / "weights.pt")  # torch's own weights-only unpickler
    assert torch.equal(full["w"], ckpt["w"]) and full["args"] == ckpt["args"]
    assert torch.equal(weights["w"], ckpt["w"])


def test_numpy_load_refuses_what_the_scan_missed(tmp_path: Path, scanner_misses: None) -> None:
    marker = tmp_path / "PWNED"
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = 1.5, payload(marker)
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    with trainguard.protected(), pytest.raises(pickle.UnpicklingError) as info:
        np.load(tmp_path / "evil.npy", allow_pickle=True)
    _refused(info.value, marker)


def test_joblib_load_refuses_what_the_scan_missed(tmp_path: Path, scanner_misses: None) -> None:
    marker = tmp_path / "PWNED"
    joblib.dump({"coef": np.arange(3.0), "hook": payload(marker)}, tmp_path / "evil.joblib")
    with trainguard.protected(), pytest.raises(pickle.UnpicklingError) as info:
        joblib.load(tmp_path / "evil.joblib")
    _refused(info.value, marker)


def test_joblib_sklearn_model_and_numpy_object_array_load(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).random((20, 3))
    model = LogisticRegression().fit(x, np.arange(20) % 2)
    joblib.dump(model, tmp_path / "m.joblib")
    arr = np.array([1.5, "text", None], dtype=object)
    np.save(tmp_path / "o.npy", arr, allow_pickle=True)
    with trainguard.protected():
        loaded = joblib.load(tmp_path / "m.joblib")
        objects = np.load(tmp_path / "o.npy", allow_pickle=True)
    assert (loaded.predict(x) == model.predict(x)).all()
    assert objects.tolist() == arr.tolist()


def _dcp_evil(tmp_path: Path, marker: Path) -> tuple[Any, Path]:
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path / "ckpt"))
    meta = {"state_dict_metadata": {}, "planner_data": payload(marker)}
    (tmp_path / "ckpt" / ".metadata").write_bytes(pickle.dumps(meta, protocol=4))
    return dcp, tmp_path / "ckpt"


@pytest.mark.parametrize("how", ["reader", "path", "file-uri"])
def test_dcp_metadata_refuses_what_the_scan_missed(
    how: str, tmp_path: Path, scanner_misses: None
) -> None:
    from torch.distributed.checkpoint.api import CheckpointException

    marker = tmp_path / "PWNED"
    dcp, ckpt = _dcp_evil(tmp_path, marker)
    target = {"model": {"w": torch.zeros(2, 3)}}
    kwargs: dict[str, Any] = {
        "reader": {"storage_reader": dcp.FileSystemReader(str(ckpt))},
        "path": {"checkpoint_id": str(ckpt)},
        "file-uri": {"checkpoint_id": ckpt.as_uri()},
    }[how]
    with warnings.catch_warnings(), trainguard.protected():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointException, match="system is not allowed"):
            dcp.load(target, **kwargs)
    assert not marker.exists()


@pytest.mark.parametrize("how", ["path", "file-uri"])
def test_dcp_honest_load_by_checkpoint_id(how: str, tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": torch.tensor(3)}
    target = {"model": {"w": torch.zeros(2, 3)}, "step": torch.tensor(0)}
    ckpt = tmp_path / "ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(ckpt))
        with trainguard.protected():
            dcp.load(target, checkpoint_id=str(ckpt) if how == "path" else ckpt.as_uri())
    assert torch.equal(target["model"]["w"], state["model"]["w"]) and int(target["step"]) == 3


_FRESH = textwrap.dedent(
    """
    import sys
    import trainguard

    trainguard.protect()
    assert "numpy" not in sys.modules and "sklearn" not in sys.modules
    import joblib
    import numpy as np

    model = joblib.load(sys.argv[1])
    plain = np.load(sys.argv[2])
    objects = np.load(sys.argv[3], allow_pickle=True)
    print(model.predict(np.ones((2, 3))).tolist(), plain.sum(), objects.tolist())
    """
)


def test_fresh_process_loads_sklearn_and_numpy_under_protect(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x = np.random.default_rng(0).random((30, 3))
    model = RandomForestClassifier(n_estimators=3, random_state=0).fit(x, np.arange(30) % 2)
    joblib.dump(model, tmp_path / "m.joblib")
    np.save(tmp_path / "plain.npy", np.arange(4.0))
    np.save(tmp_path / "obj.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
    script = tmp_path / "fresh.py"
    script.write_text(_FRESH)
    args = [str(tmp_path / n) for n in ("m.joblib", "plain.npy", "obj.npy")]
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = model.predict(np.ones((2, 3))).tolist()
    assert proc.stdout.strip() == f"{expected} 6.0 [1, 'a']"
