"""Helpers for the tests of ``trainguard run``'s ledger: run a job under the launcher with
its defaults, and do what an insider with write access to the ledger folder does."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from ledgerkit import db

from trainguard.ledger import Record, read_records
from trainguard.ledger.tree import Frontier, leaf_hash

PY = sys.executable
ALERTING = "import os; os.kill(os.getpid(), 9)"
"""A job that dies of SIGKILL: the supervisor records ``process.killed``."""
CLEAN = "print('trained')"


@dataclass
class Run:
    code: int
    stderr: str
    ledger: Path

    @property
    def records(self) -> list[Record]:
        return read_records(self.ledger)

    @property
    def run_id(self) -> str:
        return str(self.origins[-1].evidence["run"])

    @property
    def origins(self) -> list[Record]:
        return [r for r in self.records if r.message == "run.origin"]

    def alerts(self) -> list[Record]:
        return [r for r in self.records if r.kind == "alert"]


def run_job(ledger: Path, source: str, *flags: str, env: dict[str, str] | None = None) -> Run:
    """``python -m trainguard.launch --ledger LEDGER -- python job.py``: the ledger, its key
    and its witness as ``trainguard run`` makes them by default (the witness folder is the
    test's, from ``$TRAINGUARD_WITNESS_DIR``). The environment is not verified: that is
    another check, and slow."""
    where = ledger.parent
    where.mkdir(parents=True, exist_ok=True)
    script = where / f"job-{ledger.name}.py"
    script.write_text(textwrap.dedent(source))
    full = {**os.environ, **(env or {})}
    full.pop("TRAINGUARD_LEDGER", None)
    launcher = [PY, "-m", "trainguard.launch", "--ledger", str(ledger), "--no-env-verify"]
    out = subprocess.run(
        [*launcher, "--guard-timeout", "60", *flags, "--", PY, str(script)],
        cwd=where,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(out.returncode, out.stderr, ledger)


def replace_folder(target: Path, source: Path) -> None:
    """The insider's swap: ``target`` now holds a copy of ``source``."""
    shutil.rmtree(target)
    shutil.copytree(source, target)


def cut_after(path: Path, keep: int) -> None:
    """The careful insider's truncation: records after ``keep`` gone, the heads that
    covered them gone, the tree state rewound, the acknowledged tip removed."""
    c = db(path)
    c.execute("DELETE FROM records WHERE seq > ?", (keep,))
    c.execute("DELETE FROM heads WHERE size > ?", (keep,))
    tree = Frontier()
    for (body,) in c.execute("SELECT body FROM records ORDER BY seq").fetchall():
        tree.push(leaf_hash(body))
    c.execute("UPDATE state SET size = ?, frontier = ?", (tree.size, tree.to_bytes()))
    c.close()
    (path / "ledger.tip").unlink(missing_ok=True)
