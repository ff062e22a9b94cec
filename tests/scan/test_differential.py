"""Differential tests: the scanner against the real loaders (``oracle.py``), on real files,
hand-made bypass pickles and thousands of byte-level mutations of both.

The property (``oracle.divergences``): every global that ``pickle.loads``, ``pickle._loads``,
``torch.load``, ``numpy.load`` or ``joblib.load`` resolves is in the scan's ``globals``
unless the verdict is ``unsafe``/``error``; and a resolved global that no allowlist entry
covers never leaves the verdict ``safe``. Nothing in a payload ever runs: the oracle's
``find_class`` returns stand-ins, in a sandboxed child.

``scripts/fuzz_scan.py`` runs the same seeds and mutations for as long as you like.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import pickletools
import struct
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainguard import scan_bytes

sys.path.insert(0, str(Path(__file__).resolve().parent))
from oracle import LOADERS, divergences, shared_oracle

MARKER = "touch /nonexistent/tg-differential-marker"
"""The command every hand-made payload would run. Nothing runs it: no loader gets os.system."""

# -- opcode assembly ---------------------------------------------------------------------------


def s1(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def frame(body: bytes, length: int | None = None) -> bytes:
    return b"\x95" + struct.pack("<Q", len(body) if length is None else length) + body


def text_str(text: str) -> bytes:
    return b"S'" + text.encode() + b"'\n"


SYSTEM0 = glob("os", "system") + b"(" + text_str(MARKER) + b"tR"
"""os.system(MARKER) in protocol-0 opcodes (GLOBAL, MARK, STRING, TUPLE, REDUCE)."""


def system_call(protocol: int = 2) -> bytes:
    return b"\x80" + bytes([protocol]) + SYSTEM0 + b"."


# -- seeds: real files ---------------------------------------------------------------------------


def _objects() -> list[object]:
    return [
        {"a": [1, 2.5, "x", b"y", None, True], "t": (1, (2,)), "s": {1, 2}, "big": 2**200},
        collections.OrderedDict(w=[-(2**70), 1e300, -0.0], name="layer.0"),
        [bytearray(b"ab"), frozenset({3}), (), [], {}, "é" * 3, b"\x00" * 300],
    ]


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def real_seeds() -> dict[str, bytes]:
    import joblib
    import numpy as np
    import torch

    seeds: dict[str, bytes] = {}
    for i, obj in enumerate(_objects()):
        for proto in range(6):
            seeds[f"pickle-o{i}-p{proto}"] = pickle.dumps(obj, protocol=proto)
    sd = collections.OrderedDict(
        w=torch.arange(6, dtype=torch.float32).reshape(2, 3), b=torch.ones(3, dtype=torch.int64)
    )
    buf = io.BytesIO()
    torch.save(sd, buf)
    seeds["torch-zip"] = buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        seeds["torch-data.pkl"] = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
    buf = io.BytesIO()
    torch.save(sd, buf, _use_new_zipfile_serialization=False)
    seeds["torch-legacy"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.arange(6, dtype=np.float32))
    seeds["npy"] = buf.getvalue()
    buf = io.BytesIO()
    np.save(buf, np.array([collections.OrderedDict(a=1), 2], dtype=object), allow_pickle=True)
    seeds["npy-object"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(3), o=np.array([None, "x"], dtype=object))
    seeds["npz"] = buf.getvalue()
    buf = io.BytesIO()
    joblib.dump({"a": np.arange(5.0), "o": np.array([1, None], dtype=object), "n": "x"}, buf)
    seeds["joblib"] = buf.getvalue()
    return seeds


# -- seeds: one per known bypass class -------------------------------------------------------


def _legacy_torch(main: bytes, keys: bytes) -> bytes:
    magic = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2)
    version = pickle.dumps(1001, protocol=2)
    info = pickle.dumps(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2}}, protocol=2
    )
    return magic + version + info + main + keys


def bypass_seeds() -> dict[str, bytes]:
    """Hand-made pickles, one per class of scanner/loader disagreement known in the old model.

    Each runs ``os.system(MARKER)`` under the C unpickler (the oracle proves it per test).
    """
    seeds: dict[str, bytes] = {}
    # 1. Opcodes that straddle a FRAME boundary: C ignores frame ends, pickletools too, a
    #    model that reads frame by frame does not.
    body = glob("os", "system") + b"(" + text_str(MARKER) + b"tR."
    seeds["frame-straddles-global"] = b"\x80\x04" + frame(body[:6], 6) + body[6:]
    stack = s1("os") + s1("system") + b"\x93" + s1(MARKER) + b"\x85R."
    seeds["frame-straddles-unicode"] = b"\x80\x04" + frame(stack[:5], 5) + stack[5:]
    seeds["frame-nested"] = b"\x80\x04" + frame(frame(stack[:9], 9) + stack[9:], 9 + 9)
    seeds["frame-too-short"] = b"\x80\x04" + frame(stack, 3)
    seeds["frame-after-stop-covers"] = b"\x80\x04" + frame(b"N0" + stack[:-1], 4) + b"."
    # 2. INT/LONG text forms pickletools rejects (or reads differently) and C accepts.
    for tag, form in {
        "I01": b"I01\n",
        "I-space": b"I 1\n",
        "I-plus": b"I+1\n",
        "I-underscore": b"I1_0\n",
        "I-octal": b"I010\n",
        "I-hex": b"I0x1f\n",
        "I-trailing-space": b"I1 \n",
        "L-no-suffix": b"L1\n",
        "L-underscore": b"L1_0L\n",
        "L-space": b"L 1L\n",
    }.items():
        seeds[f"int-form-{tag}"] = form + b"0" + SYSTEM0 + b"."
        seeds[f"int-form-{tag}-as-arg"] = glob("os", "system") + b"(" + form + b"tR."
    # 3. POP right after MARK discards the mark, not the item below it.
    seeds["pop-after-mark"] = (
        b"\x80\x04" + s1("collections") + s1("os") + b"(0" + s1("system") + b"\x93"
        + s1(MARKER) + b"\x85R."
    )  # fmt: skip
    seeds["pop-after-mark-pop-mark"] = (
        b"\x80\x04" + s1("os") + b"((01" + s1("system") + b"\x93" + s1(MARKER) + b"\x85R."
    )
    # 4. A later stream of a legacy torch file: torch.load reads the storage-keys pickle too.
    empty_main = pickle.dumps({}, protocol=2)
    seeds["legacy-torch-keys-stream"] = _legacy_torch(empty_main, system_call())
    seeds["legacy-torch-keys-int-form"] = _legacy_torch(empty_main, b"I 1\n0" + SYSTEM0 + b".")
    seeds["legacy-torch-keys-frame"] = _legacy_torch(empty_main, seeds["frame-straddles-unicode"])
    seeds["legacy-torch-main-then-keys"] = _legacy_torch(
        b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01I 1\nu.", system_call()
    )
    # 5. joblib array byte counts: the bytes after BUILD are array data (or a nested pickle).
    seeds["joblib-align-not-literal"] = _joblib_align_not_literal()
    seeds["joblib-payload-after-array"] = _joblib_payload_after_array()
    seeds["joblib-object-array-payload"] = _joblib_object_payload()
    # 6. Memo and DUP tricks.
    seeds["memo-memoize-after-put"] = (
        b"\x80\x04" + s1("collections") + b"q\x010" + s1("os") + b"\x940"
        + s1("OrderedDict") + b"q\x020" + s1("system") + b"\x940"
        + b"h\x01h\x02\x93" + s1(MARKER) + b"\x85R."
    )  # fmt: skip
    seeds["memo-put-overwrite"] = (
        b"\x80\x02" + s1("collections") + b"q\x00" + s1("os") + b"q\x00" + b"00"
        + b"h\x00" + s1("system") + b"\x93" + s1(MARKER) + b"\x85R."
    ).replace(b"\x80\x02", b"\x80\x04")  # fmt: skip
    seeds["memo-text-index-forms"] = (
        b"\x80\x04" + s1("os") + b"p1_0\n0" + s1("system") + b"p 7\n0"
        + b"g10\ng7\n\x93" + s1(MARKER) + b"\x85R."
    )  # fmt: skip
    seeds["memo-global-called-later"] = (
        b"\x80\x02" + glob("os", "system") + b"q\x050N" + b"0h\x05" + s1(MARKER) + b"\x85R."
    )
    seeds["dup-callable"] = b"\x80\x02" + glob("os", "system") + b"2" + s1(MARKER) + b"\x85R0."
    # 7. Python-2 names the C unpickler maps (fix_imports) at protocol < 3.
    seeds["py2-builtin-getattr"] = (
        b"\x80\x02" + glob("__builtin__", "getattr") + b"(" + glob("__builtin__", "object")
        + s1("__subclasses__") + b"tR)R."
    )  # fmt: skip
    return seeds


def _joblib_align_not_literal() -> bytes:
    """``numpy_array_alignment_bytes = ()`` instead of 16: joblib still reads the padding
    byte (it only asks ``is not None``), so a reader that skips padding only for a literal
    lands 10 bytes early, where the padding holds ``e.`` (APPENDS, STOP): the stream looks
    finished, the payload after the array is not."""
    import joblib
    import numpy as np

    buf = io.BytesIO()
    joblib.dump([np.array([1] * 8, dtype=np.uint8), "tail"], buf, protocol=2)
    blob = buf.getvalue()
    key = b"numpy_array_alignment_bytes"
    i = blob.index(key) + len(key)
    i += {ord("q"): 2, 0x94: 1}.get(blob[i], 0)  # BINPUT n / MEMOIZE
    assert blob[i : i + 2] == b"K\x10", blob[i : i + 4]  # BININT1 16
    blob = blob[:i] + b")" + blob[i + 2 :]
    data_at = blob.index(b"\x01" * 8)
    pad_at = blob.rindex(b"b", 0, data_at) + 1  # right after BUILD
    assert blob[pad_at + 1 : data_at] == b"\xff" * blob[pad_at], blob[pad_at:data_at]
    tail_at = data_at + 8
    return (
        blob[:pad_at] + bytes([9]) + b"\xff" * 7 + b"e." + blob[data_at:tail_at]
        + SYSTEM0 + b"0" + blob[tail_at:]
    )  # fmt: skip


def _joblib_payload_after_array() -> bytes:
    """A payload after the array bytes, and array bytes that read as ``N.`` (a stream end)."""
    import joblib
    import numpy as np

    buf = io.BytesIO()
    joblib.dump([np.frombuffer(b"N." * 8, dtype=np.uint8), None], buf, protocol=2)
    blob = buf.getvalue()
    end = blob.rindex(b"N." * 8) + 16
    return blob[:end] + b"0" + SYSTEM0 + b"0" + blob[end:]


def _joblib_object_payload() -> bytes:
    """An object array: joblib reads a nested pickle right after BUILD; the payload is there."""
    import joblib
    import numpy as np

    buf = io.BytesIO()
    joblib.dump(np.array(["tg-hook", 1], dtype=object), buf, protocol=2)
    blob = buf.getvalue()
    nested = blob.index(b"\x80", 2)  # the nested stream starts right after BUILD
    assert blob[nested - 1 : nested] == b"b", blob[nested - 8 : nested + 2]
    return blob[:nested] + b"\x80\x02](" + SYSTEM0 + b"K\x01e." + b"."


# -- mutations ---------------------------------------------------------------------------------

TOKENS: tuple[bytes, ...] = (
    b"(", b"0", b"1", b"2", b"t", b"R", b"\x93", b"\x94", b"\x85", b"\x81", b"b", b".",
    b"N", b"}", b"]", b"e", b"s", b"u", b"a", b"\x88", b")", b"q\x00", b"h\x00", b"p0\n",
    b"g0\n", b"I01\n", b"I 1\n", b"L1\n", b"I1_0\n", b"\x80\x02", b"\x80\x04", b"\x80\x05",
    b"\x95\x05\x00\x00\x00\x00\x00\x00\x00", b"\x95\x00\x00\x00\x00\x00\x00\x00\x00",
    glob("os", "system"), glob("collections", "OrderedDict"), s1("os") + s1("system"),
    glob("__builtin__", "eval"), b"\x8c\x02os", b"K\x01", b"J\xff\xff\xff\xff", b"\n",
)  # fmt: skip
"""Opcode-sized insertions: structure, memo, frames, the odd integer forms, globals."""

OPS = 8


def opcode_starts(data: bytes) -> list[int]:
    """Where opcodes begin (as far as ``pickletools`` can follow), plus the end."""
    starts = []
    with contextlib.suppress(Exception):  # a mutated stream stops somewhere
        for _op, _arg, pos in pickletools.genops(data):
            starts.append(pos)
    return starts or [0]


def mutate(data: bytes, program: Sequence[tuple[int, int, int]], donors: Sequence[bytes]) -> bytes:
    """Apply a mutation program: each step is (op, a, b) with small non-negative ints."""
    buf = bytearray(data)
    for op, a, b in program:
        n = len(buf)
        op %= OPS
        if op == 0 and n:  # flip a byte
            buf[a % n] ^= (b % 255) + 1
        elif op == 1:  # insert a token at an opcode start (or anywhere)
            starts = opcode_starts(bytes(buf))
            at = starts[a % len(starts)] if b % 3 else a % (n + 1)
            buf[at:at] = TOKENS[b % len(TOKENS)]
        elif op == 2 and n:  # delete a short range
            at = a % n
            del buf[at : at + 1 + b % 12]
        elif op == 3 and donors:  # splice a run of opcodes from a donor seed
            donor = donors[a % len(donors)]
            ds = opcode_starts(donor)
            i = ds[b % len(ds)]
            j = ds[min(len(ds) - 1, (b % len(ds)) + 1 + a % 6)]
            chunk = donor[i:j] if j > i else donor[i : i + 1 + a % 8]
            starts = opcode_starts(bytes(buf))
            at = starts[(a // 7) % len(starts)]
            buf[at:at] = chunk
        elif op == 4:  # insert a FRAME header at an opcode start, often straddling
            starts = opcode_starts(bytes(buf))
            at = starts[a % len(starts)]
            length = b % max(1, n - at + 2)
            buf[at:at] = b"\x95" + struct.pack("<Q", length)
        elif op == 5:  # remove a FRAME header
            at = buf.find(b"\x95", a % max(1, n))
            if at < 0:
                at = buf.find(b"\x95")
            if at >= 0:
                del buf[at : at + 9]
        elif op == 6 and n >= 2:  # change the protocol byte
            if buf[0] == 0x80:
                buf[1] = b % 7
            else:
                buf[0:0] = b"\x80" + bytes([b % 7])
        elif op == 7 and n:  # duplicate a range
            at = a % n
            buf[at:at] = buf[at : at + 1 + b % 16]
    return bytes(buf)


def pickle_member(data: bytes) -> str | None:
    """The member of a zip seed that holds the pickle a loader reads (torch or npz)."""
    if not data.startswith(b"PK"):
        return None
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
    for name in names:
        if name.endswith("data.pkl") or name.endswith("o.npy"):
            return name
    return None


def mutate_case(
    data: bytes, program: Sequence[tuple[int, int, int]], donors: Sequence[bytes], whole: bool
) -> bytes:
    """Mutate a seed; for zips, mutate the pickle member and repack unless ``whole``."""
    member = None if whole else pickle_member(data)
    if member is None:
        return mutate(data, program, donors)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    members[member] = mutate(members[member], program, donors)
    return _zip(members)


# -- running cases ---------------------------------------------------------------------------


def check_case(data: bytes, loaders: Sequence[str] = LOADERS) -> tuple[list[str], object, list]:
    """Scan ``data`` and run every real loader on it; the divergences, the scan, the oracle."""
    results = shared_oracle().run_loaders(data, loaders)
    scan = scan_bytes(data, "case.bin")
    return divergences(scan, results), scan, results


def describe(data: bytes, problems: list[str], scan: object, results: list) -> str:
    lines = [f"input ({len(data)} bytes): {data[:160].hex()}", *problems]
    lines.append(f"scan: verdict {scan.verdict} format {scan.format}")  # type: ignore[attr-defined]
    for g in scan.globals:  # type: ignore[attr-defined]
        lines.append(f"  scan global {g.module}.{g.qualname} use={g.use} status={g.status}")
    for f in scan.findings:  # type: ignore[attr-defined]
        lines.append(f"  finding {f.rule} {f.severity.label}: {f.message[:120]}")
    for r in results:
        lines.append(f"  oracle[{r.loader}] globals={r.globals} calls={r.calls} error={r.error}")
    return "\n".join(lines)


_SEEDS: dict[str, bytes] = {}


def all_seeds() -> dict[str, bytes]:
    if not _SEEDS:
        _SEEDS.update(real_seeds())
        _SEEDS.update(bypass_seeds())
    return _SEEDS


REAL = sorted(real_seeds())
BYPASS = sorted(bypass_seeds())


# -- tests -------------------------------------------------------------------------------------


def test_oracle_sees_what_the_loader_does_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    payload = glob("os", "system") + b"(" + text_str(f"touch {marker}") + b"tR."
    res = [shared_oracle().run(payload, loader) for loader in LOADERS]
    for r in res:
        assert ("os", "system") in r.globals, r
        assert ("os", "system") in r.calls, r
    assert res[0].error is None
    assert not marker.exists()
    # a module that does not exist stops the real loader: nothing after it resolves
    r = shared_oracle().run(glob("no_such_module_tg", "x") + SYSTEM0 + b".", "pickle")
    assert r.globals == [] and "ModuleNotFoundError" in (r.error or "")


def test_oracle_sandbox_kills_a_write_and_recovers(tmp_path):
    oracle = shared_oracle()
    before = oracle.kills
    target = tmp_path / "written"
    r = oracle.run(str(target).encode(), "_selftest-write")
    assert r.error is not None and r.error.startswith("killed: open for write"), r
    assert not target.exists()
    r = oracle.run(glob("collections", "OrderedDict") + b")R.", "pickle")
    assert r.error is None and r.calls == [("collections", "OrderedDict")], r
    assert oracle.kills == before + 1


@pytest.mark.parametrize("name", BYPASS)
def test_bypass_seed(name):
    data = all_seeds()[name]
    problems, scan, results = check_case(data)
    assert any(("os", "system") in r.globals for r in results) or any(r.globals for r in results), (
        f"the seed {name} no longer resolves anything in any loader: fix the seed"
    )
    assert not problems, describe(data, problems, scan, results)


@pytest.mark.parametrize("name", REAL)
def test_real_seed(name):
    data = all_seeds()[name]
    problems, scan, results = check_case(data)
    if name.startswith("pickle"):
        assert results[0].error is None and results[1].error is None, results
    assert not problems, describe(data, problems, scan, results)


_PROGRAM = st.lists(
    st.tuples(st.integers(0, OPS - 1), st.integers(0, 1 << 16), st.integers(0, 1 << 16)),
    min_size=1,
    max_size=4,
)


def _mutation_test(names: list[str], examples: int) -> Callable[..., None]:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        seed=st.sampled_from(names),
        program=_PROGRAM,
        donor=st.integers(0, 1 << 16),
        whole=st.booleans(),
    )
    def run(seed: str, program: list[tuple[int, int, int]], donor: int, whole: bool) -> None:
        seeds = all_seeds()
        donors = [seeds[n] for n in sorted(seeds) if not seeds[n].startswith(b"PK")]
        data = mutate_case(seeds[seed], program, donors[donor % len(donors) :], whole)
        problems, scan, results = check_case(data)
        assert not problems, f"seed {seed}, program {program}\n" + describe(
            data, problems, scan, results
        )

    return run


CASES_REAL = int(os.environ.get("TG_DIFF_CASES", "2400"))
CASES_BYPASS = int(os.environ.get("TG_DIFF_BYPASS_CASES", "600"))

test_mutations_of_real_files = _mutation_test(REAL, CASES_REAL)
test_mutations_of_bypass_seeds = _mutation_test(BYPASS, CASES_BYPASS)
