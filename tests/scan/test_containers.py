"""Containers are read the way the real loaders read them."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from trainguard import Rule, Verdict, scan_bytes, scan_file

from pk import system_call

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")


def flagged_globals(result) -> set[str]:
    return {f.evidence.get("global") for f in result.findings}


def torch_bytes(obj, **kw) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


class Payload:
    def __reduce__(self):
        import os

        return (os.system, ("touch /nonexistent/trainguard-marker",))


def test_torch_zip_state_dict_reads_only_pickle_bytes(tmp_path: Path):
    path = tmp_path / "big.pt"
    torch.save({f"w{i}": torch.zeros(256, 1024) for i in range(8)}, path)  # 8 MiB of storages
    r = scan_file(path)
    assert r.verdict is Verdict.SAFE, r.findings
    assert r.format == "torch-zip"
    assert r.bytes_read < path.stat().st_size // 20


def test_torch_zip_payload(tmp_path: Path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": Payload()}, path)
    r = scan_file(path)
    assert r.verdict is Verdict.UNSAFE
    f = next(f for f in r.findings if f.rule is Rule.CODE_EXECUTION)
    assert f.location.member and f.location.member.endswith("data.pkl")


def _patch_crc(data: bytes, member_suffix: str) -> bytes:
    """Corrupt the CRC of one member in both local and central headers."""
    zf = zipfile.ZipFile(io.BytesIO(data))
    info = next(i for i in zf.infolist() if i.filename.endswith(member_suffix))
    bad = struct.pack("<I", info.CRC ^ 0xFFFFFFFF)
    out = bytearray(data)
    out[info.header_offset + 14 : info.header_offset + 18] = bad
    # central directory entry for this member: search by name
    name = info.filename.encode()
    pos = 0
    while True:
        pos = bytes(out).find(b"PK\x01\x02", pos)
        assert pos >= 0
        nlen = struct.unpack("<H", out[pos + 28 : pos + 30])[0]
        if bytes(out[pos + 46 : pos + 46 + nlen]) == name:
            out[pos + 16 : pos + 20] = bad
            break
        pos += 4
    return bytes(out)


def test_bad_crc_is_tolerated_like_torch_and_reported():
    data = _patch_crc(torch_bytes(Payload()), "data.pkl")
    with pytest.raises(zipfile.BadZipFile):
        zf = zipfile.ZipFile(io.BytesIO(data))
        zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    r = scan_bytes(data)
    assert r.verdict is Verdict.UNSAFE
    assert any("CRC" in f.message for f in r.findings)


def test_every_pickle_member_is_scanned_not_only_data_pkl():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"ok": 1}, protocol=2))
        zf.writestr("archive/extra/other.pkl", system_call("/x"))
        zf.writestr("archive/version", "3\n")
    r = scan_bytes(buf.getvalue())
    assert r.verdict is Verdict.UNSAFE
    assert any(f.location.member == "archive/extra/other.pkl" for f in r.findings)


def test_duplicate_data_pkl_is_scanned_and_reported():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"ok": 1}, protocol=2))
        with pytest.warns(UserWarning):
            zf.writestr("archive/data.pkl", system_call("/x"))
    r = scan_bytes(buf.getvalue())
    assert r.verdict is Verdict.UNSAFE
    assert any("duplicate" in f.message for f in r.findings)


def test_legacy_raw_torch_file():
    safe = scan_bytes(torch_bytes({"w": torch.ones(3)}, _use_new_zipfile_serialization=False))
    assert safe.verdict is Verdict.SAFE and safe.format == "torch-legacy"
    evil = scan_bytes(torch_bytes({"x": Payload()}, _use_new_zipfile_serialization=False))
    assert evil.verdict is Verdict.UNSAFE


def _legacy_tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_legacy_tar_walks_storage_records():
    storages = (
        pickle.dumps(1, protocol=2)
        + pickle.dumps(("0", "cpu", torch.FloatStorage), protocol=2)
        + struct.pack("<q", 2)
        + b"\x00" * 8
        + system_call("/x")  # storage views pickle: the loader unpickles it
    )
    tensors = pickle.dumps(0, protocol=2)
    data = _legacy_tar(
        {
            "sys_info": pickle.dumps({"little_endian": True}, protocol=2),
            "pickle": pickle.dumps({"ok": 1}, protocol=2),
            "storages": storages,
            "tensors": tensors,
        }
    )
    r = scan_bytes(data)
    assert r.format == "torch-legacy-tar"
    assert r.verdict is Verdict.UNSAFE
    assert any(
        f.location.member == "storages" and f.rule is Rule.CODE_EXECUTION for f in r.findings
    )


def test_npy_object_array_payload_and_numeric_array():
    buf = io.BytesIO()
    np.save(buf, np.arange(12.0).reshape(3, 4))
    assert scan_bytes(buf.getvalue()).verdict is Verdict.SAFE
    buf = io.BytesIO()
    np.save(buf, np.array([Payload(), 1], dtype=object), allow_pickle=True)
    r = scan_bytes(buf.getvalue())
    assert r.verdict is Verdict.UNSAFE
    assert r.format == "npy"


def test_npz_member_payload():
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(3), b=np.array([Payload()], dtype=object))
    r = scan_bytes(buf.getvalue())
    assert r.format == "npz"
    assert r.verdict is Verdict.UNSAFE
    assert any(f.location.member == "b.npy" for f in r.findings)


@pytest.mark.parametrize(
    "wrap",
    [
        gzip.compress,
        bz2.compress,
        lzma.compress,
        zlib.compress,
        lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
    ],
    ids=["gzip", "bz2", "xz", "zlib", "lzma-alone"],
)
def test_compressed_wrappers(wrap):
    r = scan_bytes(wrap(system_call("/x")))
    assert r.verdict is Verdict.UNSAFE
    safe = scan_bytes(wrap(pickle.dumps([1, 2, 3], protocol=4)))
    assert safe.verdict is Verdict.SAFE


def test_joblib_arrays_are_skipped_and_payload_after_them_found(tmp_path: Path):
    joblib = pytest.importorskip("joblib")
    path = tmp_path / "m.joblib"
    joblib.dump({"a": np.arange(1000.0), "b": np.array(["x", 1], dtype=object)}, path)
    r = scan_file(path)
    assert r.verdict is Verdict.SAFE, r.findings
    assert r.format == "joblib"
    joblib.dump({"a": np.arange(1000.0), "evil": Payload()}, path)
    assert scan_file(path).verdict is Verdict.UNSAFE
    joblib.dump({"a": np.array([Payload()], dtype=object)}, path)
    assert scan_file(path).verdict is Verdict.UNSAFE


def test_nested_zip_in_tar_in_gzip():
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("model/data.pkl", system_call("/x"))
    tar = _legacy_tar({"inner.zip": inner.getvalue()})
    r = scan_bytes(gzip.compress(tar))
    assert r.verdict is Verdict.UNSAFE
    f = next(f for f in r.findings if f.rule is Rule.CODE_EXECUTION)
    assert f.location.member == "<gzip>!inner.zip!model/data.pkl"


def test_safetensors_header_checks():
    st = pytest.importorskip("safetensors.torch")
    good = st.save({"a": torch.zeros(4, 4), "b": torch.ones(3, dtype=torch.int64)})
    assert scan_bytes(good).verdict is Verdict.SAFE
    huge = struct.pack("<Q", 1 << 62) + b'{"a":1}'
    r = scan_bytes(huge)
    assert r.verdict is Verdict.UNSAFE and r.findings[0].rule is Rule.MALFORMED
    header = b'{"a":{"dtype":"F32","shape":[1000000],"data_offsets":[0,4000000]}}'
    lying = struct.pack("<Q", len(header)) + header + b"\x00" * 16
    assert scan_bytes(lying).verdict is Verdict.UNSAFE


def test_raw_pickle_renamed_safetensors(tmp_path: Path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(system_call("/x"))
    r = scan_file(path)
    assert r.format == "pickle"
    assert r.verdict is Verdict.UNSAFE


def test_unknown_binary_is_reported(tmp_path: Path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4)
    r = scan_file(path)
    assert r.format == "unknown"
    assert r.verdict is Verdict.SUSPICIOUS
    assert r.findings[0].rule is Rule.UNKNOWN_FORMAT


def test_hf_folder_mixed(tmp_path: Path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    torch.save({"state": {}, "param_groups": []}, tmp_path / "optimizer.pt")
    (tmp_path / "rng_state.pth").write_bytes(torch_bytes({"python": Payload()}))
    from trainguard import scan_path

    report = scan_path(tmp_path)
    verdicts = {Path(f.path).name: f.verdict for f in report.files}
    assert verdicts["rng_state.pth"] is Verdict.UNSAFE
    assert verdicts["pytorch_model.bin"] is Verdict.SAFE
    assert verdicts["config.json"] is Verdict.SAFE
    assert verdicts["optimizer.pt"] is Verdict.SAFE


# -- TorchScript -----------------------------------------------------------------------------
def _scripted() -> bytes:
    class Small(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.sizes = [1, 2, 3]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x) * 2

    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Small()), buf)
    return buf.getvalue()


def test_torchscript_archive_is_safe_and_recognised_like_torch():
    data = _scripted()
    reader = torch._C.PyTorchFileReader(io.BytesIO(data))
    assert torch.serialization._is_torchscript_zip(reader)  # torch.load hands it to jit.load
    r = scan_bytes(data)
    assert r.format == "torchscript"
    assert r.verdict is Verdict.SAFE, r.findings
    assert any("/code/" in m and m.endswith(".py") for m in r.members)


def test_torchscript_code_touching_files_is_flagged(tmp_path: Path):
    marker = tmp_path / "m"
    data = _scripted()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        items = [(i.filename, zf.read(i)) for i in zf.infolist()]
    code = next(n for n, b in items if n.endswith(".py") and b"return torch.mul(" in b)
    edited = []
    for name, body in items:
        if name == code:
            old = b"return torch.mul("
            assert old in body
            body = body.replace(old, f'torch.save(x, "{marker}")\n    return torch.mul('.encode())
        edited.append((name, body))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, body in edited:
            zf.writestr(name, body)
    out = buf.getvalue()
    reader = torch._C.PyTorchFileReader(io.BytesIO(out))
    rel = code.split("/", 1)[1]
    assert str(marker).encode() in bytes(reader.get_record(rel))  # torch reads the edited code
    r = scan_bytes(out)
    assert r.verdict is Verdict.UNSAFE
    hit = [f for f in r.findings if f.rule is Rule.CODE_EXECUTION]
    assert hit and all(f.location.member == code for f in hit)
    assert not marker.exists()


def test_torchscript_builders_are_allowed_only_in_torchscript():
    body = b"\x80\x02ctorch.jit._pickle\nbuild_intlist\n]\x85R."
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as zf:
        zf.writestr("a/data.pkl", body)
        zf.writestr("a/version", "3\n")
    assert scan_bytes(plain.getvalue()).verdict is Verdict.UNSAFE
    ts = io.BytesIO()
    with zipfile.ZipFile(ts, "w") as zf:
        zf.writestr("a/data.pkl", body)
        zf.writestr("a/constants.pkl", b"\x80\x02).")
        zf.writestr("a/version", "3\n")
    r = scan_bytes(ts.getvalue())
    assert r.format == "torchscript"
    assert r.verdict is Verdict.SAFE, r.findings


def test_hdf5_without_h5py_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    h5py = pytest.importorskip("h5py")
    from trainguard.scan.containers import hdf5

    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["note"] = "x"
    monkeypatch.setattr(hdf5, "_h5py_installed", lambda: False)
    r = scan_file(path)
    assert r.verdict is Verdict.ERROR
    err = [f for f in r.findings if f.rule is Rule.ERROR]
    assert err and "pip install 'trainguard[scan]'" in err[0].message
    assert "Traceback" not in err[0].message
