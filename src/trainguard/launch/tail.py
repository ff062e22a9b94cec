"""Following the ledger while the job runs: every new alert of this run, in order.

The ledger folder may be shared with other runs; a record belongs to this run when it was
written on this host by the launcher or by a process of the job (a pid the heartbeat
folder knows, or one whose parent chain leads to the launcher).
"""

from __future__ import annotations

import os
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

from trainguard.findings import Rule
from trainguard.launch import procs
from trainguard.ledger.reading import parse_rows
from trainguard.ledger.record import Record
from trainguard.ledger.store import connect_readonly

__all__ = ["LedgerTail", "descends_from"]


def descends_from(pid: int, ancestor: int, limit: int = 64) -> bool:
    for _ in range(limit):
        if pid == ancestor:
            return True
        info = procs.proc_info(pid)
        if info is None or info.ppid <= 1:
            return pid == ancestor
        pid = info.ppid
    return False


class LedgerTail:
    """``poll()`` returns this run's records appended since the last call."""

    def __init__(self, path: Path | str, known: Callable[[int], bool]) -> None:
        self.path = path
        self.known = known
        self.host = socket.gethostname()
        self.me = os.getpid()
        self.last_seq = 0
        self._conn: sqlite3.Connection | None = None
        self._members: dict[int, bool] = {}

    def start(self) -> None:
        """Skip what was there before the run."""
        rows = self._query("SELECT seq, body FROM records ORDER BY seq DESC LIMIT 1", ())
        self.last_seq = rows[0][0] if rows else 0

    def poll(self) -> list[Record]:
        rows = self._query(
            "SELECT seq, body FROM records WHERE seq > ? ORDER BY seq", (self.last_seq,)
        )
        if not rows:
            return []
        self.last_seq = int(rows[-1][0])
        return [r for r in parse_rows(rows) if self._ours(r)]

    def _ours(self, record: Record) -> bool:
        if record.alert == Rule.LEDGER_TAMPERED.value:
            return True  # an unreadable row names no writer: never hide it
        if record.host and record.host != self.host:
            return False
        pid = record.pid
        if pid == self.me or self.known(pid):
            return True
        if pid not in self._members:
            self._members[pid] = descends_from(pid, self.me)
        return self._members[pid]

    def _query(self, sql: str, args: tuple[int, ...]) -> list[tuple[int, bytes]]:
        try:
            if self._conn is None:
                self._conn = connect_readonly(self.path)
            return [(int(a), b) for a, b in self._conn.execute(sql, args).fetchall()]
        except (sqlite3.Error, FileNotFoundError, OSError):
            self.close()
            return []

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
