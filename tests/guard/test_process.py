"""ProcessCheck, audit side: suspicious calls during training are recorded (never blocked)
at the right step and call site; honest training (DataLoader workers included) and
trainguard's own calls raise nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from trainguard.findings import Rule, Severity
from trainguard.guard.checks.process import ProcessCheck
from trainguard.guard.core import Guard
from trainguard.load import audithook

torch = pytest.importorskip("torch")


def _tiny() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, guard: Guard) -> None:
    loss = model(torch.randn(8, 4)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    guard.step(loss)


def _calls(guard: Guard) -> list:
    return [a for a in guard.alerts if a.rule == Rule.SUSPICIOUS_CALL]


def test_subprocess_in_the_loop_is_recorded_at_its_step_and_site():
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        for step in range(1, 6):
            if step == 3:
                line = sys._getframe().f_lineno + 1
                subprocess.run(["true"], check=True)  # the call still goes ahead
            _step(model, opt, guard)
    finally:
        guard.close()
    (alert,) = _calls(guard)
    assert alert.step == 3
    assert alert.severity == Severity.HIGH
    ev = alert.finding.evidence
    assert ev["event"] == "subprocess.Popen"
    assert ev["site"] == f"{__file__}:{line}"
    assert alert.finding.location.path == f"event:subprocess.Popen@{__file__}:{line}"
    assert ev["thread"] == "MainThread"
    assert "'true'" in ev["args"] and "subprocess.run" in ev["stack"]
    assert guard.alerts == [alert]


def test_a_call_between_optimizer_step_and_guard_step_belongs_to_that_step():
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        for step in range(1, 4):
            loss = model(torch.randn(8, 4)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step == 2:
                os.system("true")
            guard.step(loss)
    finally:
        guard.close()
    (alert,) = _calls(guard)
    assert alert.step == 2 and alert.finding.evidence["event"] == "os.system"


def test_honest_loop_with_forking_dataloader_workers_raises_nothing():
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    loader = torch.utils.data.DataLoader(data, batch_size=8, num_workers=2, shuffle=True)
    model, opt = _tiny()
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3)
    guard = Guard(model, opt, scheduler=sched, checks=[ProcessCheck()], ledger=False)
    try:
        for epoch in range(2):
            for i, (x, y) in enumerate(loader):
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                guard.step(loss)
                if epoch == 0 and i == 3:
                    break  # an iterator dropped early shuts its workers down
    finally:
        guard.close()
    assert guard.alerts == []


def test_repeats_are_deduplicated_by_call_site_not_by_event_name():
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        for _ in range(3):
            subprocess.run(["true"], check=True)  # one site, three times
        subprocess.run(["true"], check=True)  # a second site
    finally:
        guard.close()
    alerts = _calls(guard)
    assert len(alerts) == 2
    assert len({a.finding.evidence["site"] for a in alerts}) == 2
    assert guard.repeats[(Rule.SUSPICIOUS_CALL.value, alerts[0].finding.location.path)] == 3


def test_sockets_signals_and_other_threads_are_recorded(tmp_path: Path):
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        sleeper = subprocess.Popen(["sleep", "30"])

        def exfiltrate() -> None:
            with socket.create_connection(server.getsockname(), timeout=5):
                pass

        worker = threading.Thread(target=exfiltrate, name="sneaky")
        worker.start()
        worker.join()
        os.kill(sleeper.pid, 0)  # only asks whether it lives: not recorded
        os.kill(sleeper.pid, 15)  # a user-code kill of another process: recorded
        sleeper.wait()
    finally:
        guard.close()
        server.close()
    events = {a.finding.evidence["event"]: a for a in _calls(guard)}
    assert set(events) == {"subprocess.Popen", "socket.connect", "os.kill"}
    assert events["socket.connect"].finding.evidence["thread"] == "sneaky"
    assert "15" in events["os.kill"].finding.evidence["args"]


@pytest.mark.parametrize(
    "allow",
    [("subprocess.Popen",), (__name__,), (f"subprocess.Popen@{__name__}",)],
    ids=["event", "module", "event@module"],
)
def test_allow_exempts_the_jobs_own_calls(allow):
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False, allow=allow)], ledger=False)
    try:
        subprocess.run(["true"], check=True)
    finally:
        guard.close()
    assert guard.alerts == []


def test_allow_for_one_event_does_not_exempt_another():
    model, opt = _tiny()
    check = ProcessCheck(signals=False, allow=(f"socket.connect@{__name__}",))
    guard = Guard(model, opt, checks=[check], ledger=False)
    try:
        subprocess.run(["true"], check=True)
    finally:
        guard.close()
    assert [a.finding.evidence["event"] for a in _calls(guard)] == ["subprocess.Popen"]


def test_trainguards_own_calls_are_not_reported(tmp_path: Path):
    """The ledger's witness command runs a program for every head: trainguard's doing."""
    pytest.importorskip("cryptography")  # signed heads
    from trainguard import keys
    from trainguard.ledger import Ledger, read_records

    private_pem, _ = keys.generate_ed25519()
    key_path = tmp_path / "ledger.key"
    key_path.write_bytes(private_pem)
    key_path.chmod(0o600)
    witnessed = tmp_path / "heads"
    ledger = Ledger(
        tmp_path / "ledger",
        key=key_path,
        head_every=1,
        witness_command=["sh", "-c", f"cat >> {witnessed}"],
    )
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck()], ledger=ledger)
    try:
        for _ in range(3):
            _step(model, opt, guard)
        guard.flush()
    finally:
        guard.close()
        ledger.close()
    assert witnessed.exists() and witnessed.read_text()  # the command did run
    assert guard.alerts == []
    assert not read_records(tmp_path / "ledger", Rule.SUSPICIOUS_CALL)


@pytest.mark.parametrize("installed", [True, False], ids=["installed", "user-code"])
def test_a_native_library_loaded_by_an_imported_package(tmp_path: Path, installed: bool):
    """Installed packages load native code at import (torch submodules imported lazily do):
    that is the environment check's business. The same from the user's own code is not."""
    where = tmp_path / ("site-packages" if installed else "src")
    where.mkdir()
    name = f"tg_native_{'installed' if installed else 'user'}"
    (where / f"{name}.py").write_text("import ctypes\nLIBC = ctypes.CDLL(None)\n")
    sys.path.insert(0, str(where))
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        __import__(name)
    finally:
        guard.close()
        sys.path.remove(str(where))
        sys.modules.pop(name, None)
    events = [a.finding.evidence["event"] for a in _calls(guard)]
    assert events == ([] if installed else ["ctypes.dlopen"])


def test_recorded_into_the_ledger(tmp_path: Path):
    from trainguard.ledger import read_records

    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=tmp_path / "ledger")
    try:
        _step(model, opt, guard)
        os.system("true")
        _step(model, opt, guard)
    finally:
        guard.close()
    (rec,) = read_records(tmp_path / "ledger", Rule.SUSPICIOUS_CALL)
    assert rec.step == 2 and rec.severity == "high"
    assert rec.evidence["event"] == "os.system" and rec.evidence["thread"] == "MainThread"


def test_nothing_is_recorded_after_close_and_the_hook_is_idle():
    model, opt = _tiny()
    check = ProcessCheck(signals=False)
    guard = Guard(model, opt, checks=[check], ledger=False)
    recording = check._recording
    assert recording in audithook._recorders
    guard.close()
    subprocess.run(["true"], check=True)
    assert guard.alerts == []
    assert recording not in audithook._recorders


def test_a_failing_report_never_breaks_the_call_and_surfaces_as_guard_error():
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)

    def broken(alert):
        raise RuntimeError("callback exploded")

    guard.emit = lambda *a, **k: broken(None)  # type: ignore[method-assign]
    try:
        done = subprocess.run(["echo", "still ran"], check=True, capture_output=True)
        del guard.emit  # back to the real one
        _step(model, opt, guard)
    finally:
        guard.close()
    assert done.stdout == b"still ran\n"
    (err,) = [a for a in guard.alerts if a.rule == Rule.GUARD_ERROR]
    assert "callback exploded" in err.finding.message


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_does_not_report_into_the_parent():
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        pid = os.fork()
        if pid == 0:  # the child: no recorders, so nothing can reach the parent's guard
            os._exit(0 if audithook._recorders == () else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        guard.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert guard.alerts == []


def test_the_load_guard_and_the_recording_coexist(tmp_path: Path):
    from trainguard import SuspiciousCallBlocked

    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    marker = tmp_path / "PWNED"
    try:
        with audithook.guarding("x.pt") as watch, pytest.raises(SuspiciousCallBlocked):
            os.system(f"touch {marker}")
    finally:
        guard.close()
    assert not marker.exists()  # the load guard still blocks
    assert watch.findings[0].evidence["event"] == "os.system"
    assert [a.finding.evidence["event"] for a in _calls(guard)] == ["os.system"]


# -- who started the program ---------------------------------------------------------------


def test_a_fake_library_function_starting_a_program_is_an_alert():
    """The attack on "verified library code": code of the attacker's making, compiled under
    an installed module's file name and run in that module's own globals."""
    import packaging.version as lib

    fake = "import subprocess\ndef parse(v):\n    subprocess.Popen(['true']).wait()\n"
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        namespace = lib.__dict__.copy()
        exec(compile(fake, lib.__file__, "exec"), lib.__dict__)
        try:
            lib.parse("1.0")  # type: ignore[attr-defined]
        finally:
            lib.__dict__.clear()
            lib.__dict__.update(namespace)
        plugin: dict[str, object] = {"__name__": "plugin"}
        exec(compile(fake, "<string>", "exec"), plugin)
        plugin["parse"]("1.0")  # type: ignore[operator]
        _step(model, opt, guard)
    finally:
        guard.close()
    sites = sorted(a.finding.evidence["site"] for a in _calls(guard))
    assert len(sites) == 2
    assert {site.partition(":")[0] for site in sites} == {"<string>", lib.__file__}
    assert all(a.finding.evidence["verified"] is False for a in _calls(guard))


HONEST_SPAWNS = """
import json, os, subprocess, sys
import torch
from trainguard.guard.checks.process import ProcessCheck
from trainguard.guard.core import Guard

os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
subprocess.run(["true"], check=True)  # the entry script's own call
import wandb
run = wandb.init(project="trainguard-test", dir=sys.argv[1])  # starts its service
run.log({"loss": 1.0})
run.finish()
exec(compile("subprocess.run(['true'])", __file__, "exec"))  # not the script's code
guard.close()
print(json.dumps({"alerts": [a.finding.evidence.get("site", a.rule.value) for a in guard.alerts]}))
"""


def test_wandb_offline_and_the_entry_script_start_programs_without_alerts(tmp_path: Path):
    pytest.importorskip("wandb")
    script = tmp_path / "train.py"
    script.write_text(HONEST_SPAWNS)
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        check=True,
    )
    got = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    (site,) = got["alerts"]  # only the exec'd copy under the script's name
    assert site.startswith(f"{script}:")


# -- native signal senders through ctypes -----------------------------------------------


def test_a_ctypes_lookup_of_a_signal_sender_is_an_alert_with_the_stack():
    """The attack on "signals go through os.kill's audit event": ``syscall`` and
    ``kill`` looked up through ctypes (the first step of a self-sent forged signal) are
    alerts with the stack; a lookup of anything else is not reported."""
    import ctypes

    libc = ctypes.CDLL(None)  # loaded before the guard: its dlopen is not this test's point
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        _step(model, opt, guard)
        assert libc.getpid() == os.getpid()  # an honest lookup and call: nothing
        libc.syscall  # noqa: B018 - the lookup alone is the alert
        assert libc.kill(os.getpid(), 0) == 0  # signal 0: a probe, harmless
        _step(model, opt, guard)
    finally:
        guard.close()
    calls = _calls(guard)
    assert sorted(a.finding.evidence["symbol"] for a in calls) == ["kill", "syscall"]
    for alert in calls:
        ev = alert.finding.evidence
        assert alert.severity == Severity.HIGH and alert.step == 2
        assert ev["event"] == "ctypes.dlsym" and ev["verified"] is False
        assert ev["site"].startswith(__file__) and "test_process.py" in ev["stack"]


def test_a_call_of_a_signal_senders_address_through_call_function_is_an_alert():
    """``_ctypes.call_function`` with the address of ``kill`` (found without a lookup by
    name of this test's own) is judged by the address."""
    import _ctypes
    import ctypes

    address = ctypes.cast(ctypes.CDLL(None).kill, ctypes.c_void_p).value
    model, opt = _tiny()
    guard = Guard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        assert _ctypes.call_function(address, (os.getpid(), 0)) == 0  # signal 0: a probe
    finally:
        guard.close()
    (alert,) = _calls(guard)
    assert alert.finding.evidence["event"] == "ctypes.call_function"
    assert alert.finding.evidence["symbol"] == "kill"


def test_a_verified_library_looking_up_syscall_is_an_event_not_an_alert():
    """filelock looks up ``syscall`` for ``renameat2``: installed library code that is
    what its file compiles to is recorded as ``process.native_symbol``, never an alert;
    the same lookup from a copy of that code compiled elsewhere is an alert."""
    import ctypes

    import guardkit

    exchange = pytest.importorskip("filelock._filesystem._exchange")
    renameat2 = getattr(exchange, "_renameat2", None)
    if renameat2 is None:
        pytest.skip("this filelock has no ctypes renameat2")
    libc, other = ctypes.CDLL(None), ctypes.CDLL(None)
    import inspect
    import platform
    import typing
    from collections.abc import Callable

    source = "from __future__ import annotations\n" + inspect.getsource(renameat2)
    scope: dict = {"__name__": "not_filelock", "platform": platform, "Final": typing.Final}
    scope["Callable"] = Callable
    exec(compile(source, "/tmp/not_filelock.py", "exec"), scope)  # same code, no file
    model, opt = _tiny()
    guard = guardkit.SpyGuard(model, opt, checks=[ProcessCheck(signals=False)], ledger=False)
    try:
        assert renameat2(libc) is not None
        assert scope["_renameat2"](other) is not None
    finally:
        guard.close()
    (event,) = guard.events("process.native_symbol")
    assert event["symbol"] == "syscall" and "filelock" in event["site"]
    (alert,) = _calls(guard)
    assert alert.finding.evidence["site"].startswith("/tmp/not_filelock.py")
