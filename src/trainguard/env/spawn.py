"""Start the probe in an isolated interpreter and collect its answer.

``-I`` ignores ``PYTHON*`` variables, the user site and the script directory; ``-S`` skips
``site``, so no ``.pth`` line, ``sitecustomize`` or ``usercustomize`` runs and
site-packages is not on ``sys.path``; ``-B`` leaves no ``.pyc`` behind in the environment
being checked. The probe package is then loaded by file location under a private name:
``sys.path`` stays the standard library alone, so nothing installed can shadow a module
the probe uses, and ``trainguard/__init__`` (with its imports) does not run either.
``LD_PRELOAD`` and ``LD_AUDIT`` are removed from the child's environment (they are
reported, not obeyed); ``/etc/ld.so.preload`` cannot be avoided and is reported.

What this cannot protect against is a modified interpreter or standard library: those
are the trusted base, checked only against a seal (after the fact).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainguard.errors import ConfigError, TrainguardError

__all__ = ["PROBE_DIR", "ProbeFailed", "Running", "command", "run_probe", "start_probe"]

PROBE_DIR = Path(__file__).resolve().parent / "probe"
PRIVATE_NAME = "_trainguard_probe"

_BOOT = f"""\
import sys, importlib.util
d = sys.argv[1]
spec = importlib.util.spec_from_file_location(
    {PRIVATE_NAME!r}, d + "/__init__.py", submodule_search_locations=[d])
m = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = m
spec.loader.exec_module(m)
from {PRIVATE_NAME}.main import main
raise SystemExit(main())
"""

_DROP_ENV = ("LD_PRELOAD", "LD_AUDIT")

Progress = Callable[[str, int, int], None]


class ProbeFailed(TrainguardError):
    """The isolated checker died or answered nonsense."""


def command(python: str) -> list[str]:
    return [python, "-I", "-S", "-B", "-c", _BOOT, str(PROBE_DIR)]


class Running:
    """A started probe: ``result()`` waits for its answer, ``kill()`` abandons it."""

    def __init__(self, exe: str, proc: subprocess.Popen[bytes], progress: Progress | None):
        self.exe = exe
        self.proc = proc
        self.errors: list[str] = []
        self.out = b""
        assert proc.stdout is not None and proc.stderr is not None
        stdout, stderr = proc.stdout, proc.stderr

        def pump_err() -> None:
            for raw in stderr:
                line = raw.decode("utf-8", "replace")
                parts = line.split()
                if len(parts) == 4 and parts[0] == "@progress":
                    if progress is not None:
                        progress(parts[1], int(parts[2]), int(parts[3]))
                else:
                    self.errors.append(line)

        def pump_out() -> None:
            self.out = stdout.read()

        self.threads = [
            threading.Thread(target=pump_err, daemon=True),
            threading.Thread(target=pump_out, daemon=True),
        ]
        for t in self.threads:
            t.start()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for t in self.threads:
            t.join()

    def result(self) -> dict[str, Any]:
        self.proc.wait()
        for t in self.threads:
            t.join()
        exe = self.exe
        tail = "".join(self.errors)[-4000:]
        if self.proc.returncode != 0:
            raise ProbeFailed(f"the checker in {exe} exited with {self.proc.returncode}: {tail}")
        try:
            answer = json.loads(self.out)
        except ValueError as exc:
            raise ProbeFailed(f"the checker in {exe} gave no answer ({exc}): {tail}") from None
        if not isinstance(answer, dict):
            raise ProbeFailed(f"the checker in {exe} gave a malformed answer")
        return answer


def start_probe(
    python: str | None,
    request: dict[str, Any],
    payload: bytes = b"",
    progress: Progress | None = None,
) -> Running:
    """Start one request; ``payload`` (seal entry lines) follows the JSON line on stdin."""
    exe = python or sys.executable
    env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
    try:
        proc = subprocess.Popen(
            command(exe),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
    except OSError as exc:
        raise ConfigError(f"cannot run interpreter {exe}: {exc.strerror or exc}") from exc
    running = Running(exe, proc, progress)
    assert proc.stdin is not None
    try:
        proc.stdin.write(json.dumps(request).encode() + b"\n" + payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass
    return running


def run_probe(
    python: str | None,
    request: dict[str, Any],
    payload: bytes = b"",
    progress: Progress | None = None,
) -> dict[str, Any]:
    return start_probe(python, request, payload, progress).result()
