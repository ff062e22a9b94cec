"""Rewrite a pickle checkpoint as safetensors, so nobody has to unpickle it again.

A pickle is a program; a safetensors file is data, and its format is the security property.
``convert(src, dst)`` reads the pickle once, the safe way (``trainguard.load``: scan first,
then the narrowest unpickler; an unsafe file raises ``LoadBlocked`` and nothing is written),
and writes what it held as safetensors:

* a file holding a state dict, a checkpoint dict of nested dicts, or a whole ``nn.Module``
  (its ``state_dict()``) becomes one ``.safetensors`` file with dotted keys;
* a Hugging Face folder (``pytorch_model.bin``, or shards plus
  ``pytorch_model.bin.index.json``) becomes ``model.safetensors`` (or shards plus
  ``model.safetensors.index.json`` with the same ``weight_map`` shape transformers reads),
  and its other files (config, tokenizer) are copied unchanged.

safetensors stores tensors and a ``str -> str`` metadata table, nothing else. Small values
that are not tensors (ints, strings, ``argparse.Namespace``, paths) go to the metadata as
JSON; anything else, and every other pickle found beside the weights, is *not* carried over
and is listed in ``ConvertResult.dropped``: a conversion never loses data silently. Tensors
that share storage (tied weights, views) are written as separate copies, because the format
has no aliasing. The output appears only when complete: it is built under a temporary name
beside ``dst`` and renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import Any

from trainguard.errors import ConfigError
from trainguard.scan import Limits, Policy

__all__ = ["MAX_METADATA_VALUE", "ConvertResult", "Dropped", "convert"]

log = logging.getLogger("trainguard")

MAX_METADATA_VALUE = 64 * 1024
"""Longest JSON text kept for one non-tensor entry; longer ones are dropped, not truncated."""

_PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"})
_DTYPES = (  # what safetensors can store, by torch name; others are dropped
    "float64 float32 float16 bfloat16 int64 int32 int16 int8 uint8 uint16 uint32 uint64 bool "
    "float8_e4m3fn float8_e5m2 float8_e4m3fnuz float8_e5m2fnuz complex64"
).split()


@dataclass(frozen=True)
class Dropped:
    """One entry of the source that the output does not hold, and why."""

    key: str
    reason: str


@dataclass(frozen=True)
class ConvertResult:
    """What a conversion wrote, copied and left out, with paths at their final place."""

    src: Path
    dst: Path
    files: tuple[Path, ...]
    """Files written: the ``.safetensors`` file(s) and, when sharded, the index."""
    tensors: int
    nbytes: int
    """Bytes of tensor data written (the index's ``total_size``)."""
    copied: tuple[Path, ...] = ()
    """Non-weight files of a Hugging Face folder copied unchanged."""
    dropped: tuple[Dropped, ...] = ()


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    overwrite: bool = False,
) -> ConvertResult:
    """Scan ``src``, load it without running code, and write it to ``dst`` as safetensors."""
    src_p, dst_p = Path(src), Path(dst)
    if not src_p.exists():
        raise ConfigError(f"{src_p} does not exist")
    if dst_p.exists() and not overwrite:
        raise ConfigError(f"{dst_p} exists; pass overwrite=True to replace it")
    a, b = src_p.resolve(), dst_p.resolve()
    if a == b or a in b.parents or b in a.parents:
        raise ConfigError(f"{dst_p} and {src_p} must not be the same or hold one another")
    dst_p.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_p.parent / f".{dst_p.name}.trainguard-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        if src_p.is_dir():
            tmp.mkdir()
            result = _convert_folder(src_p, tmp, policy, limits)
        else:
            result = _convert_file(src_p, tmp, policy, limits)
        _replace(tmp, dst_p)
    except BaseException:
        _remove(tmp)
        raise

    def moved(paths: tuple[Path, ...]) -> tuple[Path, ...]:
        return tuple(dst_p if p == tmp else dst_p / p.relative_to(tmp) for p in paths)

    return replace(
        result, src=src_p, dst=dst_p, files=moved(result.files), copied=moved(result.copied)
    )


def _convert_file(
    src: Path, out: Path, policy: Policy | None, limits: Limits | None
) -> ConvertResult:
    tensors, metadata, dropped = _flatten(_load(src, policy, limits))
    nbytes = _save(tensors, metadata, out)
    return ConvertResult(src, out, (out,), len(tensors), nbytes, (), tuple(dropped))


def _convert_folder(
    src: Path, out: Path, policy: Policy | None, limits: Limits | None
) -> ConvertResult:
    """A Hugging Face folder: weights converted shard by shard, other files copied."""
    index = src / "pytorch_model.bin.index.json"
    dropped: list[Dropped] = []
    files: list[Path] = []
    weight_map: dict[str, str] = {}
    total = count = 0
    if index.is_file():
        spec = json.loads(index.read_text(encoding="utf-8"))
        shards = _shard_names(spec, index)
        consumed = {index.name, *shards}
        for shard in shards:
            name = _safetensors_name(shard)
            tensors, metadata, lost = _flatten(_load(src / shard, policy, limits))
            total += _save(tensors, metadata, out / name)
            count += len(tensors)
            weight_map.update(dict.fromkeys(tensors, name))
            dropped += [Dropped(f"{shard}:{d.key}", d.reason) for d in lost]
            files.append(out / name)
        meta = spec.get("metadata") if isinstance(spec.get("metadata"), dict) else {}
        body = {
            "metadata": {**meta, "total_size": total},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (out / "model.safetensors.index.json").write_text(json.dumps(body, indent=2) + "\n")
        files.append(out / "model.safetensors.index.json")
    elif (src / "pytorch_model.bin").is_file():
        consumed = {"pytorch_model.bin"}
        tensors, metadata, lost = _flatten(_load(src / "pytorch_model.bin", policy, limits))
        total = _save(tensors, metadata, out / "model.safetensors")
        count = len(tensors)
        dropped += lost
        files.append(out / "model.safetensors")
    else:
        raise ConfigError(f"{src} holds neither pytorch_model.bin nor pytorch_model.bin.index.json")
    copied = _copy_rest(src, out, consumed, {f.name for f in files}, dropped)
    return ConvertResult(src, out, tuple(files), count, total, tuple(copied), tuple(dropped))


def _shard_names(spec: Any, index: Path) -> list[str]:
    """The shard files an index names; each must be a plain file beside the index."""
    weight_map = spec.get("weight_map") if isinstance(spec, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ConfigError(f"{index} has no weight_map")
    names = sorted({str(v) for v in weight_map.values()})
    for name in names:
        if Path(name).name != name or name in ("", ".", ".."):
            raise ConfigError(f"{index} names a shard outside its folder: {name!r}")
        if not (index.parent / name).is_file():
            raise ConfigError(f"{index} names a missing shard: {name}")
    return names


def _safetensors_name(shard: str) -> str:
    """``pytorch_model-00001-of-00002.bin`` -> ``model-00001-of-00002.safetensors``."""
    stem = shard[: -len(".bin")] if shard.endswith(".bin") else Path(shard).stem
    if stem.startswith("pytorch_model"):
        stem = "model" + stem[len("pytorch_model") :]
    return stem + ".safetensors"


def _copy_rest(
    src: Path, out: Path, consumed: set[str], written: set[str], dropped: list[Dropped]
) -> list[Path]:
    """Copy the folder's other files; a pickle beside the weights is left behind, as data."""
    copied = []
    for entry in sorted(src.iterdir()):
        if entry.name in consumed:
            continue
        if entry.is_dir() or not entry.is_file():
            dropped.append(Dropped(entry.name, "not a regular file; not copied"))
        elif entry.name in written:
            dropped.append(Dropped(entry.name, "replaced by the converted weights"))
        elif entry.suffix.lower() in _PICKLE_SUFFIXES:
            dropped.append(Dropped(entry.name, "a pickle file; not copied (convert it too)"))
        else:
            copied.append(Path(shutil.copy2(entry, out / entry.name)))
    return copied


def _load(path: Path, policy: Policy | None, limits: Limits | None) -> Any:
    from trainguard.load._safe import load

    log.info("converting %s", path)
    return load(path, map_location="cpu", policy=policy, limits=limits)


def _flatten(obj: Any) -> tuple[dict[str, Any], dict[str, str], list[Dropped]]:
    """Tensors by dotted key, JSON metadata for small other values, and what was dropped.

    Tensors that alias an earlier one's storage, or are not contiguous, are copied:
    safetensors refuses shared or strided memory.
    """
    import torch

    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise ConfigError(
            f"expected a state dict, checkpoint dict or module, got {type(obj).__name__}"
        )
    tensors: dict[str, Any] = {}
    metadata: dict[str, str] = {"format": "pt"}
    dropped: list[Dropped] = []
    storages: set[tuple[str, int]] = set()
    ok_dtypes = {getattr(torch, n) for n in _DTYPES if hasattr(torch, n)}
    for key, value in _walk(obj.items(), ""):
        if key in tensors or key in metadata:
            dropped.append(Dropped(key, "key collides with another entry once flattened"))
        elif isinstance(value, torch.Tensor):
            reason = _unstorable(value, ok_dtypes)
            if reason:
                dropped.append(Dropped(key, reason))
                continue
            t = value.detach()
            where = (str(t.device), t.untyped_storage().data_ptr())
            if not t.is_contiguous() or (t.numel() and where in storages):
                t = t.clone(memory_format=torch.contiguous_format)
            elif t.numel():
                storages.add(where)
            tensors[key] = t
        else:
            try:
                text = json.dumps(_jsonable(value), allow_nan=False, sort_keys=True)
            except (TypeError, ValueError) as exc:
                dropped.append(Dropped(key, f"not storable as JSON: {exc}"))
                continue
            if len(text) > MAX_METADATA_VALUE:
                dropped.append(
                    Dropped(key, f"{len(text)} bytes of JSON, over {MAX_METADATA_VALUE}")
                )
            else:
                metadata[key] = text
    return tensors, metadata, dropped


def _walk(items: Iterable[tuple[Any, Any]], prefix: str) -> Iterable[tuple[str, Any]]:
    """(dotted key, leaf): dicts, modules and tensor-holding lists are opened up."""
    import torch

    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, torch.nn.Module):
            v = v.state_dict()
        if isinstance(v, Mapping) and v:
            yield from _walk(v.items(), key + ".")
        elif isinstance(v, (list, tuple)) and any(_holds_tensor(x) for x in v):
            yield from _walk(enumerate(v), key + ".")
        else:
            yield key, v


def _holds_tensor(v: Any) -> bool:
    import torch

    if isinstance(v, (torch.Tensor, torch.nn.Module)):
        return True
    if isinstance(v, Mapping):
        return any(_holds_tensor(x) for x in v.values())
    return isinstance(v, (list, tuple)) and any(_holds_tensor(x) for x in v)


def _unstorable(t: Any, ok_dtypes: set[Any]) -> str | None:
    import torch

    if t.layout is not torch.strided or t.is_quantized:
        return f"{t.layout} / quantized tensors have no safetensors form"
    if t.device.type == "meta":
        return "a meta tensor holds no data"
    if t.dtype not in ok_dtypes:
        return f"dtype {t.dtype} has no safetensors form"
    return None


def _jsonable(v: Any) -> Any:
    """A JSON value for the plain data checkpoints carry beside tensors, or ``TypeError``."""
    import argparse
    import datetime

    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, argparse.Namespace):
        return {k: _jsonable(x) for k, x in vars(v).items()}
    if isinstance(v, PurePath):
        return str(v)
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Mapping):
        if not all(isinstance(k, (str, int, float, bool)) for k in v):
            raise TypeError("a dict with keys that are not str/int/float/bool")
        return {str(k): _jsonable(x) for k, x in v.items()}
    raise TypeError(f"{type(v).__module__}.{type(v).__qualname__} is not plain data")


def _save(tensors: dict[str, Any], metadata: dict[str, str], path: Path) -> int:
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise ConfigError(
            "convert writes safetensors, which is not installed: pip install 'trainguard[convert]'"
        ) from None

    save_file(tensors, str(path), metadata=metadata)
    return sum(int(t.numel()) * int(t.element_size()) for t in tensors.values())


def _replace(new: Path, dst: Path) -> None:
    """Move the finished output into place; an old ``dst`` is removed only after that."""
    if not dst.exists() and not dst.is_symlink():
        os.replace(new, dst)
        return
    old = new.with_name(new.name + ".old")
    os.replace(dst, old)
    os.replace(new, dst)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
