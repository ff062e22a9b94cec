"""The symbolic pickle machine: globals resolved as find_class would, calls judged, nothing run."""

from __future__ import annotations

import io
import pickle
import struct

import pytest

from trainguard import Limits, Rule, Severity, Verdict, scan_bytes
from trainguard.errors import LimitExceeded
from trainguard.scan.limits import Budget

from pk import binbytes, call, glob, marker_cmd, proto, s1, stack_glob, system_call


def rules(result) -> set[str]:
    return {f.rule.value for f in result.findings}


def globals_flagged(result) -> set[str]:
    return {f.evidence["global"] for f in result.findings if "global" in f.evidence}


def test_plain_data_is_safe():
    data = pickle.dumps({"a": [1, 2.5, "x", b"y", None, True], "b": (1, 2)}, protocol=4)
    r = scan_bytes(data)
    assert r.verdict is Verdict.SAFE
    assert r.findings == ()
    assert r.format == "pickle"


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_os_system_every_protocol(protocol):
    class Payload:
        def __reduce__(self):
            import os

            return (os.system, ("touch /nonexistent/marker",))

    r = scan_bytes(pickle.dumps(Payload(), protocol=protocol))
    assert r.verdict is Verdict.UNSAFE
    f = next(f for f in r.findings if f.rule is Rule.CODE_EXECUTION)
    assert f.severity is Severity.CRITICAL
    assert f.evidence["global"] == "os.system"  # posix -> os
    assert f.evidence["use"] == "call"
    assert f.location.offset is not None


def test_stack_global_operands_from_memo():
    # Strings stored in the memo first, fetched with BINGET, then STACK_GLOBAL.
    body = (
        proto(4)
        + s1("os")
        + b"q\x00"  # BINPUT 0
        + b"0"  # POP
        + s1("system")
        + b"q\x01"
        + b"0"
        + b"h\x00h\x01"  # BINGET 0, BINGET 1
        + b"\x93"
        + b"("
        + marker_cmd("/x")
        + b"tR."
    )
    r = scan_bytes(body)
    assert "os.system" in globals_flagged(r)
    assert r.verdict is Verdict.UNSAFE


def test_python2_module_names_are_mapped():
    r = scan_bytes(proto(2) + call(glob("__builtin__", "eval"), s1("1+1")) + b".")
    assert "builtins.eval" in globals_flagged(r)
    assert r.verdict is Verdict.UNSAFE


def test_dotted_reexport_at_protocol_4():
    # find_class('torch.serialization', 'os.system') walks attributes to os.system.
    r = scan_bytes(proto(4) + call(stack_glob("torch.serialization", "os.system"), s1("id")) + b".")
    f = next(f for f in r.findings if f.rule is Rule.CODE_EXECUTION)
    assert f.evidence["global"] == "torch.serialization.os.system"
    assert r.verdict is Verdict.UNSAFE


def test_unknown_global_called_is_unsafe_and_instantiated_is_suspicious():
    called = scan_bytes(proto(2) + call(glob("mylab.tools", "make"), s1("x")) + b".")
    assert called.verdict is Verdict.UNSAFE
    assert rules(called) == {Rule.UNKNOWN_GLOBAL.value}
    # NEWOBJ of a class + BUILD with a dict: object reconstruction only.
    newobj = scan_bytes(proto(2) + glob("mylab.models", "Net") + b")\x81}b.")
    assert newobj.verdict is Verdict.SUSPICIOUS
    (f,) = newobj.findings
    assert f.severity is Severity.MEDIUM
    assert f.evidence["use"] == "new"


def test_callable_computed_at_load_time_is_a_gadget():
    # getattr-free chain: REDUCE whose callable is itself the result of a REDUCE.
    inner = call(glob("collections", "OrderedDict"))
    body = proto(2) + inner + b"(" + s1("x") + b"tR."
    r = scan_bytes(body)
    assert any(
        f.rule is Rule.CODE_EXECUTION and "computed at load time" in f.message for f in r.findings
    )


def test_build_on_a_global_monkeypatches():
    body = proto(2) + glob("torch.nn.functional", "relu") + b"N}" + s1("x") + b"K\x01s\x86b."
    r = scan_bytes(body)
    assert any("BUILD mutates the global" in f.message for f in r.findings)
    assert r.verdict is Verdict.UNSAFE


def test_ext_code_is_flagged():
    r = scan_bytes(proto(2) + b"\x82\x07" + b"(" + s1("id") + b"tR.")
    assert any("extension code 7" in f.message for f in r.findings)
    assert r.verdict is Verdict.UNSAFE


def test_inst_and_obj_opcodes():
    inst = b"(" + s1("id") + b"ios\nsystem\n."
    r = scan_bytes(inst)
    assert "os.system" in globals_flagged(r)
    obj = proto(1) + b"(" + glob("subprocess", "Popen") + s1("id") + b"o."
    assert "subprocess.Popen" in globals_flagged(scan_bytes(obj))


def test_payload_then_garbage_is_unsafe_and_incomplete():
    body = proto(2) + call(glob("os", "system"), marker_cmd("/x")) + b"\xff\xff garbage"
    r = scan_bytes(body)
    assert r.verdict is Verdict.UNSAFE
    assert not r.complete
    assert Rule.ERROR.value in rules(r)


def test_second_pickle_back_to_back_is_scanned():
    first = pickle.dumps({"ok": 1}, protocol=2)
    r = scan_bytes(first + system_call("/x"))
    assert r.verdict is Verdict.UNSAFE
    f = next(f for f in r.findings if f.rule is Rule.CODE_EXECUTION)
    assert f.location.offset is not None and f.location.offset >= len(first)


def test_trailing_junk_after_stop_is_noted_not_judged():
    r = scan_bytes(pickle.dumps([1, 2]) + b"\x00\x01\x02 not a pickle")
    assert r.verdict is Verdict.SAFE
    assert any(f.severity is Severity.INFO for f in r.findings)


def test_nested_pickle_in_loads_argument():
    inner = system_call("/x")
    body = proto(2) + call(glob("pickle", "loads"), binbytes(inner)) + b"."
    r = scan_bytes(body)
    nested = [f for f in r.findings if f.location.member and "pickle.loads" in f.location.member]
    assert any(f.evidence.get("global") == "os.system" for f in nested)


def test_nested_pickle_in_bytesio_for_torch_load():
    inner = system_call("/x")
    body = (
        proto(2) + call(glob("torch", "load"), call(glob("io", "BytesIO"), binbytes(inner))) + b"."
    )
    r = scan_bytes(body)
    assert any(f.evidence.get("global") == "os.system" and f.location.member for f in r.findings)


def test_missing_memo_key_is_an_error():
    r = scan_bytes(proto(2) + b"h\x05.")
    assert r.verdict is Verdict.ERROR
    assert "memo" in r.findings[0].message.lower()


def test_long_byte_strings_are_judged():
    blob = b"\x00" * (8 << 20)
    data = pickle.dumps({"blob": blob}, protocol=4)
    r = scan_bytes(data)
    assert r.verdict is Verdict.SAFE


def test_memo_index_bomb_is_a_memory_limit_not_an_oom():
    # _pickle.c zeroes 2 * index memo slots for one LONG_BINPUT: 16 GiB here
    r = scan_bytes(b"\x80\x04Nr\xff\xff\xff\x3f.", limits=Limits(max_memory=256 << 20))
    assert r.verdict is Verdict.ERROR
    assert "memory" in r.findings[0].message


def test_declared_length_past_end_is_an_error_without_allocation():
    body = proto(4) + b"\x8e" + struct.pack("<Q", 1 << 60) + b"abc"  # BINBYTES8 of 2**60
    r = scan_bytes(body)
    assert r.verdict is Verdict.ERROR


def test_protocol0_line_is_capped():
    body = b"S'" + b"a" * (2 << 20)
    r = scan_bytes(body, limits=Limits(max_line=1 << 16))
    assert r.verdict is Verdict.ERROR
    assert "line" in r.findings[0].message


def test_time_budget_is_checked_while_the_unpickler_works(monkeypatch):
    # no clock in the test: the budget says "over" from its third check on, and a stream
    # with no globals at all must still reach it (C asks the feed for bytes as it goes)
    calls = []

    def check(self):
        calls.append(1)
        if len(calls) > 2:
            raise LimitExceeded("time budget of 1 s exceeded")

    monkeypatch.setattr(Budget, "check_time", check)
    data = pickle.dumps(list(range(400_000)), protocol=0)  # above the in-memory size
    r = scan_bytes(data)
    assert r.verdict is Verdict.ERROR
    assert "time budget" in r.findings[0].message


def test_copyreg_reconstructor_judges_its_class():
    body = b"ccopy_reg\n_reconstructor\n(cmylab.evil\nThing\nc__builtin__\nobject\nNtR."
    r = scan_bytes(body)
    assert "mylab.evil.Thing" in globals_flagged(r)
    assert "copyreg._reconstructor" not in globals_flagged(r)


def test_numpy_array_pickle_is_safe():
    np = pytest.importorskip("numpy")
    for protocol in (2, 4, 5):
        buf = io.BytesIO()
        pickle.dump({"a": np.arange(10.0), "b": np.int64(3)}, buf, protocol=protocol)
        r = scan_bytes(buf.getvalue())
        assert r.verdict is Verdict.SAFE, (protocol, r.findings)
