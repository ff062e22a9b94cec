"""Running ``python -m trainguard.launch`` on small jobs and reading what it recorded.

The launcher runs as a process of its own (as ``trainguard run`` does): it becomes the
subreaper of the job and handles signals, which a test process should not.
"""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from launchkit import PY, Launched

Launch = Callable[..., Launched]


@pytest.fixture
def launch(tmp_path: Path) -> Launch:
    """``launch(command, *flags, env_verify=False, timeout=90)``: run the launcher on
    ``command`` (a list, or a Python source string run with ``python -c``) in tmp_path."""

    def run(
        command: Sequence[str] | str,
        *flags: str,
        env_verify: bool = False,
        timeout: float = 120,
        env: dict[str, str] | None = None,
    ) -> Launched:
        if isinstance(command, str):
            script = tmp_path / "job.py"
            script.write_text(textwrap.dedent(command))
            command = [PY, str(script)]
        ledger = tmp_path / "ledger"
        args = [PY, "-m", "trainguard.launch", "--ledger", str(ledger), *flags]
        if not env_verify:
            args.append("--no-env-verify")
        full_env = {**os.environ, **(env or {})}
        full_env.pop("TRAINGUARD_LEDGER", None)
        out = subprocess.run(
            [*args, "--", *command],
            cwd=tmp_path,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Launched(out.returncode, out.stderr, out.stdout, ledger)

    return run


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
