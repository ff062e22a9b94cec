"""The ledger's storage: one SQLite database in the ledger folder (or PostgreSQL: ``pg``).

Why SQLite: a committed transaction survives a killed process and a power cut
(``synchronous=FULL``), several ranks on one host can append to the same file (the
write lock serialises them; ``BEGIN IMMEDIATE`` takes it before the sequence number is
read, so two writers never pick the same one), and readers see a consistent snapshot.
An append is acknowledged only after ``COMMIT`` returns.

WAL mode is fastest, but it needs shared memory that network file systems do not
provide; there (NFS, SMB, Lustre, GPFS, FUSE mounts, ...) the rollback journal is used.

Tables: ``records`` (seq, canonical JSON body, leaf hash, tree root after this record),
``state`` (tree size and Merkle frontier, so an append never reads old records),
``heads`` (signed notes) and ``meta`` (origin, key mode). ``ledger.tip`` next to the
database holds the highest seq ever acknowledged; it is written after each commit, so a
lost committed tail (a torn or truncated WAL) shows up as a tip beyond the last record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from trainguard.errors import ConfigError, TrainguardError
from trainguard.ledger import pg

__all__ = [
    "DB_NAME",
    "LedgerWriteError",
    "Store",
    "acquire",
    "blob",
    "bump_tip",
    "connect_readonly",
    "describe",
    "location",
    "network_fs_type",
    "read_tip",
    "release",
]

DB_NAME = "ledger.sqlite3"
TIP_NAME = "ledger.tip"
BUSY_TIMEOUT_S = 60.0
_NETWORK_FS = frozenset(
    "nfs nfs4 cifs smb smb2 smb3 smbfs ncpfs lustre gpfs ceph glusterfs 9p afs "
    "beegfs orangefs pvfs2 panfs wekafs gfs2 ocfs2 davfs sshfs".split()
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY, body BLOB NOT NULL, leaf BLOB NOT NULL, root BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1), size INTEGER NOT NULL, frontier BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS heads (
    id INTEGER PRIMARY KEY, size INTEGER NOT NULL, note TEXT NOT NULL);
INSERT OR IGNORE INTO state VALUES (1, 0, x'');
"""


class LedgerWriteError(TrainguardError):
    """A record could not be committed (disk full, locked, unwritable). The record was
    not acknowledged; everything acknowledged before is still in the ledger."""


def network_fs_type(path: Path, mounts: str = "/proc/self/mounts") -> str | None:
    """The file-system type of ``path`` if it is a network or FUSE mount, else None."""
    try:
        text = Path(mounts).read_text()
    except OSError:
        return None  # not Linux: assume local
    target = os.path.realpath(path)
    best, best_type = "", ""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, best_type = mnt, parts[2]
    if best_type in _NETWORK_FS or best_type.startswith("fuse."):
        return best_type
    return None


def _sqlite_error(exc: sqlite3.Error, db: Path, what: str) -> LedgerWriteError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == 13 or "disk is full" in str(exc):  # SQLITE_FULL
        text = f"the disk holding the ledger {db} is full: {what} was NOT recorded"
    elif code in (5, 6):  # SQLITE_BUSY / SQLITE_LOCKED
        text = f"the ledger {db} stayed locked for {BUSY_TIMEOUT_S:.0f} s: {what} was NOT recorded"
    else:
        text = f"cannot write the ledger {db}: {exc}; {what} was NOT recorded"
    return LedgerWriteError(text + " (records acknowledged before are intact)")


class Store:
    """The writer connection of this process for one ledger folder."""

    def __init__(self, directory: Path, *, journal: str | None = None) -> None:
        self.directory = directory
        self.location: Where = directory
        self.db = directory / DB_NAME
        self.fs_type = network_fs_type(directory)
        self.journal = journal or ("delete" if self.fs_type else "wal")
        if self.journal not in ("wal", "delete", "truncate", "persist"):
            raise ConfigError(f"unknown journal mode {self.journal!r} (wal or delete)")
        self.lock = threading.RLock()
        self._tip_fd: int | None = None
        try:
            directory.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                self.db, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            self.journal = self._journal_mode(self.journal)
            self.conn.execute("PRAGMA synchronous=FULL")
            with self.transaction("the ledger schema"):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
        except sqlite3.Error as exc:
            raise _sqlite_error(exc, self.db, "the ledger schema") from exc
        except OSError as exc:
            raise LedgerWriteError(f"cannot create the ledger {directory}: {exc}") from exc

    def _journal_mode(self, mode: str) -> str:
        """Set the journal mode, waiting out other processes. Changing it needs the file
        to itself, and SQLite answers "locked" at once instead of calling the busy
        handler, so two ranks creating one new ledger together would otherwise fail."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        delay = 0.005
        while True:
            try:
                (got,) = self.conn.execute(f"PRAGMA journal_mode={mode}").fetchone()
                return str(got)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    @contextlib.contextmanager
    def transaction(self, what: str = "the record") -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; returns only once the commit is durable."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise _sqlite_error(exc, self.db, what) from exc
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise _sqlite_error(exc, self.db, what) from exc
            except BaseException:
                self._rollback()
                raise

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def bump_tip(self, seq: int, *, lower: bool = False) -> None:
        """``bump_tip`` through this connection's own open ``ledger.tip``."""
        with self.lock:
            if self._tip_fd is None:
                self._tip_fd = os.open(self.directory / TIP_NAME, os.O_RDWR | os.O_CREAT, 0o644)
            bump_tip(self.directory, seq, lower=lower, fd=self._tip_fd)

    def read_tip(self) -> int:
        return read_tip(self.directory)

    def meta(self) -> dict[str, str]:
        with self.lock:
            return dict(self.conn.execute("SELECT key, value FROM meta").fetchall())

    def close(self) -> None:
        with self.lock:
            self.conn.close()
            if self._tip_fd is not None:
                os.close(self._tip_fd)
                self._tip_fd = None


_SHARED: dict[tuple[int, str], tuple[Store, int]] = {}
_SHARED_LOCK = threading.Lock()


Where = Path | str
"""A ledger folder, or a ``postgresql://`` URL (``trainguard.ledger.pg``)."""


def location(value: str | os.PathLike[str]) -> Where:
    """``value`` as the ledger modules take it: a PostgreSQL URL stays a string, anything
    else is a folder path."""
    return value if pg.is_url(value) else Path(value)  # type: ignore[return-value]


def describe(where: Where) -> str:
    """``where`` for messages and records (a URL without its password)."""
    return pg.redact(where) if isinstance(where, str) else str(where)


def _key(where: Where) -> tuple[int, str]:
    return os.getpid(), where if isinstance(where, str) else os.path.realpath(where)


def acquire(directory: Where, journal: str | None = None) -> Store:
    """This process's one writer connection to ``directory`` (shared by every ``Ledger``
    on it, so the guard, the callbacks and checkpoint saving do not contend with each
    other). Keyed by pid: a connection is never used across ``fork``. A PostgreSQL URL
    gets a ``pg.PgStore``, which has the same surface."""
    key = _key(directory)
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is not None:
            store, count = found
        elif isinstance(directory, str):
            store, count = pg.PgStore(directory), 0  # type: ignore[assignment]
        else:
            store, count = Store(directory, journal=journal), 0
        _SHARED[key] = (store, count + 1)
        return store


def release(store: Store) -> None:
    key = _key(store.location)
    with _SHARED_LOCK:
        entry = _SHARED.get(key)
        if entry is None or entry[0] is not store:
            return  # inherited over fork: the parent owns it; never close it here
        if entry[1] > 1:
            _SHARED[key] = (store, entry[1] - 1)
            return
        del _SHARED[key]
    store.close()


def connect_readonly(directory: Where) -> sqlite3.Connection:
    """A reader that never writes: verifying must not checkpoint the WAL away (it is
    evidence) and must work for a user who cannot write the folder. For a PostgreSQL
    URL, a ``pg.PgConnection`` whose transactions are read-only snapshots."""
    if isinstance(directory, str):
        return pg.connect(directory)  # type: ignore[return-value]
    db = directory / DB_NAME
    if not db.is_file():
        raise FileNotFoundError(db)
    uri = "file:" + str(db.resolve()).replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.text_factory = str
    return conn


def blob(value: object) -> bytes:
    """A stored column as bytes, whatever type an edit left in it (SQLite columns are
    loosely typed: ``replace()`` on a BLOB returns TEXT, an attacker may store NULL)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return b"" if value is None else str(value).encode()


def bump_tip(directory: Path, seq: int, *, lower: bool = False, fd: int | None = None) -> None:
    """Raise the acknowledged high-water mark to ``seq`` (never lower it, unless the
    loss it showed has just been recorded in the ledger). Not fsynced: it only has to
    survive a torn database tail, not a power cut. ``fd``: an open ``ledger.tip``."""
    own = fd is None
    if fd is None:
        fd = os.open(directory / TIP_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            current = _parse_tip(os.pread(fd, 32, 0))
            if seq > current or lower:
                os.pwrite(fd, f"{seq:020d}\n".encode(), 0)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        if own:
            os.close(fd)


def read_tip(directory: Where) -> int:
    if isinstance(directory, str):
        return 0  # PostgreSQL: no high-water file (trainguard.ledger.pg)
    try:
        return _parse_tip((directory / TIP_NAME).read_bytes()[:32])
    except OSError:
        return 0


def _parse_tip(data: bytes) -> int:
    text = data.strip()
    return int(text) if text.isdigit() else 0
