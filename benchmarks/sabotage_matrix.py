"""The insider red-team matrix (issue 13): every sabotage of ``tests/guard/sabotage_*``
against the current guard, and the honest recipes that must stay silent.

Run by hand from the repository root::

    .venv/bin/python benchmarks/sabotage_matrix.py [--json out.json] [--only TEXT]
        [--workers 2] [--timeout 120] [--no-ddp]

Each attack and each honest recipe trains the kit's tiny GPT for 12 steps under a
default ``Guard(every=4)`` in a fresh subprocess (patches to torch would leak into the
next run otherwise), at most ``--workers`` at a time; the DDP section runs afterwards,
one ``torchrun --nproc-per-node 2`` (gloo) job at a time. The table goes to stdout:
``caught`` (an alert of an expected rule at or after the injection, within ``every``
steps), ``late``, ``wrong-rule`` (alerts, none of an expected rule), ``missed``,
``error`` (the run itself failed or timed out); honest runs are ``silent`` or ``noisy``.
Exit status 0 always: this measures, it does not gate.

What it trusts: the verdicts the kit's ``judge`` computes inside each run from
``guard.alerts`` (``tests/guard/sabotage_kit.py``), and that a run's last
``SABOTAGE-RESULT`` line on stdout is its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KIT = ROOT / "tests" / "guard"
MARK = "SABOTAGE-RESULT "


@dataclass(frozen=True)
class Row:
    section: str  # attack | honest | ddp
    cls: str
    name: str
    verdict: str
    detail: str
    seconds: float
    alerts: tuple[tuple[Any, ...], ...] = ()


def _result(name: str) -> dict[str, Any]:
    """Train one attack (or honest recipe) here and judge it; never raises."""
    sys.path.insert(0, str(KIT))
    import sabotage_kit as kit

    logging.getLogger("trainguard").setLevel(logging.CRITICAL)  # alerts are in the result
    attack = next((a for a in kit.all_attacks() if a.name == name), None)
    recipe = kit.HONEST.get(name, kit.Recipe())
    try:
        alerts = kit.train(recipe, attack, script_reseed=_epoch_reseed)
        outcome = kit.judge(attack, alerts)
    except BaseException as exc:  # noqa: BLE001 - a crashed run is a row, not a crash
        return {"verdict": "error", "detail": f"{type(exc).__name__}: {exc}"[:300], "alerts": []}
    return {
        "verdict": outcome.verdict,
        "detail": outcome.detail,
        "alerts": [[a.rule, a.step, a.where, a.message[:300]] for a in alerts],
    }


def _epoch_reseed(epoch: int) -> None:
    """The honest recipes' epoch reseeding, from this entry script's own code."""
    import torch

    torch.manual_seed(epoch)


def _one(name: str, early: bool) -> int:
    """In a fresh interpreter: print one run's result line."""
    if early:
        from trainguard.guard.signals import watch_early  # before torch is imported

        watch_early()
    print(MARK + json.dumps(_result(name), default=str), flush=True)
    return 0


def _forked(section: str, cls: str, name: str, timeout: float) -> Row:
    """Run in a child forked from this (torch already imported) process: a fresh copy of
    every module, so patches die with the child, without paying the imports again. The
    child writes its result to a file of its own (a pipe could be inherited by a sibling
    forked meanwhile from the other worker thread)."""
    with tempfile.TemporaryDirectory(prefix="sabotage-") as folder:
        path = Path(folder) / "result.json"
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: it becomes its own main thread
            code = 1
            try:
                path.write_text(json.dumps(_result(name), default=str))
                code = 0
            finally:
                os._exit(code)
        status = 0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.perf_counter() - start > timeout:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return Row(section, cls, name, "error", f"timed out after {timeout:.0f}s", timeout)
            time.sleep(0.05)
        took = time.perf_counter() - start
        if not path.exists():
            return Row(section, cls, name, "error", f"child ended with status {status}", took)
        got = json.loads(path.read_text())
    alerts = tuple(tuple(a) for a in got["alerts"])
    return Row(section, cls, name, got["verdict"], got["detail"], took, alerts)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(KIT), env.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _spawn(section: str, cls: str, name: str, timeout: float) -> Row:
    """Run in a fresh interpreter that starts trainguard's signal watcher before torch."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--one", name, "--early"]
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return Row(section, cls, name, "error", f"timed out after {timeout:.0f}s", timeout)
    took = time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Row(section, cls, name, "error", f"exit {proc.returncode}: {tail}"[:300], took)
    got = json.loads(lines[-1][len(MARK) :])
    alerts = tuple(tuple(a) for a in got["alerts"])
    return Row(section, cls, name, got["verdict"], got["detail"], took, alerts)


def _ddp(cls: str, name: str, timeout: float) -> Row:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sabotage-ddp-") as out:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
            "--master-port", str(_free_port()), str(KIT / "sabotage_ddp.py"), name, out,
        ]  # fmt: skip
        try:
            proc = subprocess.run(
                cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return Row("ddp", cls, name, "error", f"timed out after {timeout:.0f}s", timeout)
        took = time.perf_counter() - start
        ranks = [json.loads(p.read_text()) for p in sorted(Path(out).glob("rank*.json"))]
    if len(ranks) != 2:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return Row("ddp", cls, name, "error", f"exit {proc.returncode}: {tail}"[:300], took)
    order = ["caught", "noisy", "late", "wrong-rule", "missed", "silent"]
    best = min(ranks, key=lambda r: order.index(r["verdict"]))
    alerts = tuple((f"rank{r['rank']}", *a) for r in ranks for a in r["alerts"])
    detail = " | ".join(f"rank{r['rank']}: {r['detail'] or r['verdict']}" for r in ranks)
    return Row("ddp", cls, name, best["verdict"], detail, took, alerts)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _table(rows: list[Row]) -> str:
    head = ("section", "class", "run", "verdict", "detail")
    body = [(r.section, r.cls, r.name, r.verdict, r.detail[:110]) for r in rows]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(4)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in [head, *body]
    ]
    lines.insert(1, "-" * (sum(widths) + 8 + len(head[4])))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write every row (with alerts) here")
    parser.add_argument(
        "--only", default="", help="run only names containing one of these (comma-separated)"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--no-ddp", action="store_true")
    parser.add_argument("--one", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--early", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        return _one(args.one, args.early)

    sys.path.insert(0, str(KIT))
    import sabotage_ddp
    import sabotage_kit as kit
    import torch

    torch.set_num_threads(1)  # two workers on two cores: no thread pools fighting
    # children are forked from the worker threads on purpose (see _forked)
    warnings.filterwarnings("ignore", ".*fork.*", DeprecationWarning)

    jobs: list[tuple[str, str, str, bool]] = [
        ("attack", a.cls, a.name, a.watch_early) for a in kit.all_attacks()
    ] + [("honest", "honest", name, False) for name in kit.HONEST]
    wanted = args.only.split(",")
    jobs = [j for j in jobs if any(w in j[2] for w in wanted)]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        futures = [
            pool.submit(_spawn if early else _forked, section, cls, name, args.timeout)
            for section, cls, name, early in jobs
        ]
        rows = []
        for future in futures:
            rows.append(future.result())
            _progress(rows, args.json)
    if not args.no_ddp:
        ddp = [(a.cls, a.name) for a in sabotage_ddp.ATTACKS]
        ddp.append(("honest", sabotage_ddp.HONEST_DDP))
        for cls, name in ddp:
            if any(w in name for w in wanted):
                rows.append(_ddp(cls, name, args.timeout))
                _progress(rows, args.json)
    print(_table(rows))
    counts = Counter((r.section == "honest" or r.cls == "honest", r.verdict) for r in rows)
    attacks = ", ".join(f"{v} {n}" for (h, v), n in sorted(counts.items()) if not h)
    honest = ", ".join(f"{v} {n}" for (h, v), n in sorted(counts.items()) if h)
    print(f"\nattacks: {attacks}\nhonest: {honest}")
    print(f"total {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return 0


def _progress(rows: list[Row], path: Path | None) -> None:
    """One line on stderr per finished run; the JSON file is rewritten as rows come."""
    row = rows[-1]
    print(f"  {row.verdict:10s} {row.seconds:5.0f}s  {row.name}", file=sys.stderr, flush=True)
    if path is not None:
        path.write_text(json.dumps([asdict(r) for r in rows], indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
