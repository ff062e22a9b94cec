"""Differential tests: the scanner judges what the real readers read, checked against them.

The real readers run only on benign bytes or in ways that cannot run code: torch's zip reader
lists records and returns bytes, ``zipfile``/``tarfile``/``h5py`` list members, pickles are
walked by ``pickletools.genops`` or an unpickler whose ``find_class`` records and raises.
Every payload is a marker ``touch`` that must not exist after scanning.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import random
import struct
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest

from trainguard import Rule, Verdict, scan_bytes
from trainguard.scan.containers import miniz, raw_pickle
from trainguard.scan.window import Window

from pk import call, glob, proto, s1

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")


def payload(marker: Path) -> bytes:
    return proto(2) + call(glob("os", "system"), s1(f"touch {marker}")) + b"."


def mkzip(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names on purpose
        with zipfile.ZipFile(buf, "w") as zf:
            for name, data in members:
                zf.writestr(name, data)
    return buf.getvalue()


def torch_reads(data: bytes, name: str = "data.pkl") -> bytes | None:
    """What torch's own reader returns for ``name`` (None: it cannot open or find it)."""
    try:
        reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        return bytes(reader.get_record(name))
    except RuntimeError:
        return None


def resolved_globals(data: bytes) -> list[str]:
    """The first global ``pickle.load`` would resolve from byte 0, without resolving it."""
    seen: list[str] = []

    class Recorder(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            seen.append(f"{module}.{name}")
            raise pickle.UnpicklingError("recorded, not resolved")

    with pytest.raises(pickle.UnpicklingError):
        Recorder(io.BytesIO(data)).load()
    return seen


def rules(result) -> set[Rule]:
    return {f.rule for f in result.findings}


# -- torch's zip reader, mirrored -----------------------------------------------------------
NAMES = [
    "A/data.pkl", "A/DATA.PKL", "A/Data.Pkl", "A/version", "A/x/data.pkl", "A/data.pk",
    "A/data.pkl0", "B/data.pkl", "a/data.pkl", "A/.data/version", "A/constants.pkl",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_miniz_mirror_matches_torch_reader(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        names = [rng.choice(NAMES) for _ in range(rng.randint(1, 8))]
        if rng.random() < 0.7:
            names[0] = "A/version"
        data = mkzip([(n, b"3\n" if n.endswith("version") else f"v{i}".encode())
                      for i, n in enumerate(names)])  # fmt: skip
        try:
            arch = miniz.TorchArchive(miniz.read_directory(Window(io.BytesIO(data)), 100))
        except Exception:  # noqa: BLE001
            arch = None
        try:
            reader = torch._C.PyTorchFileReader(io.BytesIO(data))
        except RuntimeError:
            assert arch is None, names
            continue
        assert arch is not None, names
        entry = arch.record("data.pkl")
        got = torch_reads(data)
        want = None if entry is None else (
            b"3\n" if names[entry.index].endswith("version") else f"v{entry.index}".encode()
        )  # fmt: skip
        assert got == want, names
        try:
            records = reader.get_all_records()
        except RuntimeError:
            assert arch.records_error is not None, names
        else:
            assert arch.records_error is None and sorted(records) == sorted(arch.records())
            assert arch.torchscript == torch.serialization._is_torchscript_zip(reader)


def two_directories(torch_members: list[tuple[str, bytes]], zf_members: list[tuple[str, bytes]]):
    """One file, two central directories: miniz reads the end record's offset as written,
    zipfile shifts it by the bytes before the directory it expects (see ``miniz.py``)."""
    a = mkzip(torch_members)
    b = mkzip(zf_members)
    a_eocd, b_eocd = a.rfind(b"PK\x05\x06"), b.rfind(b"PK\x05\x06")
    a_cd = struct.unpack_from("<I", a, a_eocd + 16)[0]
    b_cd = struct.unpack_from("<I", b, b_eocd + 16)[0]
    cd1 = a[a_cd:a_eocd]
    cd2 = bytearray(b[b_cd:b_eocd])
    n1 = struct.unpack_from("<H", a, a_eocd + 10)[0]
    assert n1 == struct.unpack_from("<H", b, b_eocd + 10)[0]
    assert len(cd1) <= len(cd2)
    # layout: a's locals, (zeros), CD1, padding, b's locals, CD2, one end record for both
    lead = b"\x00" * max(0, b_cd - a_cd)  # keeps CD2's rewritten offsets non-negative
    cd1_at = a_cd + len(lead)
    pad = b"\x00" * 8
    b_locals_at = cd1_at + len(cd1) + len(pad)
    concat = b_locals_at + b_cd - cd1_at  # what zipfile will add to every offset in CD2
    p = 0
    while p < len(cd2):
        off = struct.unpack_from("<I", cd2, p + 42)[0]
        struct.pack_into("<I", cd2, p + 42, b_locals_at + off - concat)
        n, e, c = struct.unpack_from("<HHH", cd2, p + 28)
        p += 46 + n + e + c
    eocd = bytearray(b[b_eocd : b_eocd + 22])
    struct.pack_into("<I", eocd, 16, cd1_at)
    struct.pack_into("<I", eocd, 12, len(cd2))
    return a[:a_cd] + lead + cd1 + pad + b[:b_cd] + bytes(cd2) + bytes(eocd)


@pytest.mark.parametrize("evil_for", ["torch", "zipfile"])
def test_two_central_directories_both_judged(tmp_path: Path, evil_for: str) -> None:
    marker = tmp_path / "m"
    bad, good = payload(marker), pickle.dumps({"ok": 1}, protocol=2)
    t = [("A/data.pkl", bad if evil_for == "torch" else good), ("A/version", b"3\n")]
    z = [("Z/data.pkl", bad if evil_for == "zipfile" else good), ("Z/version", b"3\n")]
    data = two_directories(t, z)
    assert torch_reads(data) == t[0][1]  # the real torch reader takes the first directory
    zf = zipfile.ZipFile(io.BytesIO(data))
    assert zf.namelist() == ["Z/data.pkl", "Z/version"]
    assert zf.read("Z/data.pkl") == z[0][1]  # the real zipfile takes the second
    r = scan_bytes(data)
    assert Rule.DIFFERENTIAL in rules(r)
    assert r.verdict is Verdict.UNSAFE
    flagged = {f.location.member for f in r.findings if f.rule is Rule.CODE_EXECUTION}
    assert flagged == {"A/data.pkl" if evil_for == "torch" else "Z/data.pkl"}
    assert not marker.exists()


def test_concatenated_zips_zipfile_reads_the_second(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    first = mkzip([("A/data.pkl", pickle.dumps(1, protocol=2)), ("A/version", b"3\n")])
    second = mkzip([("LONGER/data.pkl", payload(marker)), ("LONGER/version", b"3\n")])
    data = first + second
    assert zipfile.ZipFile(io.BytesIO(data)).namelist()[0] == "LONGER/data.pkl"
    assert torch_reads(data) is None  # miniz takes the offsets as written: it refuses
    r = scan_bytes(data)
    assert r.verdict is Verdict.UNSAFE and Rule.DIFFERENTIAL in rules(r)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("members", "evil"),
    [
        ([("A/version", b"3\n"), ("A/DATA.PKL", "bad")], "A/DATA.PKL"),
        ([("A/version", b"3\n"), ("A/data.pkl", "ok"), ("A/x/data.pkl", "bad")], "A/x/data.pkl"),
        (
            [
                ("A/data.pkl", "ok"),
                ("A/data.pkl", "ok"),
                ("A/data.pkl", "bad"),
                ("A/version", b"3\n"),
            ],
            "A/data.pkl",
        ),
        ([("A/data.pkl", "bad"), ("A/data.pkl", "ok"), ("A/version", b"3\n")], "A/data.pkl"),
    ],
    ids=["upper-case", "nested", "dup3-torch-reads-third", "dup2-torch-reads-first"],
)
def test_data_pkl_lookup_like_torch(tmp_path: Path, members, evil: str) -> None:
    marker = tmp_path / "m"
    ok = pickle.dumps({"ok": 1}, protocol=2)
    data = mkzip([(n, payload(marker) if v == "bad" else ok if v == "ok" else v)
                  for n, v in members])  # fmt: skip
    arch = miniz.TorchArchive(miniz.read_directory(Window(io.BytesIO(data)), 100))
    entry = arch.record("data.pkl")
    assert entry is not None
    real = torch_reads(data)
    assert real is not None
    # the mirror and the real reader pick the same record
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read(zf.infolist()[entry.index]) == real
    r = scan_bytes(data)
    assert r.verdict is Verdict.UNSAFE
    assert any(f.location.member == evil for f in r.findings if f.rule is Rule.CODE_EXECUTION)
    assert not marker.exists()


# -- polyglots ------------------------------------------------------------------------------
def tar_named(name: bytes, members: dict[str, bytes]) -> bytes:
    """A tar whose first header's name field (byte 0) holds ``name``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        info = tarfile.TarInfo(name.decode("utf-8", "surrogateescape"))
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
        for n, d in members.items():
            i = tarfile.TarInfo(n)
            i.size = len(d)
            tf.addfile(i, io.BytesIO(d))
    return buf.getvalue()


def test_tar_pickle_polyglot(tmp_path: Path) -> None:
    marker = tmp_path / "m"
    pk = proto(2) + call(glob("os", "system"), s1(f"touch {marker}")) + b"."
    assert b"\x00" not in pk and len(pk) < 100
    data = tar_named(pk, {"weights": b"\x00" * 64})
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        names = tf.getnames()
    assert names[1] == "weights"  # tarfile reads a tar
    assert resolved_globals(data) == ["os.system"]  # pickle.load reads a pickle from byte 0
    ops = [op.name for op, _a, _p in pickletools.genops(io.BytesIO(data))]
    assert ops[-1] == "STOP"
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(io.BytesIO(data), allow_pickle=False)  # numpy would unpickle it
    from joblib.numpy_pickle_utils import _detect_compressor

    assert _detect_compressor(io.BytesIO(data)) == "not-compressed"  # joblib unpickles it
    r = scan_bytes(data)
    assert r.format.endswith("tar")
    assert r.verdict is Verdict.UNSAFE and Rule.DIFFERENTIAL in rules(r)
    assert any(f.location.member == "<pickle>" for f in r.findings)
    assert not marker.exists()


def test_plain_tar_and_npy_are_not_pickles(tmp_path: Path) -> None:
    data = tar_named(b"archive/model.bin", {"x": b"1"})
    assert scan_bytes(data).verdict is Verdict.SAFE
    buf = io.BytesIO()
    np.save(buf, np.arange(3))
    assert not raw_pickle.is_pickle(Window(io.BytesIO(buf.getvalue())))
    assert scan_bytes(buf.getvalue()).verdict is Verdict.SAFE


@pytest.mark.parametrize("evil_in", ["pickle", "zip"])
def test_zip_pickle_polyglot(tmp_path: Path, evil_in: str) -> None:
    marker = tmp_path / "m"
    ok = pickle.dumps({"ok": 1}, protocol=2)
    head = payload(marker) if evil_in == "pickle" else ok
    tail = mkzip([("extra.pkl", payload(marker) if evil_in == "zip" else ok)])
    data = head + tail
    assert not torch.serialization._is_zipfile(io.BytesIO(data))  # torch.load: a pickle
    with pytest.raises(ValueError, match="allow_pickle"):
        np.load(io.BytesIO(data), allow_pickle=False)  # numpy.load: a pickle
    assert zipfile.is_zipfile(io.BytesIO(data))  # zipfile (Keras): a zip
    assert zipfile.ZipFile(io.BytesIO(data)).namelist() == ["extra.pkl"]
    r = scan_bytes(data)
    assert r.verdict is Verdict.UNSAFE and Rule.DIFFERENTIAL in rules(r)
    assert not marker.exists()


def test_hdf5_user_block_pickle(tmp_path: Path) -> None:
    h5py = pytest.importorskip("h5py")
    marker = tmp_path / "m"
    p = tmp_path / "poly.h5"
    with h5py.File(p, "w", userblock_size=512) as f:
        f.attrs["note"] = "data"
    pk = payload(marker)
    raw = bytearray(p.read_bytes())
    raw[: len(pk)] = pk
    p.write_bytes(bytes(raw))
    with h5py.File(p, "r") as f:  # libhdf5 still reads it
        assert f.attrs["note"] == "data"
    assert resolved_globals(bytes(raw)) == ["os.system"]  # and so does pickle.load
    r = scan_bytes(bytes(raw))
    assert r.format == "hdf5"
    assert r.verdict is Verdict.UNSAFE and Rule.DIFFERENTIAL in rules(r)
    assert not marker.exists()
