"""``Ledger``: append records, sign heads, export heads to a witness.

Every append is one SQLite transaction that reads the tree state, assigns the next seq,
stores the record's canonical bytes with its leaf hash and the new root, and (every
``head_every`` records) signs a head, all under the database's write lock, so ranks
sharing a ledger can never fork its history. ``append`` returns only after the commit is
durable: what it returned is what a crash cannot take away.

Failures that are not the caller's fault are recorded rather than raised where raising
would stop a training job for the wrong reason: a head that cannot be signed or a
witness that cannot be reached becomes a record in the ledger itself.

Who signs: whoever holds the key. Under ``trainguard run`` that is the supervisor alone
(``run=``): the job's processes append through the same database with no key, and the
supervisor signs heads over the whole tree, theirs included (``head()``). A record is
therefore protected from the first head that covers it; until then (at most the
supervisor's head interval, or for good if the supervisor is killed first) it can be
rewritten by anyone who can write the folder without any check noticing.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from trainguard import keys
from trainguard.errors import ConfigError, IntegrityError
from trainguard.findings import Finding, Rule, Severity
from trainguard.ledger import note, store
from trainguard.ledger.anchor import WitnessDir
from trainguard.ledger.heading import HeadMaker
from trainguard.ledger.ratchet import Ratchet
from trainguard.ledger.record import Record, alert_record, event_record
from trainguard.ledger.runs import ORIGIN_EVENT, RunOrigin
from trainguard.ledger.setup import open_meta, resolve_key
from trainguard.ledger.store import blob
from trainguard.ledger.tree import Frontier, leaf_hash
from trainguard.ledger.witness import Witness

__all__ = ["Ledger"]


class Ledger:
    """An append-only, tamper-evident log in the folder ``path`` (or the PostgreSQL
    database a ``postgresql://`` URL names: ``trainguard.ledger.pg``).

    ``key`` (an Ed25519 private key or the path of its PEM) signs a head every
    ``head_every`` appends and on ``close``. With ``ratchet=True`` the signing key moves
    forward at each head (see ``trainguard.ledger.ratchet``); ``key`` is then only the
    epoch-0 key, and without one a fresh epoch-0 key is made (its public half is
    ``first_public_key``: keep a copy elsewhere). ``witness`` (a file) and
    ``witness_command`` (run with the head on stdin) receive every head as it is made.

    ``run`` (a ``RunOrigin``) opens the ledger as that run's supervisor: ``key`` is then
    the run's own key (or the admin's fixed key, ``run.key_mode == "key"``), the run's
    ``run.origin`` record is appended at once, and every head names it. ``witness_dir``
    (an ``anchor.WitnessDir``) is told about the run and receives every head. The job's
    processes open the same folder with no key at all and only append: heads over what
    they appended are the supervisor's to sign (``head()``, periodically and at close).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        key: keys.PrivateKey | str | os.PathLike[str] | None = None,
        rank: int | None = None,
        ratchet: bool = False,
        head_every: int = 1000,
        witness: Path | str | None = None,
        witness_command: Sequence[str] | None = None,
        journal: str | None = None,
        run: RunOrigin | None = None,
        witness_dir: WitnessDir | None = None,
    ) -> None:
        self.path = store.location(path)
        if ratchet and isinstance(self.path, str):
            raise ConfigError("ratchet=True keeps key files in a ledger folder; not for PostgreSQL")
        self.rank = rank if rank is not None else _env_rank()
        self.head_every = head_every
        self._witness = Witness(witness, witness_command)
        self._journal = journal
        self._host, self._uid = socket.gethostname(), _uid()
        self._pid = os.getpid()
        ratcheted = Ratchet(self.path) if ratchet and isinstance(self.path, Path) else None
        self._heads = HeadMaker(resolve_key(key), ratcheted)
        self._store = store.acquire(self.path, journal)
        self._closed = False
        self._reported: set[str] = set()
        self.witness_errors: list[str] = []
        """Each distinct failure to reach a witness, in words (also in the ledger)."""
        self.run: RunOrigin | None = None
        try:
            self.origin, self.first_public_key = open_meta(
                self._store,
                self._heads.key,
                self._heads.ratchet,
                run=run is not None and run.key_mode == "run",
            )
            self._check_tip()
            if witness_dir is not None:
                with contextlib.suppress(OSError):  # a failure shows at the first head
                    witness_dir.ensure()
                self._witness.add(witness_dir.heads_file(self.origin))
            if run is not None:
                self._start_run(run, witness_dir)
        except BaseException:
            self._closed = True
            store.release(self._store)
            raise

    @property
    def signing(self) -> bool:
        return self._heads.signing

    def _start_run(self, run: RunOrigin, witness_dir: WitnessDir | None) -> None:
        """Announce the run to the witness, then append its origin record; every later
        head of this process names that record."""
        where = self.path if isinstance(self.path, str) else os.path.realpath(self.path)
        self.run = replace(run, ledger=store.describe(where))
        failed = None
        if witness_dir is not None:
            try:
                witness_dir.announce(self.run, self.origin)
            except OSError as exc:
                failed = f"witness index {witness_dir.index}: {exc}"
        rec = self.append_event(ORIGIN_EVENT, evidence=self.run.evidence(self.origin))
        self._heads.binding = note.RunBinding(self.run.run, rec.seq, leaf_hash(rec.leaf()))
        if failed is not None:
            self._witness_failed(failed, None)

    # -- appending -------------------------------------------------------------------

    def append_event(
        self,
        message: str,
        *,
        step: int | None = None,
        evidence: Mapping[str, Any] | None = None,
        severity: Severity | str = Severity.INFO,
        rank: int | None = None,
    ) -> Record:
        rec = event_record(message, step=step, rank=rank, severity=severity, evidence=evidence)
        return self.append(rec)

    def append_alert(
        self,
        finding_or_rule: Finding | Rule | str,
        *,
        message: str | None = None,
        severity: Severity | str | None = None,
        step: int | None = None,
        evidence: Mapping[str, Any] | None = None,
        rank: int | None = None,
    ) -> Record:
        rec = alert_record(
            finding_or_rule,
            message=message,
            severity=severity,
            step=step,
            rank=rank,
            evidence=evidence,
        )
        return self.append(rec)

    def append(self, record: Record) -> Record:
        """Commit ``record`` (its seq, time, host, pid and uid are assigned here) and
        return it as stored. Raises ``LedgerWriteError`` if it could not be committed."""
        stored, _ = self._commit(record, head=False)
        assert stored is not None
        return stored

    # -- heads -----------------------------------------------------------------------

    def sign_head(self) -> note.Checkpoint:
        """Sign a head over everything appended so far (needs a key or the ratchet)."""
        if not self.signing:
            raise ConfigError("this ledger has no signing key: pass key= or ratchet=True")
        _, head = self._commit(None, head=True)
        assert head is not None
        return head

    def head(self) -> note.Checkpoint | None:
        """A head over everything appended so far (by this process or any other), if
        some record is not covered yet and this ledger makes heads; else ``None``. How a
        supervisor signs what its job's processes appended without a key."""
        self._check_open()
        if not self._heads_wanted() or not self._uncovered():
            return None
        _, made = self._commit(None, head=True)
        return made

    def _uncovered(self) -> bool:
        with self._store.lock:
            row = self._store.conn.execute(
                "SELECT (SELECT size FROM state), (SELECT max(size) FROM heads)"
            ).fetchone()
        return bool(row[0] > (row[1] or 0))

    def _commit(
        self, record: Record | None, *, head: bool
    ) -> tuple[Record | None, note.Checkpoint | None]:
        """One transaction: the record (if any), then a head if asked or due."""
        self._check_open()
        stored = made = None
        problem: Exception | None = None
        what = f"the {record.kind} {record.message[:60]!r}" if record else "a signed head"
        with contextlib.ExitStack() as held:
            advance: Callable[[], object] | None = None
            with self._store.transaction(what) as c:
                size, data = c.execute("SELECT size, frontier FROM state WHERE id = 1").fetchone()
                tree = Frontier.from_bytes(size, data)
                if record is not None:
                    stored = self._insert(c, tree, record)
                    head = self.head_every > 0 and tree.size % self.head_every == 0
                    head = head and self._heads_wanted()
                if head:
                    try:
                        made, advance = self._heads.make(
                            c, held, self.origin, tree.size, tree.root()
                        )
                    except (ConfigError, IntegrityError) as exc:
                        if record is None:
                            raise
                        problem = exc
            if advance is not None:
                advance()  # only once the head is committed, still under the ratchet lock
        if stored is not None:
            self._store.bump_tip(stored.seq)
        if made is not None:
            self._publish(made)
        if problem is not None:
            self._head_problem(problem)
        return stored, made

    def _insert(self, c: Any, tree: Frontier, record: Record) -> Record:
        stored = replace(
            record,
            seq=tree.size + 1,
            time=_now(),
            host=self._host,
            pid=os.getpid(),
            uid=self._uid,
            rank=record.rank if record.rank is not None else self.rank,
        )
        body = stored.leaf()
        leaf = leaf_hash(body)
        tree.push(leaf)
        c.execute("INSERT INTO records VALUES (?, ?, ?, ?)", (stored.seq, body, leaf, tree.root()))
        c.execute(
            "UPDATE state SET size = ?, frontier = ? WHERE id = 1", (tree.size, tree.to_bytes())
        )
        return stored

    def _heads_wanted(self) -> bool:
        return self.signing or self._witness.configured

    def _publish(self, head: note.Checkpoint) -> None:
        """Send the head to the witness; a failure is recorded, never raised."""
        for text in self._witness.send(head.text):
            self._witness_failed(text, head.size)

    def _witness_failed(self, text: str, size: int | None) -> None:
        """Recorded once per distinct failure: a witness that stays down must not add a
        record per head (each of which would need another head, and so on)."""
        if text in self._reported:
            return
        self._reported.add(text)
        self.witness_errors.append(text)
        what = f"a signed head (size {size})" if size is not None else "the run"
        self.append_event(
            f"{what} could not be exported to the witness: {text}",
            severity=Severity.MEDIUM,
            evidence={"tree_size": size, "error": text},
        )

    def _head_problem(self, exc: Exception) -> None:
        self.append_alert(
            Rule.LEDGER_TAMPERED,
            message=f"a periodic head could not be signed: {exc}",
            evidence={"error": str(exc)},
        )

    def _check_tip(self) -> None:
        """A committed tail that vanished (torn or truncated WAL) is recorded, not
        papered over: the next seq would otherwise reuse numbers already acknowledged."""
        tip = store.read_tip(self.path)
        with self._store.lock:
            size = self._store.conn.execute("SELECT size FROM state").fetchone()[0]
        if tip > size:
            rec = self.append_alert(
                Rule.LEDGER_TAMPERED,
                severity=Severity.CRITICAL,
                message=f"records {size + 1}..{tip} were acknowledged but are gone "
                "(a torn or truncated write, or deletion)",
                evidence={"acknowledged_up_to": tip, "records_found": size},
            )
            self._store.bump_tip(rec.seq, lower=True)  # recorded now: said once

    def position(self) -> dict[str, Any]:
        """Where the ledger stands now: ``{"origin", "size", "root"}`` (the Merkle root
        over the first ``size`` records, hex), what a signed checkpoint carries."""
        self._check_open()
        with self._store.lock:
            size, data = self._store.conn.execute(
                "SELECT size, frontier FROM state WHERE id = 1"
            ).fetchone()
        root = Frontier.from_bytes(int(size), blob(data)).root()
        return {"origin": self.origin, "size": int(size), "root": root.hex()}

    # -- reading and closing ---------------------------------------------------------

    def records(self, alert: str | Rule | None = None) -> list[Record]:
        from trainguard.ledger.reading import parse_rows

        with self._store.lock:
            rows = self._store.conn.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
        return parse_rows(rows, alert)

    def close(self) -> None:
        """Sign a last head if anything is unsigned, then let go of the connection."""
        if self._closed or os.getpid() != self._pid:
            return
        try:
            if self._heads_wanted() and self._uncovered():
                try:
                    self._commit(None, head=True)
                except (ConfigError, IntegrityError) as exc:
                    self._head_problem(exc)
        finally:
            self._closed = True
            store.release(self._store)

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError(f"the ledger {store.describe(self.path)} is closed")
        if os.getpid() != self._pid:  # forked: never use the parent's connection
            self._pid = os.getpid()
            self._store = store.acquire(self.path, self._journal)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _now() -> str:
    now = datetime.datetime.now(datetime.UTC)
    return now.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _uid() -> int | None:
    getuid: Callable[[], int] | None = getattr(os, "getuid", None)
    return getuid() if getuid else None


def _env_rank() -> int | None:
    text = os.environ.get("RANK", "")
    return int(text) if text.isdigit() else None
