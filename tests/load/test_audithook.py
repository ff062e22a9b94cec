"""The audit window: refuses every effect, exempts no call site, and cannot be talked out of it.

Each attack is code that runs *inside* a window, as a payload would: it calls the same
functions a payload could reach (``sys.audit``, ``audithook``, builtins, frames, gc).
"""

from __future__ import annotations

import builtins
import contextlib
import gc
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trainguard import LoadBlocked, SuspiciousCallBlocked
from trainguard.findings import FileResult, Verdict
from trainguard.load import Allowed, _restricted, audithook


def _inside(action: Callable[[], Any]) -> audithook.Watch:
    """Run ``action`` in a blocking window; it must be refused."""
    with pytest.raises(SuspiciousCallBlocked), audithook.guarding("x.pt") as watch:
        action()
    return watch


def test_blocks_shell_inside_and_not_outside(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    watch = _inside(lambda: os.system(f"touch {marker}"))
    assert not marker.exists()
    assert watch.findings[0].evidence["event"] == "os.system"
    assert "test_audithook.py" in str(watch.findings[0].evidence["stack"])
    ok = tmp_path / "fine"
    os.system(f"touch {ok}")  # outside any window: untouched
    assert ok.exists()


def test_record_only_mode_lets_the_call_through() -> None:
    with audithook.guarding("x.pt", block=False) as watch:
        subprocess.run(["true"], check=True)
    assert watch.findings and watch.findings[0].evidence["event"] == "subprocess.Popen"
    assert watch.findings[0].evidence["blocked"] is False


_WRITES: dict[str, Callable[[Path], Any]] = {
    "open-w": lambda d: open(d / "new", "w"),  # noqa: SIM115
    "open-a": lambda d: open(d / "old", "a"),  # noqa: SIM115
    "open-r+": lambda d: open(d / "old", "r+"),  # noqa: SIM115
    "os.open-creat": lambda d: os.open(d / "new", os.O_CREAT | os.O_RDONLY),
    "mkdir": lambda d: os.mkdir(d / "newdir"),
    "remove": lambda d: os.remove(d / "old"),
    "rename": lambda d: os.rename(d / "old", d / "moved"),
    "rmdir": lambda d: os.rmdir(d / "sub"),
    "rmtree": lambda d: shutil.rmtree(d / "sub"),
    "chmod": lambda d: os.chmod(d / "old", 0o777),
    "symlink": lambda d: os.symlink(d / "old", d / "link"),
    "link": lambda d: os.link(d / "old", d / "hard"),
    "truncate": lambda d: os.truncate(d / "old", 0),
    "utime": lambda d: os.utime(d / "old", (0, 0)),
    "putenv": lambda d: os.putenv("TG_X", "1"),
}


@pytest.mark.parametrize("name", sorted(_WRITES))
def test_file_system_writes_are_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / "old").write_text("data")
    (tmp_path / "sub").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    _inside(lambda: _WRITES[name](tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert (tmp_path / "old").read_text() == "data"


def test_reading_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("data")
    with audithook.guarding("x.pt") as watch:
        with open(tmp_path / "old", "rb") as f:
            assert f.read() == b"data"
        assert os.listdir(tmp_path) == ["old"]
    assert watch.findings == []


def test_imports_exec_and_compile_are_refused_whoever_calls() -> None:
    sys.modules.pop("colorsys", None)
    _inside(lambda: __import__("colorsys"))
    assert "colorsys" not in sys.modules
    _inside(lambda: exec("1 + 1"))
    _inside(lambda: compile("1", "<x>", "eval"))


def test_a_thread_started_inside_is_inside_the_window_too(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"

    def work() -> None:
        with contextlib.suppress(SuspiciousCallBlocked):
            os.system(f"touch {marker}")

    with audithook.guarding("x.pt") as watch:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
    assert not marker.exists()
    assert [f.evidence["event"] for f in watch.findings] == ["os.system"]
    assert audithook.refusal(watch) is not None


# -- attacks on the hook's own state, from inside a window -----------------------------------


def test_a_guessed_token_closes_nothing(tmp_path: Path) -> None:
    def attack() -> None:
        sys.audit("trainguard.window", "close", object())
        sys.audit("trainguard.window", "close", None)
        os.system(f"touch {tmp_path / 'PWNED'}")

    _inside(attack)
    assert not (tmp_path / "PWNED").exists()


def test_a_non_blocking_window_opened_inside_does_not_unblock(tmp_path: Path) -> None:
    def attack() -> None:
        with audithook.guarding("mine", block=False):
            os.system(f"touch {tmp_path / 'PWNED'}")

    _inside(attack)
    sys.audit("trainguard.window", "open", object(), False, "spoof", [])  # outside: no effect
    assert not (tmp_path / "PWNED").exists()


def test_reinstalling_the_hook_adds_one_and_removes_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with audithook.guarding("x.pt") as watch:
        monkeypatch.setattr(audithook, "_installed", [])
        audithook.install()  # CPython drops the new hook silently when ours refuses it
    assert [f.evidence["event"] for f in watch.findings] == ["sys.addaudithook"]
    _inside(lambda: os.system(f"touch {tmp_path / 'PWNED'}"))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("reach", ["getframe", "traceback", "generator", "gc", "code"])
def test_the_ways_to_a_frame_or_the_closure_are_refused(reach: str) -> None:
    def attack() -> Any:
        if reach == "getframe":
            return sys._getframe(1).f_locals
        if reach == "traceback":
            try:
                raise ValueError
            except ValueError as exc:
                return exc.__traceback__.tb_frame  # type: ignore[union-attr]
        if reach == "generator":
            return (x for x in ()).gi_frame
        if reach == "gc":
            return gc.get_referrers(audithook.Watch)
        return audithook.guarding.__code__

    watch = _inside(attack)
    assert watch.findings


def test_rebinding_builtins_inside_does_not_change_the_decision(tmp_path: Path) -> None:
    saved = {n: getattr(builtins, n) for n in ("len", "type", "any", "range", "repr")}

    def attack() -> None:
        builtins.len = lambda _x: 0  # type: ignore[assignment]
        builtins.type = lambda *_a: object  # type: ignore[assignment,misc]
        builtins.any = lambda _x: False  # type: ignore[assignment]
        builtins.range = lambda *_a: iter(())  # type: ignore[assignment,misc]
        os.system(f"touch {tmp_path / 'PWNED'}")

    try:
        _inside(attack)
    finally:
        for name, value in saved.items():
            setattr(builtins, name, value)
    assert not (tmp_path / "PWNED").exists()


def _allowed() -> Allowed:
    return Allowed(FileResult("x.pkl", "pickle", Verdict.SAFE, (), True))


def test_a_caught_refusal_still_fails_the_load(tmp_path: Path) -> None:
    with pytest.raises(SuspiciousCallBlocked) as info, _restricted.window(_allowed()):
        try:  # noqa: SIM105 - spelled out: this is the payload swallowing the refusal
            os.system(f"touch {tmp_path / 'PWNED'}")
        except SuspiciousCallBlocked:
            pass
    assert info.value.event == "os.system"
    assert not (tmp_path / "PWNED").exists()


def test_rebinding_trainguard_inside_a_load_is_put_back_and_fails_it() -> None:
    real_scan, real_find = _restricted.scan_source, Allowed.find
    with pytest.raises(LoadBlocked) as info, _restricted.window(_allowed()):
        _restricted.scan_source = lambda *a: None  # type: ignore[assignment,return-value]
        Allowed.find = lambda self, m, n: getattr(__import__(m), n)  # type: ignore[method-assign]
        _restricted.smuggled = True  # type: ignore[attr-defined]
    assert info.value.rule == "runtime.monkeypatch"
    assert _restricted.scan_source is real_scan and Allowed.find is real_find
    assert not hasattr(_restricted, "smuggled")


def test_a_recording_made_inside_is_recorded_and_refused_like_the_rest(tmp_path: Path) -> None:
    calls: list[audithook.CallEvent] = []

    def callback(call: audithook.CallEvent) -> None:
        calls.append(call)
        os.system(f"touch {tmp_path / 'FROM_CALLBACK'}")

    recording: list[audithook.Recording] = []

    def attack() -> None:  # the recording's callback runs with no exemption
        recording.append(audithook.record(callback, events={"os.system"}, filtered=False))
        os.system(f"touch {tmp_path / 'PWNED'}")

    try:
        watch = _inside(attack)
    finally:
        for made in recording:
            made.stop()
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "FROM_CALLBACK").exists()
    # the recording read its stack without an audited read of its own (no object.__getattr__)
    assert [f.evidence["event"] for f in watch.findings] == ["os.system", "os.system"]
    assert [c.event for c in calls] == ["os.system"]
    assert "test_audithook.py" in calls[0].site and "PWNED" in calls[0].stack
    assert recording[0].errors == 1  # its own call was refused


def test_a_callback_at_the_next_event_gets_no_exemption(tmp_path: Path) -> None:
    def attack() -> None:
        audithook.call_at_next_event(lambda: os.system(f"touch {tmp_path / 'FROM_NEXT'}"))
        os.system(f"touch {tmp_path / 'PWNED'}")

    watch = _inside(attack)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "FROM_NEXT").exists()
    assert [f.evidence["event"] for f in watch.findings] == ["os.system", "os.system"]
