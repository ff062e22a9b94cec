"""Sending each head to a second place as it is made.

Whoever controls the machine can rewrite the ledger, its heads, even (without the
ratchet) re-sign them; a copy of every head held somewhere they cannot write makes such
a rewrite disagree with the copy (``verify(..., witness=PATH)``). Two kinds of place:

* a file (another mount, a synced folder, the user's own state folder, see ``anchor``):
  one JSON line ``{"note": "<signed note>"}`` per head, appended under ``flock`` and
  fsynced;
* a command, run with the signed note (C2SP format) on stdin: ``logger``, ``curl`` to a
  witness service, ``ssh host 'cat >> heads'``. A non-zero exit is a failure.

Failures are returned, not raised: the ledger records them as events (a training job
must not die because a witness host is down), and ``verify`` without the head on the
witness reports nothing wrong with the ledger itself.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["Witness", "append_json_line"]

TIMEOUT_S = 30.0


class Witness:
    def __init__(self, path: Path | str | None, command: Sequence[str] | None) -> None:
        self.paths = [Path(path)] if path is not None else []
        self.command = list(command) if command else None

    @property
    def path(self) -> Path | None:
        return self.paths[0] if self.paths else None

    @property
    def configured(self) -> bool:
        return bool(self.paths) or self.command is not None

    def add(self, path: Path) -> None:
        if path not in self.paths:
            self.paths.append(path)

    def send(self, text: str) -> list[str]:
        """Deliver one signed note everywhere; returns what failed, in words."""
        failures = []
        for path in self.paths:
            try:
                append_json_line(path, {"note": text})
            except OSError as exc:
                failures.append(f"witness file {path}: {exc}")
        if self.command:
            failures.extend(_run(self.command, text))
        return failures


def append_json_line(path: Path, obj: dict[str, Any], mode: int = 0o644) -> None:
    """One line, whole: under ``flock`` so two supervisors sharing the file never
    interleave (``O_APPEND`` alone is not enough on NFS), fsynced before returning."""
    data = (json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _run(command: Sequence[str], text: str) -> list[str]:
    try:
        done = subprocess.run(
            list(command), input=text.encode(), capture_output=True, timeout=TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [f"witness command {command[0]!r}: {exc}"]
    if done.returncode != 0:
        err = done.stderr.decode(errors="replace").strip()[-300:]
        return [f"witness command {command[0]!r} exited {done.returncode}: {err}"]
    return []
