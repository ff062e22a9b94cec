"""The ledger on PostgreSQL: one tree shared by many jobs on many hosts.

SQLite on a network file system is the wrong tool when many hosts append to one ledger:
its locks do not hold there. ``--ledger postgresql://host/db?ledger=NAME`` (or the same
URL in ``$TRAINGUARD_LEDGER``) keeps the very same tables (``meta``, ``records``,
``state``, ``heads``) in the schema ``NAME`` (default ``trainguard``) of that database,
so appending, signing heads, verifying, exporting and reading work unchanged: the
ledger's modules talk to a ``PgConnection`` that speaks the few statements they use.

How appends stay one tree: every write transaction first takes a transaction-level
advisory lock named after the schema (``pg_advisory_xact_lock``), the equivalent of
SQLite's ``BEGIN IMMEDIATE``: it is held until ``COMMIT``, so two processes (on any
hosts) never read the same tree size and never assign the same seq. A commit returns
once the server has made it durable (``synchronous_commit`` is forced ``on`` for the
ledger's sessions). Readers use ``REPEATABLE READ READ ONLY`` transactions, one
consistent snapshot per verification.

What it trusts: the server to return what was committed. It is not trusted to keep the
history honest: anyone who can write the tables (the database's owner, a superuser) can
rewrite them exactly as anyone who can write a ledger folder can rewrite the SQLite file,
and verification finds it the same way (leaf hashes, the root chain, signed heads, the
run's origin and the witness outside the database). Give jobs a role that may only
``INSERT``/``UPDATE state`` and keep the signing key with the supervisor (the default of
``trainguard run``). ``ledger.tip`` (the SQLite store's high-water mark against a torn
tail) has no counterpart: a PostgreSQL commit that returned cannot be torn away, and a
deleted tail is found against the signed heads and the witness.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from typing import Any

from trainguard.errors import ConfigError, TrainguardError

__all__ = [
    "PgConnection",
    "PgError",
    "PgStore",
    "connect",
    "is_url",
    "redact",
]

_SCHEMES = ("postgresql://", "postgres://")
_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")
DEFAULT_NAME = "trainguard"
CONNECT_TIMEOUT_S = 30

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq BIGINT PRIMARY KEY, body BYTEA NOT NULL, leaf BYTEA NOT NULL, root BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS state (
    id INTEGER PRIMARY KEY CHECK (id = 1), size BIGINT NOT NULL, frontier BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS heads (
    id BIGSERIAL PRIMARY KEY, size BIGINT NOT NULL, note TEXT NOT NULL);
INSERT INTO state VALUES (1, 0, '\\x'::bytea) ON CONFLICT DO NOTHING
"""


class PgError(sqlite3.DatabaseError):
    """A PostgreSQL failure, raised as a ``sqlite3.DatabaseError`` so that the ledger's
    readers and writers handle both back ends on one path (a damaged or unreachable
    database is reported the same way)."""


def is_url(location: object) -> bool:
    """``location`` names a PostgreSQL ledger rather than a folder."""
    return isinstance(location, str) and location.startswith(_SCHEMES)


def split(url: str) -> tuple[str, str]:
    """``(libpq URL, schema name)``: the ``ledger=`` query parameter is ours, not libpq's."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    names = [v for k, v in query if k == "ledger"]
    name = names[-1] if names else DEFAULT_NAME
    if not _NAME.match(name):
        raise ConfigError(
            f"ledger name {name!r} in {redact(url)} must be lower-case letters, digits and _ "
            "(at most 63, not starting with a digit)"
        )
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "ledger"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), name


def redact(url: str) -> str:
    """The URL without its password, for messages, records and witness indexes."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    user = urllib.parse.quote(parts.username or "", safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError(
            "a PostgreSQL ledger needs psycopg: pip install 'trainguard[postgresql]'"
        ) from None
    return psycopg


class PgConnection:
    """The subset of ``sqlite3.Connection`` the ledger uses, on a psycopg connection in
    autocommit mode (transactions are the explicit ``BEGIN``/``COMMIT`` the ledger
    issues). ``?`` placeholders become ``%s``; ``BEGIN IMMEDIATE`` takes the ledger's
    advisory lock; ``BEGIN`` alone opens a read-only snapshot."""

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        psycopg = _driver()
        self._psycopg = psycopg
        libpq, self.name = split(url)
        self.url = redact(url)
        self.readonly = readonly
        try:
            self._conn = psycopg.connect(libpq, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
            self._conn.execute("SET synchronous_commit TO on")
        except psycopg.Error as exc:
            raise PgError(f"cannot connect to {self.url}: {_one_line(exc)}") from None

    @property
    def in_transaction(self) -> bool:
        status = self._conn.info.transaction_status
        return bool(status != self._psycopg.pq.TransactionStatus.IDLE)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        text = sql.strip()
        try:
            if text == "BEGIN IMMEDIATE":
                self._conn.execute("BEGIN")
                self._conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.name,))
                return self._conn.execute(f"SET LOCAL search_path TO {self.name}")
            if text == "BEGIN":
                self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                return self._conn.execute(f"SET LOCAL search_path TO {self.name}")
            return self._conn.execute(text.replace("?", "%s"), tuple(params))
        except self._psycopg.Error as exc:
            raise PgError(f"{self.url}: {_one_line(exc)}") from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            with self._conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), [tuple(r) for r in rows])
        except self._psycopg.Error as exc:
            raise PgError(f"{self.url}: {_one_line(exc)}") from None

    def close(self) -> None:
        with contextlib.suppress(self._psycopg.Error):
            self._conn.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def connect(url: str) -> PgConnection:
    """A reader: every ``BEGIN`` is a read-only snapshot. Raises ``FileNotFoundError``
    when the database holds no ledger of that name (as for a folder without one)."""
    conn = PgConnection(url, readonly=True)
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? "
        "AND table_name IN ('meta', 'records', 'state', 'heads')",
        (conn.name,),
    ).fetchone()
    if int(row[0]) != 4:
        conn.close()
        raise FileNotFoundError(f"no ledger {conn.name!r} in {conn.url}")
    conn.execute(f"SET search_path TO {conn.name}")
    return conn


class PgStore:
    """The writer connection of this process for one PostgreSQL ledger: the same surface
    as ``store.Store`` (``conn``, ``lock``, ``transaction``, ``bump_tip``, ``meta``)."""

    def __init__(self, url: str) -> None:
        from trainguard.ledger.store import LedgerWriteError as WriteError

        self._error = WriteError
        self.location = url
        self.lock = threading.RLock()
        try:
            self.conn = PgConnection(url)
            self.name = self.conn.name
            with self.transaction("the ledger schema") as c:
                c.execute(f"CREATE SCHEMA IF NOT EXISTS {self.name}")
                c.execute(f"SET LOCAL search_path TO {self.name}")
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        c.execute(statement)
            self.conn.execute(f"SET search_path TO {self.name}")
        except PgError as exc:
            raise WriteError(f"cannot open the ledger {redact(url)}: {exc}") from None

    @contextlib.contextmanager
    def transaction(self, what: str = "the record") -> Iterator[PgConnection]:
        """Locked ``BEGIN`` ... ``COMMIT``; returns only once the commit is durable."""
        with self.lock:
            try:
                self.conn.execute("BEGIN IMMEDIATE")
            except PgError as exc:
                raise self._fail(exc, what) from None
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except PgError as exc:
                self._rollback()
                raise self._fail(exc, what) from None
            except BaseException:
                self._rollback()
                raise

    def _fail(self, exc: Exception, what: str) -> TrainguardError:
        return self._error(
            f"cannot write the ledger {self.conn.url}: {exc}; {what} was NOT recorded "
            "(records acknowledged before are intact)"
        )

    def _rollback(self) -> None:
        if self.conn.in_transaction:
            with contextlib.suppress(PgError):
                self.conn.execute("ROLLBACK")

    def bump_tip(self, seq: int, *, lower: bool = False) -> None:
        """No high-water file: a returned PostgreSQL commit cannot be torn (module doc)."""
        return None

    def read_tip(self) -> int:
        return 0

    def meta(self) -> dict[str, str]:
        with self.lock:
            rows = self.conn.execute("SELECT key, value FROM meta").fetchall()
        return {str(k): str(v) for k, v in rows}

    def close(self) -> None:
        with self.lock:
            self.conn.close()
