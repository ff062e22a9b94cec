"""Sending each head to a second place as it is made.

Whoever controls the machine can rewrite the ledger, its heads, even (without the
ratchet) re-sign them; a copy of every head held somewhere they cannot write makes such
a rewrite disagree with the copy (``verify(..., witness=PATH)``). Two kinds of place:

* a file (another mount, a synced folder): one JSON line ``{"note": "<signed note>"}``
  per head, appended and fsynced;
* a command, run with the signed note (C2SP format) on stdin: ``logger``, ``curl`` to a
  witness service, ``ssh host 'cat >> heads'``. A non-zero exit is a failure.

Failures are returned, not raised: the ledger records them as events (a training job
must not die because a witness host is down), and ``verify`` without the head on the
witness reports nothing wrong with the ledger itself.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Witness"]

TIMEOUT_S = 30.0


class Witness:
    def __init__(self, path: Path | str | None, command: Sequence[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self.command = list(command) if command else None

    @property
    def configured(self) -> bool:
        return self.path is not None or self.command is not None

    def send(self, text: str) -> list[str]:
        """Deliver one signed note everywhere; returns what failed, in words."""
        failures = []
        if self.path is not None:
            try:
                _append_line(self.path, text)
            except OSError as exc:
                failures.append(f"witness file {self.path}: {exc}")
        if self.command:
            failures.extend(_run(self.command, text))
        return failures


def _append_line(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps({"note": text}) + "\n").encode())
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
