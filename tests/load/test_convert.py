"""``trainguard.convert``: pickle checkpoints become safetensors with identical tensors.

Every source file here is written by the test itself; the poisoned ones are only ever read
by ``convert`` (through ``trainguard.load``), and each such test checks its marker is absent.
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
safetensors_torch = pytest.importorskip("safetensors.torch")
transformers = pytest.importorskip("transformers")

from safetensors import safe_open  # noqa: E402

from trainguard.errors import ConfigError, LoadBlocked  # noqa: E402
from trainguard.load import ConvertResult, convert  # noqa: E402

from pk import payload  # noqa: E402


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for key, t in want.items():
        assert got[key].dtype == t.dtype, key
        assert got[key].shape == t.shape, key
        assert torch.equal(got[key], t), key


def _metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return dict(f.metadata())


def test_state_dict_with_several_dtypes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sd = {
        "w": torch.randn(3, 5),
        "half": torch.randn(4, 2).to(torch.bfloat16),
        "f16": torch.randn(2).to(torch.float16),
        "ids": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
    }
    torch.save(sd, tmp_path / "sd.pt")
    result = convert(tmp_path / "sd.pt", tmp_path / "sd.safetensors")
    assert isinstance(result, ConvertResult)
    assert result.files == (tmp_path / "sd.safetensors",)
    assert result.tensors == len(sd)
    assert result.nbytes == sum(t.numel() * t.element_size() for t in sd.values())
    assert result.dropped == ()
    _assert_same(safetensors_torch.load_file(tmp_path / "sd.safetensors"), sd)
    assert _metadata(tmp_path / "sd.safetensors") == {"format": "pt"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_checkpoint_dict_nested_ints_and_namespace(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    args = argparse.Namespace(lr=3e-4, batch_size=32, data_dir=Path("/data/x"), tags=["a", "b"])
    ckpt = {
        "epoch": 7,
        "global_step": 1234,
        "run": "exp-1",
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "args": args,
        "best": 0.8125,
        "too_big": "x" * (100 * 1024),
    }
    torch.save(ckpt, tmp_path / "ckpt.pt")
    result = convert(tmp_path / "ckpt.pt", tmp_path / "ckpt.safetensors")

    got = safetensors_torch.load_file(tmp_path / "ckpt.safetensors")
    want = {f"model.{k}": v for k, v in model.state_dict().items()}
    for pid, state in opt.state_dict()["state"].items():
        want |= {f"optimizer.state.{pid}.{k}": v for k, v in state.items()}
    _assert_same(got, want)

    meta = _metadata(tmp_path / "ckpt.safetensors")
    assert json.loads(meta["epoch"]) == 7
    assert json.loads(meta["global_step"]) == 1234
    assert json.loads(meta["run"]) == "exp-1"
    assert json.loads(meta["best"]) == 0.8125
    assert json.loads(meta["args"]) == {
        "lr": 3e-4,
        "batch_size": 32,
        "data_dir": "/data/x",
        "tags": ["a", "b"],
    }
    groups = json.loads(meta["optimizer.param_groups"])
    assert groups[0]["lr"] == 1e-3 and groups[0]["params"] == [0, 1, 2, 3]
    assert [d.key for d in result.dropped] == ["too_big"]
    assert "too_big" not in meta


def test_whole_module(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 2)
    )
    torch.save(model, tmp_path / "whole.pt")
    result = convert(tmp_path / "whole.pt", tmp_path / "whole.safetensors")
    want = model.state_dict()
    assert result.tensors == len(want)
    _assert_same(safetensors_torch.load_file(tmp_path / "whole.safetensors"), dict(want))


def test_tied_and_shared_weights(tmp_path: Path) -> None:
    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    torch.manual_seed(0)
    model = Tied()
    base = torch.randn(4, 6)
    sd = dict(model.state_dict())
    sd |= {"base": base, "alias": base, "rows": base[1:3], "transposed": base.t()}
    assert sd["emb.weight"].data_ptr() == sd["head.weight"].data_ptr()
    torch.save(sd, tmp_path / "tied.pt")
    result = convert(tmp_path / "tied.pt", tmp_path / "tied.safetensors")
    got = safetensors_torch.load_file(tmp_path / "tied.safetensors")
    _assert_same(got, sd)
    assert result.tensors == len(sd)
    # written as independent copies: the format has no aliasing
    assert got["emb.weight"].data_ptr() != got["head.weight"].data_ptr()


def _tiny_gpt2() -> Any:
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1,
        n_embd=32,
        n_head=2,
        vocab_size=100,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bin_folder(model: Any, dst: Path, shard_bytes: int | None = None) -> None:
    """The pre-safetensors layout ``save_pretrained(safe_serialization=False)`` wrote.

    transformers 5 always writes safetensors, so the legacy files are written the way
    transformers 4 did: ``torch.save`` of the state dict, split into shards with an index.
    """
    dst.mkdir()
    model.config.to_json_file(dst / "config.json")
    model.generation_config.to_json_file(dst / "generation_config.json")
    (dst / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    (dst / "special_tokens_map.json").write_text('{"eos_token": "t0"}')
    sd = model.state_dict()
    if shard_bytes is None:
        torch.save(sd, dst / "pytorch_model.bin")
        return
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key, t in sd.items():
        if shards[-1] and size + t.numel() * t.element_size() > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += t.numel() * t.element_size()
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"pytorch_model-{i:05d}-of-{len(shards):05d}.bin"
        torch.save(shard, dst / name)
        weight_map |= dict.fromkeys(shard, name)
    total = sum(t.numel() * t.element_size() for t in sd.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (dst / "pytorch_model.bin.index.json").write_text(json.dumps(index))


def _logits(model: Any) -> Any:
    ids = torch.arange(12).reshape(2, 6) % 100
    with torch.no_grad():
        return model(ids).logits


def _from_pretrained(path: Path) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.AutoModelForCausalLM.from_pretrained(path).eval()


def test_hf_folder_single_file(tmp_path: Path) -> None:
    model = _tiny_gpt2()
    src, dst = tmp_path / "bin", tmp_path / "st"
    _bin_folder(model, src)
    torch.save({"not": "weights"}, src / "training_args.bin")
    result = convert(src, dst)

    assert result.files == (dst / "model.safetensors",)
    assert sorted(p.name for p in result.copied) == [
        "config.json",
        "generation_config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
    ]
    for p in result.copied:
        assert p.read_bytes() == (src / p.name).read_bytes()
    assert [d.key for d in result.dropped] == ["training_args.bin"]
    assert sorted(p.name for p in dst.iterdir()) == sorted(
        [p.name for p in result.copied] + ["model.safetensors"]
    )
    _assert_same(safetensors_torch.load_file(dst / "model.safetensors"), dict(model.state_dict()))
    assert torch.equal(_logits(_from_pretrained(dst)), _logits(model))


def test_hf_folder_sharded(tmp_path: Path) -> None:
    model = _tiny_gpt2()
    src, dst = tmp_path / "bin", tmp_path / "st"
    _bin_folder(model, src, shard_bytes=20_000)
    bin_index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    n = len(set(bin_index["weight_map"].values()))
    assert n >= 3
    result = convert(src, dst)

    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert set(index) == {"metadata", "weight_map"}
    assert index["metadata"]["total_size"] == result.nbytes == bin_index["metadata"]["total_size"]
    assert index["weight_map"] == {
        k: v.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        for k, v in bin_index["weight_map"].items()
    }
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    assert sorted(p.name for p in result.files) == [*shards, "model.safetensors.index.json"]
    assert not any(p.suffix == ".bin" for p in dst.iterdir())
    got: dict[str, Any] = {}
    for shard in shards:
        got |= safetensors_torch.load_file(dst / shard)
    _assert_same(got, dict(model.state_dict()))
    assert torch.equal(_logits(_from_pretrained(dst)), _logits(model))


def test_poisoned_checkpoint_is_blocked_and_nothing_written(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED-convert"
    sd = {"w": torch.ones(2), "hook": payload(marker)}
    torch.save(sd, tmp_path / "evil.pt")
    dst = tmp_path / "out" / "evil.safetensors"
    with pytest.raises(LoadBlocked) as info:
        convert(tmp_path / "evil.pt", dst)
    assert info.value.path.endswith("evil.pt")
    assert info.value.global_name in ("os.system", "posix.system")
    assert not marker.exists()
    assert not dst.exists()
    assert list(dst.parent.iterdir()) == []


def test_poisoned_shard_leaves_no_folder(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED-shard"
    model = _tiny_gpt2()
    src, dst = tmp_path / "bin", tmp_path / "st"
    _bin_folder(model, src, shard_bytes=20_000)
    last = sorted(src.glob("pytorch_model-*.bin"))[-1]
    torch.save({"w": torch.ones(1), "x": payload(marker)}, last)
    with pytest.raises(LoadBlocked) as info:
        convert(src, dst)
    assert info.value.path == str(last)
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin"]


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2)}, tmp_path / "a.pt")
    (tmp_path / "a.safetensors").write_text("keep me")
    with pytest.raises(ConfigError):
        convert(tmp_path / "a.pt", tmp_path / "a.safetensors")
    assert (tmp_path / "a.safetensors").read_text() == "keep me"
    convert(tmp_path / "a.pt", tmp_path / "a.safetensors", overwrite=True)
    _assert_same(safetensors_torch.load_file(tmp_path / "a.safetensors"), {"w": torch.ones(2)})


@pytest.mark.parametrize("weight_map", [{"w": "../outside.bin"}, {"w": "missing.bin"}, {}], ids=str)
def test_bad_index_is_a_config_error(tmp_path: Path, weight_map: dict[str, str]) -> None:
    src = tmp_path / "bin"
    src.mkdir()
    (src / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(ConfigError):
        convert(src, tmp_path / "st")
    assert not (tmp_path / "st").exists()


def test_folder_without_weights_and_missing_src(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError):
        convert(tmp_path / "empty", tmp_path / "st")
    with pytest.raises(ConfigError):
        convert(tmp_path / "nope.pt", tmp_path / "nope.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
