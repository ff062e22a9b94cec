"""Bad input gets an error verdict with a location, in bounded time and memory; no crash."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainguard import Limits, Rule, Verdict, scan_bytes, scan_file

from pk import call, glob, marker_cmd, proto

SMALL = Limits(max_member_bytes=8 << 20, max_decompressed=16 << 20, ratio_floor=1 << 20)


def _zip_bytes(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_bomb_member_is_stopped():
    bomb = _zip_bytes({"archive/data.pkl": b"\x00" * (64 << 20)})
    assert len(bomb) < 1 << 20
    r = scan_bytes(bomb, limits=SMALL)
    assert r.verdict is Verdict.ERROR
    err = next(f for f in r.findings if f.rule is Rule.ERROR)
    assert err.evidence["kind"] == "limit"
    assert err.location.member == "archive/data.pkl"


def test_gzip_bomb_is_stopped():
    bomb = gzip.compress(b"\x00" * (64 << 20), compresslevel=9)
    r = scan_bytes(bomb, limits=SMALL)
    assert r.verdict is Verdict.ERROR
    assert "bomb" in r.findings[0].message


def test_nested_archives_deeper_than_limit():
    data = pickle.dumps([1], protocol=2)
    for _ in range(12):
        data = gzip.compress(data)
    r = scan_bytes(data)
    assert r.verdict is Verdict.ERROR
    assert "nesting" in r.findings[-1].message


def test_hostile_member_names_are_reported():
    data = _zip_bytes({"../../etc/cron.d/x": b"hello", "/abs/path": b"x"})
    r = scan_bytes(data)
    assert sum(f.rule is Rule.PATH_TRAVERSAL for f in r.findings) == 2


@pytest.mark.parametrize("cut", [1, 5, 17, 40, 100, 300])
def test_truncated_torch_zip(cut: int):
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(10)}, buf)
    data = buf.getvalue()[: len(buf.getvalue()) - cut]
    r = scan_bytes(data)
    assert r.verdict in (Verdict.ERROR, Verdict.SUSPICIOUS, Verdict.SAFE)
    if r.verdict is Verdict.ERROR:
        assert r.findings[-1].message


@pytest.mark.parametrize("cut", range(1, 40, 3))
def test_truncated_pickle_with_payload_is_never_safe(cut: int):
    full = proto(2) + call(glob("os", "system"), marker_cmd("/x")) + b"."
    r = scan_bytes(full[: len(full) - cut])
    assert r.verdict in (Verdict.UNSAFE, Verdict.ERROR)


def test_deeply_nested_containers_do_not_recurse():
    depth = 200_000
    data = proto(2) + b"(" * depth + b"t" * depth + b"."
    r = scan_bytes(data)
    assert r.verdict in (Verdict.SAFE, Verdict.ERROR)


def test_huge_memo_index_is_a_memory_limit_and_many_entries_are_fine():
    # CPython's unpickler allocates 2 * index memo slots: this stream needs 64 GiB to load
    data = proto(2) + b"N" + b"r" + struct.pack("<I", 2**32 - 1) + b"."
    r = scan_bytes(data, limits=Limits(max_memory=512 << 20))
    assert r.verdict is Verdict.ERROR
    assert "memory" in r.findings[0].message
    many = proto(2) + b"N" + b"".join(b"r" + struct.pack("<I", i) for i in range(5000)) + b"."
    assert scan_bytes(many).verdict is Verdict.SAFE


def test_unreadable_path_is_an_error(tmp_path: Path):
    r = scan_file(tmp_path / "missing.pt")
    assert r.verdict is Verdict.ERROR
    assert r.findings[0].rule is Rule.ERROR


def test_corrupt_deflate_member():
    data = bytearray(_zip_bytes({"archive/data.pkl": pickle.dumps(list(range(1000)))}))
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = zf.infolist()[0]
    start = info.header_offset + 30 + len(info.filename)
    data[start + 2 : start + 12] = b"\xff" * 10
    r = scan_bytes(bytes(data))
    assert r.verdict in (Verdict.ERROR, Verdict.SUSPICIOUS)
    assert any(f.location.member == "archive/data.pkl" for f in r.findings)


def test_stored_zip_member_past_end():
    data = _zip_bytes({"archive/data.pkl": b"x" * 100}, zipfile.ZIP_STORED)
    cut = data.replace(b"x" * 100, b"x" * 10)  # keeps the directory's size claim
    r = scan_bytes(cut)
    assert r.verdict is Verdict.ERROR


# -- property tests: nothing may crash the scanner ------------------------------------------

_SEEDS = [pickle.dumps({"a": [1, 2.0, "x"], "b": (None, True)}, protocol=p) for p in range(6)] + [
    proto(2) + call(glob("os", "system"), marker_cmd("/x")) + b"."
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash(data: bytes):
    r = scan_bytes(data)
    assert r.verdict in set(Verdict)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_SEEDS),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    st.integers(0, 400),
)
def test_mutated_pickles_never_crash(seed: bytes, flips: list[tuple[int, int]], cut: int):
    data = bytearray(seed)
    for pos, val in flips:
        if data:
            data[pos % len(data)] = val
    data = data[: max(1, len(data) - cut % max(1, len(data)))]
    r = scan_bytes(bytes(data))
    assert r.verdict in set(Verdict)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=512))
def test_random_members_in_a_zip_never_crash(payload: bytes):
    data = _zip_bytes({"archive/data.pkl": payload, "archive/x": zlib.compress(payload)})
    r = scan_bytes(data)
    assert r.verdict in set(Verdict)


def test_parallel_scan_matches_sequential(tmp_path: Path):
    from trainguard import scan_path
    from trainguard.scan import PARALLEL_FROM

    from pk import system_call

    for i in range(PARALLEL_FROM + 5):
        data = system_call(str(tmp_path / "PWNED")) if i % 7 == 0 else pickle.dumps([i])
        (tmp_path / f"f{i:03}.pkl").write_bytes(data)
    seq = scan_path(tmp_path, jobs=1)
    par = scan_path(tmp_path, jobs=2)
    assert [(f.path, f.verdict) for f in seq.files] == [(f.path, f.verdict) for f in par.files]
    assert sum(f.verdict is Verdict.UNSAFE for f in par.files) == 10


_TEMPLATE_BITS = st.sampled_from(
    ["{{", "}}", "{%", "%}", "{#", "#}", " set x = ", " for m in messages ", " endfor ",
     "|attr(", ")", "(", "'__cla'", "~", "'ss__'", "[", "]", ".", "__globals__", "cycler",
     "'%c'", "%", "95", "{% set n %}", "{% endset %}", "\ud800", "\x00", "x", "\n"]
)  # fmt: skip


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_TEMPLATE_BITS, max_size=40), st.sampled_from(["chat_template.jinja", "c.yaml"]))
def test_random_templates_never_crash(bits: list[str], name: str):
    body = "".join(bits)
    data = body if name.endswith(".jinja") else "chat_template: " + json.dumps(body)
    r = scan_bytes(data.encode("utf-8", "surrogatepass"), name)
    assert r.verdict in set(Verdict)
    for f in r.findings:  # every string the result holds can be printed
        (f.message + str(f.location) + json.dumps(dict(f.evidence), ensure_ascii=False)).encode()
