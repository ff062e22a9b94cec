"""The attacks of docs/threats.md, each done to the drill's job the way the insider did it.

A scenario sets up its attack, runs (or reuses) the job, and returns a ``Trial``: the
ledger whose alerts count, plus when and where the attack landed (step, time, rank), so
the runner can say whether the expected alert came and how late. Payloads are harmless:
a poisoned pickle would create a marker file, and the drill checks it never appears.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.drill.workspace import JOB_STEPS, Workspace, rank_pids, wait_for_step
from trainguard.findings import Finding
from trainguard.launch.exits import signal_name

__all__ = ["SCENARIOS", "Scenario", "Trial"]


@dataclass(frozen=True, slots=True)
class Trial:
    """What one scenario did: the ledger to read, extra findings made outside any ledger
    (a verification of a tampered ledger), and the injection point."""

    ledger: Path | None
    injected_step: int | None
    injected_time: float
    rank: int | None = None
    findings: tuple[Finding, ...] = ()
    note: str = ""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    expected: tuple[str, ...]
    description: str
    run: Callable[[Workspace, dict[str, Any]], Trial] = field(repr=False)


# -- loading -------------------------------------------------------------------------------


class _Marker:
    """Unpickling this would call ``open(marker, "a")``: it creates an empty file, which
    is how the drill would know the payload ran. It never runs: the file is scanned."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "a"))


def _poisoned(path: Path, marker: Path) -> None:
    import torch

    torch.save({"format": "trainguard-drill/1", "step": 0, "payload": _Marker(marker)}, path)


def _poisoned_checkpoint(ws: Workspace, shared: dict[str, Any]) -> Trial:
    base = ws.folder("poisoned-checkpoint")
    ckpt, marker = base / "step-000008.pt", base / "PAYLOAD-RAN"
    _poisoned(ckpt, marker)
    ledger = base / "ledger"
    start = time.time()
    cmd = ws.job_command(base / "out", extra=["--resume", str(ckpt)])
    ws.run(ledger, cmd, launcher=["--resume", str(ckpt)])
    ran = marker.exists()
    return Trial(ledger, 0, start, note="payload ran!" if ran else "payload never ran")


def _poisoned_hf_resume(ws: Workspace, shared: dict[str, Any]) -> Trial:
    base = ws.folder("poisoned-hf-resume")
    folder = base / "checkpoint-8"
    folder.mkdir(exist_ok=True)
    marker = base / "PAYLOAD-RAN"
    _poisoned(folder / "rng_state.pth", marker)
    ledger = base / "ledger"
    # what transformers' Trainer._load_rng_state does with the file on resume
    code_line = "import sys, torch; torch.load(sys.argv[1], weights_only=False)"
    start = time.time()
    ws.run(ledger, [ws.python, "-c", code_line, str(folder / "rng_state.pth")])
    ran = marker.exists()
    return Trial(ledger, 0, start, note="payload ran!" if ran else "payload never ran")


# -- the environment -----------------------------------------------------------------------


def _throwaway_env(where: Path) -> tuple[Path, Path]:
    """A fresh venv (no pip) and its site-packages folder."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(where)], check=True)
    python = where / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return python, Path(purelib)


def _edited_torch_source(ws: Workspace, shared: dict[str, Any]) -> Trial:
    """A copy of the environment's torch (files linked, not copied) with
    ``torch/optim/adamw.py`` edited as the insider did, then ``env verify`` of it."""
    import torch

    from trainguard import env
    from trainguard.ledger import Ledger

    base = ws.folder("edited-torch-source")
    python, site = _throwaway_env(base / "env")
    origin = Path(torch.__file__).parent.parent
    dist = next(origin.glob("torch-*.dist-info"))
    for line in (dist / "RECORD").read_text().splitlines():
        rel = line.rsplit(",", 2)[0]
        path, target = origin / rel, site / rel
        if rel.startswith("..") or not path.is_file() or target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    adamw = site / "torch" / "optim" / "adamw.py"
    text = adamw.read_text()
    adamw.unlink()
    adamw.write_text(text + "\n\n_SABOTAGE = 1.01  # lr quietly scaled in AdamW.__init__\n")
    start = time.time()
    report = env.verify(python=str(python), distributions=["torch"], record_only=True)
    ledger = base / "ledger"
    with Ledger(ledger) as led:
        found = [f.to_json() for f in report.findings]
        led.append_event(
            "env.verified", evidence={"event": "env.verified", "ok": not found, "findings": found}
        )
        for finding in report.findings:
            led.append_alert(finding, step=0)
    return Trial(ledger, 0, start)


def _pth_injection(ws: Workspace, shared: dict[str, Any]) -> Trial:
    base = ws.folder("pth-injection")
    python, site = _throwaway_env(base / "env")
    marker = base / "PTH-RAN"
    (site / "zz_helper.pth").write_text(f"import os; open({str(marker)!r}, 'a')\n")
    ledger = base / "ledger"
    start = time.time()
    proc = ws.supervised(
        ledger,
        [str(python), "-c", "print('training')"],
        launcher=["--env-verify", "full", "--stop-on", "high"],
    )
    code, _ = ws.finish(proc)
    marker.unlink(missing_ok=True)  # the probe never runs site; only the refused job could
    return Trial(ledger, 0, start, note="job refused" if code == 86 else "")


# -- inside the job ------------------------------------------------------------------------


def _insider(
    attack: str, at: int, ranks: int = 1, rank: int | None = None, extra: tuple[str, ...] = ()
) -> Callable[[Workspace, dict[str, Any]], Trial]:
    def run(ws: Workspace, shared: dict[str, Any]) -> Trial:
        base = ws.folder(f"insider-{attack}")
        out, ledger = base / "out", base / "ledger"
        cmd = ws.job_command(out, ranks=ranks, extra=extra)
        ws.run(ledger, cmd, attack=attack, at=at, rank=rank)
        return _injected(out, ledger)

    return run


def _injected(out: Path, ledger: Path) -> Trial:
    records = [json.loads(p.read_text()) for p in sorted(out.glob("injected-*.json"))]
    if not records:
        return Trial(ledger, None, time.time(), note="the attack never ran")
    first = min(records, key=lambda r: r["time"])
    return Trial(
        ledger,
        first["step"],
        first["time"],
        rank=first["rank"],
        note=first["detail"],
    )


# -- on disk -------------------------------------------------------------------------------


def _signed_run(ws: Workspace, shared: dict[str, Any]) -> tuple[Path, Path]:
    """One job that saves signed checkpoints every 4 steps (shared by two scenarios)."""
    if "signed" in shared:
        return shared["signed"]  # type: ignore[no-any-return]
    from trainguard import keys

    base = ws.folder("checkpoints")
    private, _ = keys.generate_ecdsa_p256()
    key = base / "signing.key"
    key.unlink(missing_ok=True)
    keys.write_private_pem(key, private)
    out, ledger = base / "out", base / "ledger"
    cmd = ws.job_command(out, extra=["--checkpoint-every", "4"])
    ws.run(ledger, cmd, env={"TRAINGUARD_SIGNING_KEY": str(key)})
    shared["signed"] = (out, ledger)
    return out, ledger


def _recorded(ledger: Path, start: float, step: int, note: str) -> Trial:
    from trainguard import checkpoints
    from trainguard.ledger import Ledger

    result = checkpoints.verify_recorded(ledger)
    with Ledger(ledger) as led:  # the verification's findings, on record with the run
        for finding in result.findings:
            led.append_alert(finding)
    return Trial(ledger, step, start, note=note)


def _checkpoint_edited(ws: Workspace, shared: dict[str, Any]) -> Trial:
    out, ledger = _signed_run(ws, shared)
    target = out / "checkpoints" / "step-000008.pt"
    start = time.time()
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return _recorded(ledger, start, JOB_STEPS, f"one bit flipped in {target.name}")


def _checkpoint_deleted(ws: Workspace, shared: dict[str, Any]) -> Trial:
    out, ledger = _signed_run(ws, shared)
    target = out / "checkpoints" / "step-000004.pt"
    start = time.time()
    target.unlink()
    return _recorded(ledger, start, JOB_STEPS, f"{target.name} deleted")


def _ledger_edited(ws: Workspace, shared: dict[str, Any]) -> Trial:
    from trainguard.ledger import verify
    from trainguard.ledger.store import DB_NAME, blob

    clean = shared.get("clean_ledger")
    if clean is None:
        raise RuntimeError("the clean run must come first")
    copy = ws.folder("ledger-edited") / "ledger"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(clean, copy)
    start = time.time()
    conn = sqlite3.connect(copy / DB_NAME)
    try:
        query = "SELECT seq, body FROM records ORDER BY seq LIMIT 1 OFFSET 2"
        seq, body = conn.execute(query).fetchone()
        raw = blob(body)
        edited = raw.replace(b'"severity":"info"', b'"severity":"low"', 1)
        conn.execute("UPDATE records SET body = ? WHERE seq = ?", (edited, seq))
        conn.commit()
    finally:
        conn.close()
    result = verify(copy)
    return Trial(
        None,
        None,
        start,
        findings=tuple(result.findings),
        note=f"record {seq} rewritten in the SQLite file",
    )


# -- processes -----------------------------------------------------------------------------


def _signal_scenario(
    name: str, signum: int, ranks: int, target: int, extra: tuple[str, ...] = ()
) -> Callable[[Workspace, dict[str, Any]], Trial]:
    def run(ws: Workspace, shared: dict[str, Any]) -> Trial:
        base = ws.folder(name)
        out, ledger = base / "out", base / "ledger"
        proc = ws.supervised(ledger, ws.job_command(out, steps=400, ranks=ranks, extra=extra))
        step = wait_for_step(out, 5, rank=target)
        pid = rank_pids(ledger).get(target)
        start = time.time()
        if pid is None or step is None:
            proc.kill()
            ws.finish(proc)
            return Trial(ledger, None, start, note="the job never reached step 5")
        # a shell that sends the signal and lingers a moment, as a person's shell would,
        # so the guard can still read the sender's command line
        script = f"kill -{signum} {pid}; sleep 1"
        killer = subprocess.run(["sh", "-c", script], check=False)
        ws.finish(proc)
        return Trial(
            ledger,
            step + 1,
            start,
            rank=target,
            note=f"`sh -c 'kill -{signal_name(signum)}'` (another process) to "
            f"rank {target} pid {pid}; kill exited {killer.returncode}",
        )

    return run


def _guard_removed(ws: Workspace, shared: dict[str, Any]) -> Trial:
    base = ws.folder("guard-removed")
    out, ledger = base / "out", base / "ledger"
    cmd = ws.job_command(out, steps=400, ranks=2)
    proc = ws.supervised(
        ledger,
        cmd,
        attack="remove_guard",
        at=3,
        rank=1,
        launcher=["--closed-after", "1", "--stop-on", "medium"],
    )
    ws.finish(proc)
    return _injected(out, ledger)


# -- the list ------------------------------------------------------------------------------

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "poisoned-checkpoint",
        ("scan.code_execution", "load.blocked"),
        "resume from a checkpoint whose pickle calls a function on load",
        _poisoned_checkpoint,
    ),
    Scenario(
        "poisoned-hf-resume",
        ("load.blocked",),
        "rng_state.pth of an HF checkpoint carries a payload; the job loads it as "
        "Trainer._load_rng_state does",
        _poisoned_hf_resume,
    ),
    Scenario(
        "edited-torch-source",
        ("env.file_modified",),
        "torch/optim/adamw.py edited in a copy of the environment",
        _edited_torch_source,
    ),
    Scenario(
        "pth-injection",
        ("env.startup_hook",),
        "a .pth file with code planted in site-packages",
        _pth_injection,
    ),
    Scenario(
        "monkeypatched-optimizer",
        ("runtime.monkeypatch", "runtime.update_mismatch", "runtime.weight_tamper"),
        "torch.optim.adam._single_tensor_adam replaced mid-run: 1% of each update sign-flipped",
        _insider("monkeypatch", 5),
    ),
    Scenario(
        "reseed", ("runtime.rng_reseed",), "torch.manual_seed(1234) mid-run", _insider("reseed", 5)
    ),
    Scenario(
        "sampler-tampering",
        ("runtime.data_order",),
        "RandomSampler.__iter__ edited to drop one sample and repeat another",
        _insider("sampler", 1),
    ),
    Scenario(
        "lr-change",
        ("runtime.optimizer_tamper",),
        "the learning rate x1.01 mid-run",
        _insider("lr", 5),
    ),
    Scenario(
        "weight-edit-one-rank",
        ("runtime.weight_tamper", "runtime.replica_divergence"),
        "one weight of rank 1 moved by 1 ulp through .data",
        _insider("weights", 5, ranks=2, rank=1),
    ),
    Scenario(
        "checkpoint-edited",
        ("checkpoint.modified",),
        "one bit of a signed, recorded checkpoint flipped on disk",
        _checkpoint_edited,
    ),
    Scenario(
        "checkpoint-deleted",
        ("checkpoint.missing",),
        "a signed, recorded checkpoint deleted",
        _checkpoint_deleted,
    ),
    Scenario(
        "sigterm",
        ("process.signal",),
        "SIGTERM to the job from another process",
        _signal_scenario("sigterm", signal.SIGTERM, 1, 0),
    ),
    Scenario(
        "sigkill-rank",
        ("process.killed",),
        "SIGKILL to rank 1 of a 2-rank job",
        _signal_scenario("sigkill-rank", signal.SIGKILL, 2, 1),
    ),
    Scenario(
        "straggler",
        ("process.straggler",),
        "rank 1 sleeps a random 50-300 ms before every step",
        _insider("sleeps", 1, ranks=2, rank=1),
    ),
    Scenario(
        "ledger-edited",
        ("ledger.tampered",),
        "a record of the clean run's ledger rewritten afterwards",
        _ledger_edited,
    ),
    Scenario(
        "guard-removed",
        # a rank that keeps training unguarded is guard.missing; with the gradient check's
        # per-step all_reduce, its next step no longer matches the guarded rank's
        # collectives and the job fails at once, the rank named by process.killed
        ("guard.missing", "process.killed"),
        "rank 1 closes and drops its guard mid-run and trains on",
        _guard_removed,
    ),
)
