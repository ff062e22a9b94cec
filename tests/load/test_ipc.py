"""The job's own plumbing under ``protect()`` (``trainguard.load._ipc``).

Each channel trusts the identity of the function that calls the loader and one more fact;
each test attacks one of them: a look-alike caller, a payload on the channel itself, a
regular file where a pipe is expected, a cache folder others can write to, a cache entry
that is a link out of the cache. Honest traffic of each channel loads.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

import trainguard  # noqa: E402
from trainguard.errors import GlobalRefused, LoadBlocked  # noqa: E402
from trainguard.findings import Finding  # noqa: E402
from trainguard.load import _ipc  # noqa: E402

from pk import Reduce, call, glob, payload, proto, s1  # noqa: E402


@pytest.fixture
def findings() -> Any:
    seen: list[Finding] = []
    with trainguard.protected(on_finding=seen.append):
        yield seen


def _pipe_with(*objects: Any) -> int:
    """A pipe holding each object pickled in turn; returns its read end."""
    r, w = os.pipe()
    with os.fdopen(w, "wb") as fh:
        for obj in objects:
            fh.write(obj if isinstance(obj, bytes) else pickle.dumps(obj, protocol=4))
    return r


# -- the caller's identity ------------------------------------------------------------


def _main(fd: int, parent_sentinel: int) -> Any:
    """A look-alike of ``multiprocessing.spawn._main``: same name, same body shape."""
    with os.fdopen(fd, "rb", closefd=True) as from_parent:
        preparation_data = pickle.load(from_parent)
        return preparation_data


def test_a_look_alike_caller_is_an_ordinary_load(tmp_path: Path, findings: list[Finding]) -> None:
    marker = tmp_path / "ran"
    with pytest.raises(LoadBlocked):
        _main(_pipe_with(payload(marker)), 0)
    assert not marker.exists()
    assert findings and "channel" not in findings[0].evidence


def test_recognise_needs_the_code_the_module_holds_now() -> None:
    frame = sys._getframe()
    assert _ipc.recognise(frame, b"") is None
    assert _ipc._code_of("multiprocessing.spawn", "_main") is not None
    assert _ipc._code_of("no.such.module", "_main") is None


# -- spawn bootstrap ------------------------------------------------------------------


def test_spawn_preparation_allows_exactly_its_class(
    tmp_path: Path, findings: list[Finding]
) -> None:
    import multiprocessing.spawn

    marker = tmp_path / "ran"
    with pytest.raises(LoadBlocked, match="spawn preparation"):
        multiprocessing.spawn._main(_pipe_with(payload(marker)), 0)  # type: ignore[attr-defined]
    assert not marker.exists()
    assert findings and findings[0].evidence["channel"] == "spawn preparation"


def test_spawn_bootstrap_refuses_a_regular_file(tmp_path: Path, findings: list[Finding]) -> None:
    import multiprocessing.spawn

    path = tmp_path / "prep.pkl"
    path.write_bytes(pickle.dumps({"name": "x"}))
    fd = os.open(path, os.O_RDONLY)
    with pytest.raises(LoadBlocked, match="not a pipe"):
        multiprocessing.spawn._main(fd, 0)  # type: ignore[attr-defined]


def test_spawn_routes_by_phase(monkeypatch: pytest.MonkeyPatch) -> None:
    """The preparation load is exact; the process object (bound after it) is the parent's."""
    import multiprocessing.spawn

    seen: list[Any] = []

    def _main(fd: int, parent_sentinel: int) -> None:
        with os.fdopen(fd, "rb", closefd=True) as from_parent:
            seen.append(_ipc.recognise(sys._getframe(), from_parent))
            preparation_data = {"name": "x"}
            seen.append(_ipc.recognise(sys._getframe(), from_parent))
            del preparation_data

    monkeypatch.setattr(multiprocessing.spawn, "_main", _main)
    _main(_pipe_with(b""), 0)
    assert [r.channel for r in seen] == ["spawn preparation", "spawn process object"]
    assert seen[0].allow("multiprocessing.process", "AuthenticationString")
    assert not seen[0].allow("os", "system")
    assert seen[1].allow is None


def test_honest_spawn_preparation_loads(findings: list[Finding]) -> None:
    from multiprocessing.process import AuthenticationString

    route = _ipc.Route("spawn preparation", allow=_ipc._exactly(_ipc.SPAWN_PREPARATION))
    data = {"authkey": Reduce(AuthenticationString, b"k" * 32), "sys_path": ["/x"], "name": "w"}
    with os.fdopen(_pipe_with(pickle.dumps(data, protocol=2)), "rb") as fh:
        loaded = route.load(fh, None)
    assert loaded["authkey"] == b"k" * 32 and type(loaded["authkey"]) is AuthenticationString
    assert loaded["sys_path"] == ["/x"]


# -- torchrun rendezvous --------------------------------------------------------------


class _Backend:
    """A rendezvous backend whose store returns the bytes the test chose."""

    name = "test"

    def __init__(self, state: bytes) -> None:
        self.state = state

    def get_state(self) -> tuple[bytes, Any]:
        return self.state, 0

    def set_state(self, state: bytes, token: Any = None) -> tuple[bytes, Any, bool]:
        return state, 0, True


def _holder(state: bytes) -> Any:
    from datetime import timedelta

    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    settings = dr.RendezvousSettings("run", 1, 2, dr.RendezvousTimeout(), timedelta(seconds=1), 1)
    return dr._BackendRendezvousStateHolder(_Backend(state), settings, cache_duration=0)


def test_rendezvous_state_round_trips(findings: list[Finding]) -> None:
    import datetime

    from torch.distributed.elastic.rendezvous import dynamic_rendezvous as dr

    state = dr._RendezvousState()
    node = dr._NodeDesc("host", 7, 0)
    state.participants[node] = 0
    state.wait_list.add(dr._NodeDesc("other", 8, 1))
    state.last_heartbeats[node] = datetime.datetime.now(datetime.UTC)
    state.deadline = datetime.datetime.now()
    for protocol in (2, 4, 5):
        holder = _holder(pickle.dumps(state, protocol=protocol))
        holder.sync()
        assert vars(holder.state) == vars(state)
    assert not findings


def test_rendezvous_payload_is_refused(tmp_path: Path, findings: list[Finding]) -> None:
    """The store is a TCP server: its bytes get only the state's classes."""
    from torch.distributed.elastic.rendezvous.api import RendezvousStateError

    marker = tmp_path / "ran"
    holder = _holder(pickle.dumps(payload(marker)))
    with pytest.raises(RendezvousStateError):
        holder.sync()
    assert not marker.exists()
    assert findings and findings[0].evidence["channel"] == "rendezvous state"


# -- torch.compile's worker pool ------------------------------------------------------


def test_compile_worker_job_runs_and_payload_is_refused(
    tmp_path: Path, findings: list[Finding]
) -> None:
    from torch._inductor.async_compile import AsyncCompile
    from torch._inductor.compile_worker.subproc_pool import SubprocMain, SubprocPickler

    pickler = SubprocPickler()
    out = SubprocMain.do_job(pickler, pickle.dumps(AsyncCompile._get_ready))
    assert pickle.loads(out) == "ready"
    marker = tmp_path / "ran"
    with pytest.raises(GlobalRefused, match="compile worker"):
        SubprocMain.do_job(pickler, pickle.dumps(payload(marker)))
    assert not marker.exists()
    assert any(f.evidence.get("channel") == "compile worker" for f in findings)


def test_compile_worker_loads_outside_its_callers_are_ordinary(tmp_path: Path) -> None:
    from torch._inductor.compile_worker.subproc_pool import SubprocPickler

    marker = tmp_path / "ran"
    with trainguard.protected(), pytest.raises(LoadBlocked) as info:
        SubprocPickler().loads(pickle.dumps(payload(marker)))
    assert "compile worker" not in str(info.value)
    assert not marker.exists()


def test_worker_globals() -> None:
    allow = _ipc._worker_global
    assert allow("torch._inductor.async_compile", "AsyncCompile._get_ready")
    assert allow("functools", "partial") and allow("builtins", "list")
    refused = [("os", "system"), ("builtins", "eval"), ("__builtin__", "getattr")]
    refused += [("subprocess", "run"), ("torchx", "x"), ("builtins", "nonexistent")]
    for module, name in refused:
        assert not allow(module, name), (module, name)


# -- torch.compile's cache ------------------------------------------------------------


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    root = tmp_path / "inductor"
    root.mkdir(mode=0o755)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(root))
    from torch._inductor.codecache import FxGraphCache

    key = "fabcdefghij"
    subdir = Path(FxGraphCache._get_tmp_dir_for_key(key))
    assert root in subdir.parents
    subdir.mkdir(parents=True, mode=0o755)
    for folder in [subdir, *subdir.parents]:
        if folder == root:
            break
        folder.chmod(0o755)
    return FxGraphCache, key, subdir, root


def _entries(cache: Any) -> list[Any]:
    cls, key, _subdir, _root = cache
    return [entry for entry, _content, _local in cls.iterate_over_candidates(True, None, key)]


class Honest:
    """A class no allowlist vouches for (a cache entry names torch's, just as unknown)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is Honest


def _plant(subdir: Path, obj: Any, name: str = "entry") -> Path:
    path = subdir / name
    path.write_bytes(pickle.dumps(obj))
    path.chmod(0o644)
    return path


def test_private_cache_entry_loads(cache: Any, findings: list[Finding]) -> None:
    _cls, _key, subdir, _root = cache
    _plant(subdir, Honest())
    assert _entries(cache) == [Honest()]
    assert not findings


def _others_can_write(subdir: Path, outside: Path) -> str:
    subdir.parent.chmod(0o775)  # a group member could have put the entry there
    return "writable by others"


def _linked_out(subdir: Path, outside: Path) -> str:
    (subdir / "entry").unlink()
    (subdir / "entry").symlink_to(outside)
    return "outside the cache root"


def _another_users(subdir: Path, outside: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(subdir / "entry", 4321, 4321)
    return "belongs to uid 4321"


@pytest.mark.parametrize("plant", [_others_can_write, _linked_out, _another_users])
def test_a_cache_entry_someone_else_could_write_is_refused(
    cache: Any, tmp_path: Path, findings: list[Finding], plant: Any
) -> None:
    _cls, _key, subdir, _root = cache
    marker = tmp_path / "ran"
    _plant(subdir, payload(marker))
    outside = _plant(tmp_path, payload(marker), "planted.pkl")
    why = plant(subdir, outside)
    assert _entries(cache) == []  # torch logs the error and compiles afresh
    assert not marker.exists()
    assert findings and why in findings[0].message


def test_worker_getattr_reaches_only_torch_callables() -> None:
    """pickle writes a method as ``getattr(cls, name)``: the channel's stand-in answers
    for torch's and triton's classes and their functions only."""
    from torch._inductor.compile_worker.subproc_pool import SubprocMain, SubprocPickler

    getattr_ = _ipc._WORKER_STAND_INS[("builtins", "getattr")]
    assert getattr_(SubprocMain, "do_job") is SubprocMain.do_job
    for obj, name in [(os, "system"), (torch.nn.Module, "__class__"), (torch, "hub"),
                      (torch.nn.Module(), "apply"), (Path, "unlink")]:  # fmt: skip
        with pytest.raises(pickle.UnpicklingError):
            getattr_(obj, name)
    # getattr(torch.nn.Module, "__class__"): a torch class used to reach past torch
    job = proto(4) + call(glob("builtins", "getattr"), glob("torch.nn", "Module"), s1("__class__"))
    with trainguard.protected(), pytest.raises(pickle.UnpicklingError, match="__class__"):
        SubprocMain.do_job(SubprocPickler(), job + b".")


def test_graph_pickler_outside_the_wire_is_an_ordinary_load(tmp_path: Path) -> None:
    from torch.fx._graph_pickler import GraphPickler

    marker = tmp_path / "ran"
    with trainguard.protected(), pytest.raises(LoadBlocked) as info:
        GraphPickler.loads(pickle.dumps(payload(marker)), None)  # type: ignore[arg-type]
    assert "fx graph wire" not in str(info.value)
    assert not marker.exists()


def test_graph_pickler_on_the_wire_is_the_jobs_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Called from the wire's ``deserialize`` (here: a function standing in for it, put
    where torch's is), ``GraphPickler.loads`` unpickles what the compile worker sent."""
    from torch._inductor import compile_fx_ext
    from torch.fx._graph_pickler import GraphPickler

    class _WireProtocolPickledInput:
        def deserialize(self) -> Any:
            return GraphPickler.loads(pickle.dumps(Honest()), None)  # type: ignore[arg-type]

    monkeypatch.setattr(compile_fx_ext, "_WireProtocolPickledInput", _WireProtocolPickledInput)
    with trainguard.protected():
        assert _WireProtocolPickledInput().deserialize() == Honest()
