"""``protect()`` against the attack it exists for: a poisoned Trainer checkpoint on resume.

A real (tiny) transformers ``Trainer`` run writes ``checkpoint-2``; a copy of it gets a
``rng_state.pth`` whose pickle would ``touch`` a marker file. Resuming from it under
``protected()``, or in a fresh process that called ``protect()`` before importing torch,
must raise ``LoadBlocked`` naming that file, and the marker must never appear. Then each
loader ``protect()`` wraps is checked on its own, poisoned and clean, and ``unprotect()``
must put back the very objects it replaced.

Poisoned files are built by dumping objects whose ``__reduce__`` names the payload; they are
only ever read inside ``protected()`` (or the protected subprocess).
"""

from __future__ import annotations

import _pickle
import io
import os
import pickle
import shutil
import subprocess
import sys
import textwrap
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import trainguard  # noqa: E402
from trainguard import Finding, LoadBlocked, Rule  # noqa: E402
from trainguard.load import is_protected  # noqa: E402

from pk import payload  # noqa: E402


def _blocked(exc: pytest.ExceptionInfo[LoadBlocked], marker: Path) -> None:
    """Stopped by the scan, before any loader saw the bytes; nothing ran."""
    assert type(exc.value) is LoadBlocked, exc.value
    assert exc.value.global_name in ("os.system", "posix.system")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# The headline: a poisoned Hugging Face Trainer checkpoint.

# Shared with the subprocess below, which runs it as source; keep it self-contained.
_TRAINER_CODE = textwrap.dedent(
    """
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            x = torch.randint(0, 100, (16,), generator=torch.Generator().manual_seed(i))
            return {"input_ids": x, "labels": x}


    def make_trainer(out, max_steps):
        torch.manual_seed(0)
        config = transformers.GPT2Config(
            n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64,
            bos_token_id=0, eos_token_id=0,
        )
        args = transformers.TrainingArguments(
            output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4,
            save_strategy="steps", save_steps=2, report_to=[], use_cpu=True,
            logging_strategy="no", disable_tqdm=True, seed=0,
            dataloader_num_workers=0, dataloader_pin_memory=False,
        )
        model = transformers.GPT2LMHeadModel(config)
        return transformers.Trainer(model=model, args=args, train_dataset=Tokens())
    """
)
_trainer_ns: dict[str, Any] = {}
exec(compile(_TRAINER_CODE, "<trainer>", "exec"), _trainer_ns)
make_trainer = _trainer_ns["make_trainer"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """checkpoint-2 of a 2-step run (16 samples, batch 4: resuming lands mid-epoch)."""
    out = tmp_path_factory.mktemp("trainer")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_trainer(out, 2).train()
    ckpt = out / "checkpoint-2"
    for name in ("rng_state.pth", "optimizer.pt", "scheduler.pt", "training_args.bin"):
        assert (ckpt / name).is_file(), name
    assert any(ckpt.glob("model*.safetensors")) or (ckpt / "pytorch_model.bin").is_file()
    return ckpt


def _poisoned_copy(checkpoint: Path, dst: Path, marker: Path) -> Path:
    """The checkpoint with ``rng_state.pth`` = its original dict plus a payload object."""
    shutil.copytree(checkpoint, dst)
    state = trainguard.load(dst / "rng_state.pth")  # clean, and read the safe way
    assert set(state) >= {"python", "numpy", "cpu"}
    state["hook"] = payload(marker)
    torch.save(state, dst / "rng_state.pth")
    return dst


def _resume(ckpt: Path, out: Path) -> Any:
    trainer = make_trainer(out, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train(resume_from_checkpoint=str(ckpt))
    return trainer


def test_poisoned_trainer_resume_is_blocked(checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED-rng"
    ckpt = _poisoned_copy(checkpoint, tmp_path / "checkpoint-2", marker)
    with pytest.raises(LoadBlocked) as exc, trainguard.protected():
        _resume(ckpt, tmp_path / "out")
    assert exc.value.path.endswith("rng_state.pth")
    _blocked(exc, marker)


def test_clean_trainer_resume_completes_under_protection(checkpoint: Path, tmp_path: Path) -> None:
    with trainguard.protected():
        trainer = _resume(checkpoint, tmp_path / "out")
    assert trainer.state.global_step == 4
    assert (tmp_path / "out" / "checkpoint-4" / "rng_state.pth").is_file()


_SUBPROCESS = """
import sys

import trainguard

trainguard.protect()  # before torch or transformers exist in this process
assert "torch" not in sys.modules and "transformers" not in sys.modules
{trainer_code}
assert hasattr(torch.load, "__trainguard_original__"), "torch.load was not patched on import"
try:
    make_trainer(sys.argv[2], 4).train(resume_from_checkpoint=sys.argv[1])
except trainguard.LoadBlocked as exc:
    print("BLOCKED", type(exc).__name__, exc.path)
else:
    print("NOT BLOCKED")
"""


def test_protect_before_importing_torch(checkpoint: Path, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED-subprocess"
    ckpt = _poisoned_copy(checkpoint, tmp_path / "checkpoint-2", marker)
    script = tmp_path / "resume.py"
    script.write_text(_SUBPROCESS.format(trainer_code=_TRAINER_CODE))
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", str(script), str(ckpt), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"BLOCKED LoadBlocked {ckpt / 'rng_state.pth'}", proc.stdout
    assert not marker.exists()


# ---------------------------------------------------------------------------------------
# Each interception path on its own.


def _evil_and_clean(marker: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    clean = {"step": 3, "w": [1.0, 2.0]}
    return {**clean, "hook": payload(marker)}, clean


def test_torch_load_full_unpickler(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED-torch"
    sd = {"w": torch.arange(4.0)}
    torch.save({**sd, "hook": payload(marker)}, tmp_path / "evil.pt")
    torch.save(sd, tmp_path / "clean.pt")
    with trainguard.protected():
        with pytest.raises(LoadBlocked) as exc:
            torch.load(tmp_path / "evil.pt", weights_only=False)
        with pytest.raises(LoadBlocked):
            torch.serialization.load(str(tmp_path / "evil.pt"), weights_only=False)
        clean = torch.load(tmp_path / "clean.pt", weights_only=False)
    _blocked(exc, marker)
    assert torch.equal(clean["w"], sd["w"])


def test_pickle_load_file_object(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED-pickle-file"
    evil, clean = _evil_and_clean(marker)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(evil))
    # two pickles back to back: the stream must be left just after the first
    (tmp_path / "clean.pkl").write_bytes(pickle.dumps(clean) + pickle.dumps("second"))
    with trainguard.protected():
        with open(tmp_path / "evil.pkl", "rb") as f, pytest.raises(LoadBlocked) as exc:
            pickle.load(f)
        with open(tmp_path / "clean.pkl", "rb") as f:
            first, second = pickle.load(f), pickle.load(f)
    _blocked(exc, marker)
    assert (first, second) == (clean, "second")


@pytest.fixture
def pipe_reader() -> Iterator[Any]:
    """A real non-seekable stream: the read end of a pipe fed by a thread."""
    opened: list[Any] = []

    def make(data: bytes) -> Any:
        r, w = os.pipe()

        def feed() -> None:
            with os.fdopen(w, "wb") as out:
                out.write(data)

        threading.Thread(target=feed, daemon=True).start()
        f = os.fdopen(r, "rb")
        assert not f.seekable()
        opened.append(f)
        return f

    yield make
    for f in opened:
        f.close()


def test_pickle_load_non_seekable_stream(tmp_path: Path, pipe_reader: Any) -> None:
    marker = tmp_path / "PWNED-pickle-pipe"
    evil, clean = _evil_and_clean(marker)
    with trainguard.protected():
        with pytest.raises(LoadBlocked) as exc:
            pickle.load(pipe_reader(pickle.dumps(evil)))
        loaded = pickle.load(pipe_reader(pickle.dumps(clean)))
    _blocked(exc, marker)
    assert loaded == clean


def test_non_seekable_stream_keeps_the_next_pickle(pipe_reader: Any) -> None:
    f = pipe_reader(pickle.dumps({"a": 1}) + pickle.dumps([2]))
    with trainguard.protected():
        assert pickle.load(f) == {"a": 1}
        assert pickle.load(f) == [2]


def test_non_seekable_stream_ends_where_cpython_ends_it(pipe_reader: Any) -> None:
    """The pickle read ahead from a pipe is delimited by CPython's unpickler itself:
    text integers that pickletools refuses (``I0x10``, ``I 1``) do not cut it short."""
    first = b"(I0x10\nI 1\nI+2\nl."
    assert pickle.loads(first) == [16, 1, 2]
    f = pipe_reader(first + pickle.dumps("second"))
    with trainguard.protected():
        assert pickle.load(f) == [16, 1, 2]
        assert pickle.load(f) == "second"


def test_pickle_loads(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED-pickle-loads"
    evil, clean = _evil_and_clean(marker)
    with trainguard.protected():
        with pytest.raises(LoadBlocked) as exc:
            pickle.loads(pickle.dumps(evil))
        loaded = pickle.loads(pickle.dumps(clean, protocol=2))
    _blocked(exc, marker)
    assert loaded == clean


def test_numpy_load_object_array(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    marker = tmp_path / "PWNED-npy"
    evil = np.empty(2, dtype=object)
    evil[0], evil[1] = 1.5, payload(marker)
    np.save(tmp_path / "evil.npy", evil, allow_pickle=True)
    with trainguard.protected(), pytest.raises(LoadBlocked) as exc:
        np.load(tmp_path / "evil.npy", allow_pickle=True)
    _blocked(exc, marker)


def test_numpy_load_clean_object_array(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    clean = np.array([1.5, "text", None], dtype=object)
    np.save(tmp_path / "clean.npy", clean, allow_pickle=True)
    with trainguard.protected():
        loaded = np.load(tmp_path / "clean.npy", allow_pickle=True)
    assert loaded.tolist() == clean.tolist()


def test_joblib_load(tmp_path: Path) -> None:
    joblib = pytest.importorskip("joblib")
    np = pytest.importorskip("numpy")
    marker = tmp_path / "PWNED-joblib"
    coef = np.arange(6.0).reshape(2, 3)
    joblib.dump({"coef": coef, "hook": payload(marker)}, tmp_path / "evil.joblib")
    joblib.dump({"coef": coef, "n": 3}, tmp_path / "clean.joblib")
    with trainguard.protected():
        with pytest.raises(LoadBlocked) as exc:
            joblib.load(tmp_path / "evil.joblib")
        loaded = joblib.load(tmp_path / "clean.joblib")
    _blocked(exc, marker)
    assert loaded["n"] == 3 and (loaded["coef"] == coef).all()


def test_distributed_checkpoint_metadata(tmp_path: Path) -> None:
    dcp = pytest.importorskip("torch.distributed.checkpoint")
    from torch.distributed.checkpoint.api import CheckpointException

    marker = tmp_path / "PWNED-dcp"
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "step": torch.tensor(3)}
    target = {"model": {"w": torch.zeros(2, 3)}, "step": torch.tensor(0)}
    findings: list[Finding] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, storage_writer=dcp.FileSystemWriter(str(tmp_path / "clean")))
        shutil.copytree(tmp_path / "clean", tmp_path / "evil")
        meta = {"state_dict_metadata": {}, "planner_data": payload(marker)}
        (tmp_path / "evil" / ".metadata").write_bytes(pickle.dumps(meta, protocol=2))
        with trainguard.protected(on_finding=findings.append):
            # dcp.load catches the LoadBlocked raised by read_metadata and reports it
            # inside its own CheckpointException (a BaseException), as text
            with pytest.raises(CheckpointException, match="refused to load"):
                dcp.load(target, storage_reader=dcp.FileSystemReader(str(tmp_path / "evil")))
            dcp.load(target, storage_reader=dcp.FileSystemReader(str(tmp_path / "clean")))
    assert not marker.exists()
    blocked = [f for f in findings if f.rule is Rule.LOAD_BLOCKED]
    assert len(blocked) == 1
    assert blocked[0].location.path == str(tmp_path / "evil" / ".metadata")
    assert torch.equal(target["model"]["w"], state["model"]["w"])
    assert int(target["step"]) == 3


def test_unprotect_restores_the_exact_objects() -> None:
    dill = pytest.importorskip("dill")
    np = pytest.importorskip("numpy")
    joblib = pytest.importorskip("joblib")
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    targets = [
        (pickle, "load"),
        (pickle, "loads"),
        (torch, "load"),
        (torch.serialization, "load"),
        (np, "load"),
        (joblib, "load"),
    ]
    from joblib.numpy_pickle import NumpyUnpickler

    targets += [
        (pickle, "Unpickler"),
        (pickle, "_Unpickler"),
        (pickle, "_load"),
        (pickle, "_loads"),
        (_pickle, "load"),
        (_pickle, "loads"),
        (_pickle, "Unpickler"),
        (dill, "load"),
        (dill, "loads"),
    ]
    before = [getattr(owner, attr) for owner, attr in targets]
    reader_before = dict(vars(FileSystemReader))
    joblib_before = dict(vars(NumpyUnpickler))
    with trainguard.protected():
        for (owner, attr), orig in zip(targets, before, strict=True):
            assert getattr(owner, attr) is not orig, f"{owner.__name__}.{attr} not wrapped"
        assert vars(NumpyUnpickler)["find_class"] is not pickle._Unpickler.find_class
        with trainguard.protected():  # nested: the inner exit must not unwrap
            pass
        assert torch.load is not before[2]
    for (owner, attr), orig in zip(targets, before, strict=True):
        assert getattr(owner, attr) is orig, f"{owner.__name__}.{attr} not restored"
    assert dict(vars(FileSystemReader)) == reader_before
    assert dict(vars(NumpyUnpickler)) == joblib_before
    assert not is_protected()


def test_stream_position_is_kept_for_seekable_streams() -> None:
    buf = io.BytesIO(b"junk" + pickle.dumps({"a": 1}) + pickle.dumps([2]))
    buf.seek(4)
    with trainguard.protected():
        assert pickle.load(buf) == {"a": 1}
        assert pickle.load(buf) == [2]


_LATE_IMPORT = """
import pickle, trainguard
trainguard.protect()
import multiprocessing.reduction as r  # binds ForkingPickler.loads = pickle.loads (wrapped)
trainguard.unprotect()
assert r.ForkingPickler.loads is pickle.loads, "a wrapper outlived unprotect()"
print(r.ForkingPickler.loads(pickle.dumps([1, 2])))
"""


def test_wrappers_captured_during_protection_are_harmless_after_unprotect() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _LATE_IMPORT], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[1, 2]"
