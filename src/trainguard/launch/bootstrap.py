"""Everything the job needs from the launcher before it starts: the run folder, the
start-up folder with trainguard's ``sitecustomize``, and the environment that points the
job's processes at both.

The start-up folder is private (``mkdtemp``: mode 0700, owned by the launcher's user) and
holds a copy of ``startup/sitecustomize.py`` read from the installed trainguard package,
which the environment verify has just checked; nobody else can swap it between the check
and the job's start.

Two more things reach the job through its environment, both read by the start-up hook
before any of the job's own code runs: the supervisor's pid (``TRAINGUARD_SUPERVISOR_PID``:
a signal from it is the supervisor stopping or forwarding, an event rather than an alert)
and a per-run authority token (``TRAINGUARD_AUTHORITY``, see
``trainguard.guard.authority``): each process of the job but a launcher removes it from
its environment and keeps only its digest; the plaintext stays with the supervisor
(``Bootstrap.authority``). What this trusts: that nothing runs in a job process before the
start-up hook (the job's own ``sitecustomize`` is chained after it).
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trainguard.guard.heartbeat import HEARTBEAT_DIR, RUN_DIR_ENV

__all__ = [
    "AUTHORITY_ENV",
    "KEY_ENV",
    "LEDGER_ENV",
    "LEDGER_KEY_ENV",
    "PROTECT_ENV",
    "SUPERVISOR_PID_ENV",
    "Bootstrap",
    "make_bootstrap",
]

LEDGER_ENV = "TRAINGUARD_LEDGER"
LEDGER_KEY_ENV = "TRAINGUARD_LEDGER_KEY"
KEY_ENV = "TRAINGUARD_RUN_KEY"
AUTHORITY_ENV = "TRAINGUARD_AUTHORITY"
SUPERVISOR_PID_ENV = "TRAINGUARD_SUPERVISOR_PID"
PROTECT_ENV = "TRAINGUARD_PROTECT"
_TEMPLATE = Path(__file__).parent / "startup" / "sitecustomize.py"


@dataclass(frozen=True, slots=True)
class Bootstrap:
    run_dir: Path
    heartbeats: Path
    startup_dir: Path
    key: str
    """The per-run secret (hex) every rank's guard keys its fingerprints with."""
    authority: str = ""
    """The per-run token that opens a ``guard.authorized()`` window from any code."""

    def child_env(
        self,
        base: Mapping[str, str],
        *,
        ledger: Path | str,
        ledger_key: Path | None,
        protect: bool,
    ) -> dict[str, str]:
        env = dict(base)
        old = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(self.startup_dir) + (os.pathsep + old if old else "")
        env[RUN_DIR_ENV] = str(self.run_dir)
        env[LEDGER_ENV] = str(ledger)
        env[KEY_ENV] = self.key
        env[PROTECT_ENV] = "1" if protect else "0"
        env[SUPERVISOR_PID_ENV] = str(os.getpid())
        if self.authority:
            env[AUTHORITY_ENV] = self.authority
        else:
            env.pop(AUTHORITY_ENV, None)
        if ledger_key is not None:
            env[LEDGER_KEY_ENV] = str(ledger_key)
        else:
            env.pop(LEDGER_KEY_ENV, None)
        return env

    def cleanup(self) -> None:
        """Remove the start-up folder (the run folder stays: it is evidence)."""
        shutil.rmtree(self.startup_dir, ignore_errors=True)


def make_bootstrap(ledger: Path) -> Bootstrap:
    """A fresh run folder ``<ledger>/runs/<UTC time>-<pid>`` (0700) and start-up folder."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    runs = ledger / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    run_dir = runs / f"{stamp}-{os.getpid()}"
    suffix = 0
    while True:
        try:
            run_dir.mkdir(mode=0o700)
            break
        except FileExistsError:
            suffix += 1
            run_dir = runs / f"{stamp}-{os.getpid()}-{suffix}"
    heartbeats = run_dir / HEARTBEAT_DIR
    heartbeats.mkdir(mode=0o700)
    startup = Path(tempfile.mkdtemp(prefix="trainguard-startup-"))
    shutil.copyfile(_TEMPLATE, startup / "sitecustomize.py")
    return Bootstrap(
        run_dir, heartbeats, startup, secrets.token_hex(32), authority=secrets.token_hex(32)
    )
