"""``verify``: recompute everything the ledger claims and report what disagrees.

Nothing stored is trusted: every leaf hash is recomputed from the stored canonical bytes,
every per-record root from those hashes, and the root of the first N records is
recomputed for every head (from the ledger and from the witness), in one pass. What each
check finds:

=============================  ==============================================
an edited record               its bytes no longer match its hash (named by seq)
an edit with hashes rewritten  the per-record root chain breaks there, or a head
                               covering it disagrees
a deleted record               a gap in seq numbers
reordered / swapped records    a position holding another seq
a truncated tail               the tip of acknowledged seqs, a head or witness
                               head larger than what remains, a ratchet key
                               that moved past the last head
a forged or altered head       its signature under the key chain (in a
                               ``trainguard run`` ledger: the key of the run
                               the head names)
an edited header (meta row)    the header digest in the signed heads
a ledger swapped whole         the witness index: which ledger this folder
                               last held; ``origin``
a ledger rolled back or cut    the witness: heads larger than what remains,
short with its heads           runs it saw start that the ledger lacks
a ledger rewritten and         the witness: its heads' roots, the run's key
re-signed with another key     its supervisor announced; ``expect_heads``
=============================  ==============================================

By default the user's witness folder (``anchor.default_dir``) is read: what it holds
about this ledger is checked, and where it holds nothing a note says that a whole-ledger
swap cannot be ruled out from the folder alone.

Tampering is returned as ``ledger.tampered`` findings; ``VerificationError`` is raised
only when there is nothing usable to verify (no ledger at the path, an unreadable
witness file, key or expected head): the CLI's "could not check".
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainguard import exit_codes, keys
from trainguard.errors import ConfigError, VerificationError
from trainguard.findings import Finding, Location
from trainguard.ledger import anchor as anchormod
from trainguard.ledger.checker import Checker
from trainguard.ledger.heads import HeadRef, expected_heads
from trainguard.ledger.store import DB_NAME, Where, describe, location

__all__ = ["LedgerVerification", "check", "verify"]

PublicKeySource = keys.PublicKey | str | os.PathLike[str] | bytes | None


@dataclass(frozen=True, slots=True)
class LedgerVerification:
    """The outcome: ``intact`` only if no finding. ``notes`` say what could not be
    checked (no key given, ...): they are not findings, and not silent either."""

    path: str
    records: int
    heads: int
    heads_verified: int
    witness_heads: int
    findings: tuple[Finding, ...]
    notes: tuple[str, ...]
    runs: tuple[str, ...] = ()
    """The ``trainguard run`` runs the ledger announces (``run.origin`` records)."""
    anchors: tuple[str, ...] = ()
    """What outside the folder it was checked against; empty: only against itself."""

    @property
    def intact(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "intact": self.intact,
            "records": self.records,
            "heads": self.heads,
            "heads_verified": self.heads_verified,
            "witness_heads": self.witness_heads,
            "findings": [f.to_json() for f in self.findings],
            "notes": list(self.notes),
            "runs": list(self.runs),
            "anchors": list(self.anchors),
        }


def check(
    path: str | os.PathLike[str],
    *,
    public_key: PublicKeySource = None,
    witness: str | os.PathLike[str] | None = None,
) -> int:
    """``verify`` as an exit code: 0 intact, 1 tampered, 2 could not check (the CLI's)."""
    try:
        result = verify(path, public_key=public_key, witness=witness)
    except VerificationError:
        return exit_codes.ERROR
    return exit_codes.OK if result.intact else exit_codes.FINDINGS


def verify(
    path: str | os.PathLike[str],
    *,
    public_key: PublicKeySource = None,
    witness: str | os.PathLike[str] | None = None,
    witness_dir: str | os.PathLike[str] | bool = True,
    origin: str | None = None,
    expect_heads: Sequence[str | os.PathLike[str]] = (),
) -> LedgerVerification:
    """Verify the ledger folder ``path`` (or a ``.jsonl`` export of one, or a PostgreSQL
    ledger's ``postgresql://`` URL).

    ``witness``: a file of heads kept elsewhere. ``witness_dir``: the user's witness
    folder (``True``: the default one, ``anchor.default_dir``; ``False``: none).
    ``origin``: the run id (or ledger origin) this must be the ledger of.
    ``expect_heads``: files each holding a head this ledger must contain.
    """
    where = location(path)
    expected = expected_heads([Path(e) for e in expect_heads])
    if isinstance(where, str):  # PostgreSQL
        return _check(where, public_key, witness, witness_dir, origin, expected)
    p = where
    if p.is_file() and p.suffix == ".jsonl":
        from trainguard.ledger.transfer import import_jsonl

        with tempfile.TemporaryDirectory(prefix="trainguard-ledger-") as tmp:
            import_jsonl(p, Path(tmp) / "ledger")
            result = verify(
                Path(tmp) / "ledger",
                public_key=public_key,
                witness=witness,
                witness_dir=witness_dir,
                origin=origin,
                expect_heads=expect_heads,
            )
        findings = tuple(_relocate(f, str(p)) for f in result.findings)
        return replace(result, path=str(p), findings=findings)
    if not (p / DB_NAME).is_file():
        raise VerificationError(f"no ledger at {p} (no {DB_NAME})")
    return _check(p, public_key, witness, witness_dir, origin, expected)


def _check(
    p: Where,
    public_key: PublicKeySource,
    witness: str | os.PathLike[str] | None,
    witness_dir: str | os.PathLike[str] | bool,
    origin: str | None,
    expected: Sequence[HeadRef],
) -> LedgerVerification:
    checker = Checker(
        p,
        _anchor(public_key),
        Path(witness) if witness is not None else None,
        witness_dir=_witness_dir(witness_dir),
        origin=origin,
        expected=expected,
    )
    count, nheads, verified, nwitness = checker.run()
    return LedgerVerification(
        describe(p),
        count,
        nheads,
        verified,
        nwitness,
        tuple(checker.findings),
        tuple(checker.notes),
        tuple(checker.runs),
        tuple(checker.anchors),
    )


def _witness_dir(source: str | os.PathLike[str] | bool) -> anchormod.WitnessDir | None:
    if source is False:
        return None
    folder = anchormod.default_dir() if source is True else Path(source)
    return anchormod.WitnessDir(folder) if folder is not None else None


def _anchor(source: PublicKeySource) -> bytes | None:
    """The trust anchor as raw bytes: a public key, PEM path or bytes, or 32 raw bytes."""
    if source is None:
        return None
    if isinstance(source, bytes) and len(source) == 32:
        return source
    try:
        if isinstance(source, str | os.PathLike | bytes):
            return keys.public_raw(keys.load_public_key(source))
        return keys.public_raw(source)
    except ConfigError as exc:
        raise VerificationError(f"unusable public key: {exc}") from None


def _relocate(f: Finding, path: str) -> Finding:
    return Finding(
        f.rule, f.severity, f.message, Location(path, member=f.location.member), f.evidence
    )
