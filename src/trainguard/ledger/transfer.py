"""JSONL export and import, for shipping a ledger off the machine that wrote it.

::

    {"type":"trainguard.ledger","version":"1","origin":...,"mode":...,"first_key":...,"tip":N}
    {"type":"record","seq":1,"body":"<the stored canonical JSON, as text>","leaf":hex,"root":hex}
    ...
    {"type":"head","note":"<the signed note>"}

Records travel as their exact stored bytes (not re-serialised), with the stored hashes,
so the imported copy is byte-for-byte what was verified and verifies (or fails) exactly
as the original would. The file needs no key to be checked: heads carry their own
signatures and, with the ratchet, the chain of next keys.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import IO, Any

from trainguard.errors import ConfigError, VerificationError
from trainguard.ledger.setup import FORMAT
from trainguard.ledger.store import DB_NAME, Store, blob, bump_tip, connect_readonly, read_tip
from trainguard.ledger.tree import Frontier

__all__ = ["export_jsonl", "import_jsonl"]

_META_KEYS = ("format", "version", "origin", "mode", "first_key")


def export_jsonl(path: str | os.PathLike[str], out: str | os.PathLike[str] | IO[str]) -> int:
    """Write the ledger folder ``path`` to ``out`` (a path or a text stream) as one
    snapshot; returns the number of records written."""
    directory = Path(path)
    tip = read_tip(directory)
    try:
        conn = connect_readonly(directory)
    except (FileNotFoundError, sqlite3.Error) as exc:
        raise VerificationError(f"no readable ledger at {directory}: {exc}") from None
    if isinstance(out, str | os.PathLike):
        with open(out, "w", encoding="utf-8") as f:
            return _export(conn, f, tip)
    return _export(conn, out, tip)


def _export(conn: sqlite3.Connection, f: IO[str], tip: int) -> int:
    n = 0
    try:
        conn.execute("BEGIN")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        header = {"type": FORMAT, "tip": tip, **{k: meta.get(k, "") for k in _META_KEYS}}
        del header["format"]
        _line(f, header)
        for seq, body, leaf, root in conn.execute(
            "SELECT seq, body, leaf, root FROM records ORDER BY seq"
        ):
            text = blob(body).decode("utf-8", "surrogateescape")
            _line(
                f,
                {
                    "type": "record",
                    "seq": seq,
                    "body": text,
                    "leaf": blob(leaf).hex(),
                    "root": blob(root).hex(),
                },
            )
            n += 1
        for (text,) in conn.execute("SELECT note FROM heads ORDER BY id"):
            _line(f, {"type": "head", "note": text})
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise VerificationError(f"the ledger cannot be read to the end: {exc}") from None
    finally:
        conn.close()
    return n


def _line(f: IO[str], obj: dict[str, Any]) -> None:
    f.write(json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n")


def import_jsonl(src: str | os.PathLike[str], ledger_path: str | os.PathLike[str]) -> int:
    """Load an export into a new, empty ledger folder; returns the record count.
    Malformed lines raise ``VerificationError``: tampered content is imported as it is
    and left for ``verify`` to report."""
    target = Path(ledger_path)
    if (target / DB_NAME).exists():
        raise ConfigError(f"{target} already holds a ledger: import into a new folder")
    try:
        lines = Path(src).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VerificationError(f"cannot read {src}: {exc}") from None
    if not lines:
        raise VerificationError(f"{src} is empty")
    header = _parse(lines[0], 1)
    if header.get("type") != FORMAT:
        raise VerificationError(f"{src} is not a trainguard ledger export")
    st = Store(target)
    try:
        n, last = _import(st, header, lines, str(src))
    finally:
        st.close()
    bump_tip(target, max(int(header.get("tip") or 0), last))
    return n


def _import(st: Store, header: dict[str, Any], lines: list[str], src: str) -> tuple[int, int]:
    tree = Frontier()
    n = last = 0
    with st.transaction("the import") as c:
        meta = {k: str(header.get(k, "")) for k in _META_KEYS if k != "format"}
        c.executemany("INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), *meta.items()])
        for i, line in enumerate(lines[1:], 2):
            if not line.strip():
                continue
            obj = _parse(line, i)
            try:
                if obj["type"] == "record":
                    body = str(obj["body"]).encode("utf-8", "surrogateescape")
                    leaf = bytes.fromhex(obj["leaf"])
                    row = (int(obj["seq"]), body, leaf, bytes.fromhex(obj["root"]))
                    c.execute("INSERT INTO records VALUES (?, ?, ?, ?)", row)
                    tree.push(leaf)
                    n, last = n + 1, max(last, row[0])
                elif obj["type"] == "head":
                    size = int(str(obj["note"]).split("\n")[1])
                    c.execute("INSERT INTO heads (size, note) VALUES (?, ?)", (size, obj["note"]))
                else:
                    raise ValueError(f"unknown line type {obj['type']!r}")
            except (KeyError, ValueError, TypeError, IndexError, sqlite3.IntegrityError) as exc:
                raise VerificationError(f"{src} line {i}: {exc}") from None
        c.execute(
            "UPDATE state SET size = ?, frontier = ? WHERE id = 1", (tree.size, tree.to_bytes())
        )
    return n, last


def _parse(line: str, n: int) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except ValueError as exc:
        raise VerificationError(f"line {n} is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise VerificationError(f"line {n} is not a JSON object")
    return obj
