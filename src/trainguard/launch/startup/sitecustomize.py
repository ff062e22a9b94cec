"""trainguard's start-up hook for every Python process of a ``trainguard run`` job.

``trainguard run`` copies this file into a folder it owns and puts that folder first on
the job's ``PYTHONPATH``, so Python's ``site`` imports it at start-up in every process of
the job (``torchrun``, its ranks, spawned workers). It then:

1. writes ``<run dir>/heartbeats/<pid>.boot.json`` (pid, ppid, rank, argv, time), so the
   supervisor knows a Python process of the job started and can expect a guard from it;
2. runs the ``sitecustomize`` this one hides (found further along ``sys.path``), so the
   environment behaves as it would without trainguard;
3. calls ``trainguard.protect()``: every ``torch.load``/``pickle`` load is scanned first;
4. in every process but a launcher's (torchrun, accelerate): takes the supervisor's
   authority token out of the environment (``trainguard.guard.authority``), and starts the
   signal watch (``trainguard.guard.signals.watch_early``) before torch starts its
   threads, bound to the ledger until a ``Guard`` takes it over: every process of the job
   records who signalled it (``process.signal``; from the supervisor, an event), guarded
   or not, before the signal is delivered, and its boot file names the senders too;
5. at a normal interpreter exit, records ``"exit": "normal"`` in the boot file: a process
   that vanishes without it died by a signal or ``os._exit``.

It must cost little and never break the job: everything is wrapped, and a failure is
written into the boot file instead of raised. It never imports torch. Only the standard
library is used before step 3, so it works even where trainguard is not importable.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_RUN_DIR_ENV = "TRAINGUARD_RUN_DIR"
_PROTECT_ENV = "TRAINGUARD_PROTECT"
_SIGNALS_ENV = "TRAINGUARD_SIGNALS"
_AGENT_MODULES = frozenset(
    {
        "torch.distributed.run",
        "torch.distributed.launch",
        "accelerate.commands.launch",
        "deepspeed.launcher.runner",
    }
)
_CHAINED = "_trainguard_chained_sitecustomize"


def _write(path: str, body: dict[str, Any]) -> None:
    import json

    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(body, default=str))
        os.replace(tmp, path)
    except (OSError, ValueError, TypeError):
        pass


def _chain(here: str) -> str | None:
    """Import the next ``sitecustomize`` on ``sys.path`` (by location: importing it by
    name would find this file again). Returns its path, if there was one."""
    import importlib.machinery
    import importlib.util

    for entry in list(sys.path):
        try:
            if os.path.realpath(entry or os.getcwd()) == here:
                continue
        except (OSError, ValueError, TypeError):
            continue
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", [entry])
        if spec is None or spec.loader is None or spec.origin is None:
            continue
        if os.path.realpath(os.path.dirname(spec.origin)) == here:
            continue
        spec = importlib.util.spec_from_file_location(_CHAINED, spec.origin)
        if spec is None or spec.loader is None:
            return None
        module = importlib.util.module_from_spec(spec)
        sys.modules[_CHAINED] = module
        spec.loader.exec_module(module)
        return spec.origin
    return None


def _boot() -> None:
    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    run_dir = os.environ.get(_RUN_DIR_ENV)
    pid = os.getpid()
    path = os.path.join(run_dir, "heartbeats", f"{pid}.boot.json") if run_dir else None
    rank_env = os.environ.get("RANK")
    body: dict[str, Any] = {
        "pid": pid,
        "ppid": os.getppid(),
        "rank": _int(rank_env) or 0,
        "rank_env": rank_env,
        "local_rank": _int(os.environ.get("LOCAL_RANK")),
        "argv": list(sys.argv) if hasattr(sys, "argv") else None,
        "orig_argv": list(getattr(sys, "orig_argv", [])),
        "executable": sys.executable,
        "time": _now(),
        "errors": [],
    }
    if path is not None:
        _write(path, body)
    try:
        body["chained"] = _chain(here)
    except Exception as exc:  # noqa: BLE001  the chained file's own error: record, go on
        body["errors"].append(f"chained sitecustomize failed: {type(exc).__name__}: {exc}")
        # what site.py says about a failing sitecustomize, so the job's owner still sees it
        sys.stderr.write(
            "Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
            f"{type(exc).__name__}: {exc}\n"
        )
    if os.environ.get(_PROTECT_ENV, "1") != "0":
        try:
            import trainguard
            from trainguard.ledger.sink import ledger_sink

            trainguard.protect(on_finding=ledger_sink())
            body["protected"] = True
        except Exception as exc:  # noqa: BLE001  a broken install must not stop the job
            body["protected"] = False
            body["errors"].append(f"trainguard.protect() failed: {type(exc).__name__}: {exc}")
    agent = _is_agent(body["orig_argv"])
    if not agent:
        try:  # the job's code must never see the token (a launcher passes it on)
            from trainguard.guard import authority

            body["authority"] = authority._token_digest is not None
        except Exception as exc:  # noqa: BLE001
            body["errors"].append(f"authority failed: {type(exc).__name__}: {exc}")
    if os.environ.get(_SIGNALS_ENV, "1") != "0" and not agent:
        try:  # before torch starts its thread pools, so every signal's sender is known
            from trainguard.guard.signals import watch_early

            watch_early().bind_fallback(_signal_report(body, path))
            body["signals"] = True
        except Exception as exc:  # noqa: BLE001
            body["signals"] = False
            body["errors"].append(f"signal watch failed: {type(exc).__name__}: {exc}")
    if path is None:
        return
    _write(path, body)

    def on_exit() -> None:
        if os.getpid() != pid:  # a fork that inherited the handler
            return
        body["exit"] = "normal"
        body["exit_time"] = _now()
        _write(path, body)

    import atexit

    atexit.register(on_exit)


def _signal_report(body: dict[str, Any], path: str | None) -> Any:
    """Record a signal this process got while no ``Guard`` has the watch: an alert in the
    ledger (an event when the supervisor, or the process that started this one, sent it:
    the supervisor and launcher agents stop and tear down the job, and a pool stops its
    own workers, as torch.compile's worker pool and DataLoader workers' parents do; a
    signal from anywhere else is the attack) and the sender in the boot file."""
    from trainguard.findings import Finding, Location, Rule
    from trainguard.guard.signals_sender import signal_alert
    from trainguard.ledger.sink import open_ledger

    supervisor = _int(os.environ.get("TRAINGUARD_SUPERVISOR_PID"))

    def report(received: Any) -> None:
        said = signal_alert(received)
        evidence = {**said.evidence, "guard": False}
        ours = (
            received.verified
            and received.pid is not None
            and (received.pid == supervisor or received.pid == os.getppid())
        )
        body.setdefault("signalled_by", []).append(
            {"signal": received.signal, "pid": received.pid, "verified": received.verified}
        )
        if path is not None:
            _write(path, body)
        ledger, owned = open_ledger(None, _int(os.environ.get("RANK")) or 0)
        if ledger is None:
            return
        try:
            if ours:
                evidence["event"] = "process.signal"
                evidence["from_supervisor"] = received.pid == supervisor
                evidence["from_parent"] = received.pid == os.getppid()
                ledger.append_event("process.signal", evidence=evidence)
            else:
                message = f"{said.message} (no guard in this process)"
                finding = Finding(
                    Rule.PROCESS_SIGNAL, said.severity, message, Location(said.where), evidence
                )
                ledger.append_alert(finding)
        finally:
            if owned:
                ledger.close()

    return report


def _is_agent(argv: list[str]) -> bool:
    """Launchers (torchrun, accelerate, deepspeed) manage their workers with signals of
    their own: they are supervised from outside and keep their signal handling."""
    names = {os.path.basename(a) for a in argv[:2]}
    if names & {"torchrun", "accelerate", "deepspeed"}:
        return True
    for i, arg in enumerate(argv[:-1]):
        if arg == "-m":
            return argv[i + 1] in _AGENT_MODULES
    return False


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _now() -> float:
    import time

    return time.time()


if __name__ == "sitecustomize":
    try:  # noqa: SIM105  (contextlib would be one more import in every process)
        _boot()
    except Exception:  # noqa: BLE001  never break the job's start-up
        pass
