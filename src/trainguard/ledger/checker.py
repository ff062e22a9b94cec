"""The checks behind ``verify``, in the order they run: one read snapshot of the
database, a single pass over the records that recomputes every leaf, the per-record
roots and the root at every head size (and collects the runs' origin records), then the
tail, the heads, the key chain, and the ledger against its header, its runs and the
witness (``runcheck``).

After the first structural break (a gap, an unreadable or moved record, a broken root)
every later per-record root differs too; only the first is reported, so a finding
names where the damage is, not everything downstream of it. Edited records are each
reported, since each is a separate act.
"""

from __future__ import annotations

import base64
import binascii
import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainguard.errors import VerificationError
from trainguard.findings import Finding, Location, Rule, Severity
from trainguard.ledger import heads as headmod
from trainguard.ledger import runcheck
from trainguard.ledger.anchor import IndexEntry, WitnessDir
from trainguard.ledger.ratchet import read_public_state
from trainguard.ledger.record import Record
from trainguard.ledger.runs import ORIGIN_EVENT, RunInfo, run_info
from trainguard.ledger.store import DB_NAME, Where, blob, connect_readonly, describe, read_tip
from trainguard.ledger.tree import EMPTY_ROOT, Frontier, leaf_hash

__all__ = ["Checker"]

STATE_WITNESS = "state witness"


class Checker:
    """One verification run over one ledger folder; collects findings and notes."""

    def __init__(
        self,
        path: Where,
        anchor: bytes | None,
        witness: Path | None,
        *,
        witness_dir: WitnessDir | None = None,
        origin: str | None = None,
        expected: Sequence[headmod.HeadRef] = (),
    ) -> None:
        self.path, self.anchor, self.witness = path, anchor, witness
        self.witness_dir, self.origin, self.expected = witness_dir, origin, list(expected)
        self.db = describe(path) if isinstance(path, str) else str(path / DB_NAME)
        self.findings: list[Finding] = []
        self.notes: list[str] = []
        self.runs: dict[str, RunInfo] = {}
        self.anchors: list[str] = []
        """What outside the folder the ledger was checked against, in words."""
        self.entries: list[IndexEntry] = []
        self.home = True
        """The witness saw this ledger written here, or nowhere: a copy kept elsewhere
        may be older than what the witness holds, and that is said, not alleged."""

    def tampered(self, message: str, where: str, evidence: dict[str, Any]) -> None:
        self.findings.append(
            Finding(
                Rule.LEDGER_TAMPERED,
                Severity.CRITICAL,
                message,
                Location(self.db, member=where),
                evidence,
            )
        )

    def run(self) -> tuple[int, int, int, int]:
        """(records, ledger heads, heads verified, witness heads); findings accumulate."""
        tip = read_tip(self.path)  # before the snapshot: never ahead of what it sees
        try:
            conn = connect_readonly(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise VerificationError(f"cannot open the ledger {self.db}: {exc}") from None
        try:
            conn.execute("BEGIN")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            state = conn.execute("SELECT size, frontier FROM state WHERE id = 1").fetchone()
            head_rows = conn.execute("SELECT id, size, note FROM heads ORDER BY id").fetchall()
            origin = meta.get("origin", "")
            hs = headmod.ledger_heads(head_rows)
            ws, other = self._witness(origin)
            wanted = {h.checkpoint.size for h in hs + ws if h.checkpoint is not None}
            cursor = conn.execute("SELECT seq, body, leaf, root FROM records ORDER BY seq")
            count, last, roots = self._records(cursor, wanted)
            final = roots.pop(-1)
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            self.tampered(f"the ledger database is damaged: {exc}", "database", {})
            return 0, 0, 0, 0
        finally:
            conn.close()
        self._tail(state, count, last, tip, final)
        ws = self._away(ws, count)
        self._heads(meta, hs, ws, roots, count)
        if other:
            self.notes.append(f"{other} witness heads belong to other ledgers and were skipped")
        verified = self._signatures(meta, hs, ws, count)
        self._outside(meta, hs + ws)
        return count, len(hs), verified, len(ws) - len(self.expected)

    def _witness(self, origin: str) -> tuple[list[headmod.HeadRef], int]:
        """Heads held elsewhere: the witness file given, the user's witness folder, and
        the heads the person verifying brought."""
        out: list[headmod.HeadRef] = []
        other = 0
        if self.witness is not None:
            out, other = headmod.witness_heads(self.witness, origin)
            self.anchors.append(f"witness file {self.witness}")
        problem = self.witness_dir.trust_problem() if self.witness_dir else None
        if problem is not None:
            self.notes.append(f"{problem}: it was not used")
        elif self.witness_dir is not None:
            self.entries, unreadable = self.witness_dir.entries()
            self.notes.extend(unreadable)
            homes = {e.ledger for e in self.entries if e.origin == origin}
            self.home = not homes or os.path.realpath(self.path) in homes
            heads = self.witness_dir.heads_file(origin)
            if heads.is_file():
                found, _ = headmod.witness_heads(heads, origin, STATE_WITNESS)
                out += found
                self.anchors.append(f"{len(found)} heads in {heads}")
        if self.expected:
            self.anchors.append(f"{len(self.expected)} expected head(s)")
        return out + self.expected, other

    def _away(self, ws: list[headmod.HeadRef], count: int) -> list[headmod.HeadRef]:
        """Away from home, the state witness's heads past this copy's end are history the
        copy never had: said, and left out."""
        if self.home:
            return ws
        later = [h for h in ws if h.where.startswith(STATE_WITNESS) and _size(h) > count]
        if later:
            self.notes.append(
                f"the witness holds {len(later)} later head(s) of this ledger (up to size "
                f"{max(map(_size, later))}, this copy has {count}): an older copy of a ledger "
                "that lives elsewhere"
            )
        return [h for h in ws if h not in later]

    def _outside(self, meta: dict[str, str], heads: list[headmod.HeadRef]) -> None:
        origin = meta.get("origin", "")
        heads = [h for h in heads if h.checkpoint and h.checkpoint.origin == origin]
        runcheck.header(meta, heads, self.runs, self.tampered)
        runcheck.bindings(heads, self.runs, self.tampered)
        if self.entries:
            assert self.witness_dir is not None
            self.anchors.append(f"the witness index {self.witness_dir.index}")
            notes = runcheck.index(self.path, origin, self.runs, self.entries, self.tampered)
            self.notes.extend(notes)
        if self.origin is not None:
            runcheck.origin(self.origin, origin, self.runs, self.tampered)
            self.anchors.append(f"the origin {self.origin}")
        if self.runs and not self.anchors:
            self.notes.append(
                "nothing outside the ledger folder speaks for this ledger (no witness holds "
                "its heads: written on another machine or by another user, or the witness "
                "was off): a ledger swapped, rolled back or rewritten whole cannot be told "
                "from the folder alone; pass --witness, --origin or --expect-head"
            )

    def _records(self, cursor: Any, wanted: set[int]) -> tuple[int, int, dict[int, bytes]]:
        tree = Frontier()
        roots = {0: EMPTY_ROOT}
        expected, explained = 1, False
        for seq, raw_body, raw_leaf, raw_root in cursor:
            body, leaf, root = blob(raw_body), blob(raw_leaf), blob(raw_root)
            where = f"seq {seq}"
            if seq != expected:
                self.tampered(
                    f"records {expected}..{seq - 1} are missing: deleted",
                    f"seq {expected}",
                    {"first_missing": expected, "last_missing": seq - 1},
                )
                explained = True
            digest = leaf_hash(body)
            try:
                rec: Record | None = Record.from_leaf(body)
            except ValueError as exc:
                rec = None
                self.tampered(
                    f"record {seq} is not a readable record (a torn write or an edit): {exc}",
                    where,
                    {"stored": body[:200].decode("utf-8", "backslashreplace")},
                )
                explained = True
            if rec is not None and rec.seq != seq:
                self.tampered(
                    f"position {seq} holds record {rec.seq}: records were reordered or copied",
                    where,
                    {"position": seq, "record_seq": rec.seq},
                )
                explained = True
            elif rec is not None and digest != leaf:
                self.tampered(
                    f"record {seq} was changed after it was appended (its bytes no longer "
                    "match its hash)",
                    where,
                    {"stored_hash": leaf.hex(), "recomputed": digest.hex()},
                )
                explained = True
            tree.push(digest)
            current = tree.root()
            if tree.size in wanted:
                roots[tree.size] = current
            if not explained and current != root:
                self.tampered(
                    f"the hash chain breaks at record {seq}: records up to it were changed "
                    "or removed and the hashes recomputed",
                    where,
                    {"stored_root": root.hex(), "recomputed": current.hex()},
                )
                explained = True
            if rec is not None and rec.alert == Rule.LEDGER_TAMPERED.value:
                self.tampered(f"recorded by the ledger writer: {rec.message}", where, {})
            if rec is not None and rec.message == ORIGIN_EVENT:
                self._run(run_info(seq, digest, rec.evidence), where)
            expected = seq + 1
        roots[-1] = tree.root()  # the whole tree, for the stored state
        return tree.size, expected - 1, roots

    def _run(self, info: RunInfo | None, where: str) -> None:
        if info is None:
            return
        if info.run in self.runs:
            self.tampered(f"run {info.run} is announced twice", where, {"run": info.run})
        else:
            self.runs[info.run] = info

    def _tail(self, state: Any, count: int, last: int, tip: int, root: bytes) -> None:
        size = state[0] if state else None
        if not isinstance(size, int):
            self.tampered("the stored tree state is missing or damaged", "state", {})
            size = last
        if size > last:
            self.tampered(
                f"records {last + 1}..{size} are missing from the end: truncated",
                f"seq {last + 1}",
                {"state_size": size, "last_record": last},
            )
        elif tip > last:
            self.tampered(
                f"records {last + 1}..{tip} were acknowledged to a writer but are gone: "
                "a torn or truncated write, or deletion",
                f"seq {last + 1}",
                {"acknowledged_up_to": tip, "last_record": last},
            )
        elif size < last:
            self.tampered(
                f"records {size + 1}..{last} were added behind the writer's back",
                f"seq {size + 1}",
                {"state_size": size, "last_record": last},
            )
        elif size == count and not self.findings:
            try:
                stored = Frontier.from_bytes(size, blob(state[1])).root()
            except ValueError:
                stored = b""
            if stored != root:
                self.tampered("the stored tree state does not match the records", "state", {})

    def _heads(
        self,
        meta: dict[str, str],
        hs: list[headmod.HeadRef],
        ws: list[headmod.HeadRef],
        roots: dict[int, bytes],
        count: int,
    ) -> None:
        origin = meta.get("origin", "")
        ledger_texts = {h.checkpoint.text for h in hs if h.checkpoint is not None}
        previous = 0
        for h in hs + ws:
            cp = h.checkpoint
            if cp is None:
                self.tampered(f"{h.where} is unreadable: {h.error}", h.where, {})
                continue
            ev: dict[str, Any] = {"tree_size": cp.size, "records": count}
            if cp.origin != origin:
                self.tampered(f"{h.where} belongs to another ledger ({cp.origin})", h.where, ev)
            elif cp.size > count:
                self.tampered(
                    f"the ledger was truncated back past {h.where}: it covers {cp.size} "
                    f"records, {count} remain",
                    h.where,
                    ev,
                )
            elif roots.get(cp.size) != cp.root:
                self.tampered(
                    f"{h.where} (size {cp.size}) does not match the records: history was "
                    "rewritten after it was signed",
                    h.where,
                    ev,
                )
            if h.where.startswith("ledger"):
                if cp.size < previous:
                    self.tampered(f"{h.where} is smaller than the head before it", h.where, ev)
                previous = max(previous, cp.size)
            elif cp.text not in ledger_texts and cp.origin == origin:
                held = "the witness holds" if "witness" in h.where else "that was expected"
                self.tampered(
                    f"the ledger lacks the head {held} at {h.where} (size {cp.size}): heads "
                    "were removed",
                    h.where,
                    ev,
                )

    def _signatures(
        self, meta: dict[str, str], hs: list[headmod.HeadRef], ws: list[headmod.HeadRef], count: int
    ) -> int:
        if meta.get("mode") == "run":
            keys = {r: i.public_key for r, i in self.runs.items()}
            mine = [
                h for h in hs + ws if h.checkpoint and h.checkpoint.origin == meta.get("origin")
            ]
            verified, covered = headmod.check_runs(mine, keys, self.tampered)
            self.notes.extend(runcheck.uncovered(count, covered, self.runs))
            unsigned = sorted(r for r, k in keys.items() if k is None)
            if unsigned:
                self.notes.append(f"runs {', '.join(unsigned)} signed nothing (no key)")
            return verified
        try:
            stored = base64.b64decode(meta.get("first_key") or "", validate=True) or None
        except (binascii.Error, ValueError):
            self.tampered("the ledger's stored key is not base64", "meta", {})
            stored = None
        anchor = self.anchor
        if anchor is None and stored is not None:
            anchor = stored
            self.notes.append(
                "heads were checked against the key stored in the ledger itself; pass the "
                "public key kept elsewhere to rule out a replaced key"
            )
        elif anchor is not None and stored is not None and anchor != stored:
            self.notes.append("the given public key is not the one this ledger was started with")
        ratchet = meta.get("mode") == "ratchet"
        signed = meta.get("mode") in ("key", "ratchet")
        if not signed and (hs or ws):
            self.notes.append("this ledger has no signing key: heads pin roots, not authorship")
        verified, top, chain = headmod.check_chain(hs + ws, anchor, ratchet, signed, self.tampered)
        folder = self.path if isinstance(self.path, Path) else None
        state = read_public_state(folder) if ratchet and folder is not None else None
        if state is not None:
            epoch, public = state
            expected = 0 if top is None else top + 1
            if epoch > expected:
                self.tampered(
                    f"the signing key has moved on to epoch {epoch}, but the last verified "
                    f"head is epoch {top}: signed heads were removed",
                    "ratchet.pub",
                    {"key_epoch": epoch, "last_head_epoch": top},
                )
            elif epoch == expected and chain.get(epoch, public) != public:
                self.tampered(
                    "ratchet.pub is not the key the last head published", "ratchet.pub", {}
                )
        return verified


def _size(h: headmod.HeadRef) -> int:
    return h.checkpoint.size if h.checkpoint is not None else 0
