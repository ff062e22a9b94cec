"""Reading records back, for ``ledger show`` and ``Ledger.records``.

A row that no longer parses is shown as a ``ledger.tampered`` alert in its place rather
than skipped: a reader must never see a quietly shorter history.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from typing import Any

from trainguard.errors import VerificationError
from trainguard.findings import Rule
from trainguard.ledger.record import Record
from trainguard.ledger.store import DB_NAME, Where, blob, connect_readonly, describe, location
from trainguard.ledger.tree import EMPTY_ROOT

__all__ = ["default_path", "parse_rows", "read_records", "root_at", "show"]


def default_path(path: str | os.PathLike[str] | None = None) -> Where:
    """The ledger: ``path``, else ``$TRAINGUARD_LEDGER``, else ``./trainguard-ledger``; a
    folder, or a ``postgresql://`` URL kept as it is."""
    if path is not None:
        return location(path)
    return location(os.environ.get("TRAINGUARD_LEDGER") or "trainguard-ledger")


def parse_rows(rows: Iterable[tuple[int, bytes]], alert: str | Rule | None = None) -> list[Record]:
    wanted = None if alert is None else str(alert)
    out = []
    for seq, body in rows:
        try:
            rec = Record.from_leaf(blob(body))
        except ValueError as exc:
            rec = Record(
                kind="alert",
                alert=Rule.LEDGER_TAMPERED.value,
                severity="critical",
                message=f"record {seq} is unreadable: {exc}",
                evidence={"stored": blob(body)[:200].decode("utf-8", "backslashreplace")},
                seq=seq,
            )
        if wanted is None or rec.alert == wanted:
            out.append(rec)
    return out


def read_records(path: str | os.PathLike[str], alert: str | Rule | None = None) -> list[Record]:
    """Every record of the ledger folder ``path`` (optionally one alert id), in seq order."""
    directory = location(path)
    try:
        conn = connect_readonly(directory)
    except (FileNotFoundError, sqlite3.Error) as exc:
        where = describe(directory)
        raise VerificationError(f"no readable ledger at {where} ({DB_NAME}): {exc}") from None
    try:
        rows = conn.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    except sqlite3.Error as exc:
        raise VerificationError(f"the ledger {describe(directory)} cannot be read: {exc}") from None
    finally:
        conn.close()
    return parse_rows(rows, alert)


def root_at(path: str | os.PathLike[str], size: int) -> tuple[str, str | None]:
    """``(origin, root)``: the ledger's origin, and its Merkle root (hex) once it held
    ``size`` records as stored (``None`` when it never had that many). What a checkpoint
    signed at that position is checked against; ``verify`` judges the stored roots."""
    directory = location(path)
    try:
        conn = connect_readonly(directory)
    except (FileNotFoundError, sqlite3.Error) as exc:
        raise VerificationError(f"no readable ledger at {describe(directory)}: {exc}") from None
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'origin'").fetchone()
        origin = str(row[0]) if row else ""
        if size == 0:
            return origin, EMPTY_ROOT.hex()
        found = conn.execute("SELECT root FROM records WHERE seq = ?", (size,)).fetchone()
    except sqlite3.Error as exc:
        raise VerificationError(f"the ledger {describe(directory)} cannot be read: {exc}") from None
    finally:
        conn.close()
    return origin, blob(found[0]).hex() if found else None


def show(
    path: str | os.PathLike[str],
    *,
    alert: str | Rule | None = None,
    public_key: Any = None,
    witness: str | os.PathLike[str] | None = None,
    **checks: Any,
) -> dict[str, Any]:
    """The document ``trainguard ledger show --format json`` prints:
    ``{"records": [...], "verified": bool}``, verified over the whole ledger (``checks``:
    the further arguments of ``verify``: ``witness_dir``, ``origin``, ``expect_heads``)."""
    from trainguard.ledger.verify import verify

    result = verify(path, public_key=public_key, witness=witness, **checks)
    return {
        "records": [r.to_json() for r in read_records(path, alert)],
        "verified": result.intact,
    }
