"""Helpers for the ledger tests: raw database access and a writer subprocess."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from trainguard.findings import Finding

WRITER = str(Path(__file__).with_name("writer.py"))


def db(path: Path) -> sqlite3.Connection:
    """A raw connection, as an attacker with write access to the folder has."""
    return sqlite3.connect(path / "ledger.sqlite3", isolation_level=None)


def writer(path: Path, *args: str) -> subprocess.Popen[str]:
    """``writer.py`` appending to ``path``; it prints each acknowledged seq."""
    return subprocess.Popen(
        [sys.executable, WRITER, str(path), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def messages(findings: tuple[Finding, ...]) -> str:
    return "\n".join(f"{f.location.member}: {f.message}" for f in findings)
