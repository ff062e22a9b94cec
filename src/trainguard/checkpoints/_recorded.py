"""Checkpoints against the ledger: deleted, rolled back or swapped since they were saved.

A signature alone cannot tell an older signed state from the current one: both verify.
The ledger can. ``save(..., ledger=...)`` records each checkpoint's manifest digest (file
names and sha256s); ``verify_recorded`` takes the last record for every checkpoint path
and checks that the checkpoint is still there and still holds exactly that manifest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.checkpoints import _signing, _tree
from trainguard.checkpoints._results import LedgerPosition
from trainguard.errors import VerificationError
from trainguard.findings import Finding, Location, Rule, Severity

__all__ = ["RecordedVerification", "verify_recorded"]


@dataclass(frozen=True, slots=True)
class RecordedVerification:
    checkpoints: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoints": self.checkpoints,
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
        }


def _latest(ledger: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    from trainguard.ledger import read_records

    latest: dict[str, dict[str, Any]] = {}
    for record in read_records(ledger):
        ev = dict(record.evidence)
        if ev.get("event") == "checkpoint.saved" and isinstance(ev.get("path"), str):
            latest[ev["path"]] = {**ev, "seq": record.seq}
    return latest


def _bound(
    ledger: str | os.PathLike[str], pos: LedgerPosition, where: Location, base: dict[str, Any]
) -> list[Finding]:
    """The ledger position signed into the checkpoint must be a position of this ledger:
    its origin, and the root this ledger had at that size."""
    from trainguard.ledger.reading import root_at

    origin, root = root_at(ledger, pos.size)
    evidence = {**base, "signed_position": pos.to_json(), "ledger_origin": origin}
    if pos.origin != origin:
        message = (
            f"checkpoint was signed under another ledger (origin {pos.origin[:16]}), "
            "not this one: it belongs to another run"
        )
    elif root != pos.root:
        message = (
            f"checkpoint was signed at ledger size {pos.size}, where this ledger's root "
            f"{'does not exist' if root is None else 'differs'} (rolled back or rewritten)"
        )
    else:
        return []
    return [Finding(Rule.CHECKPOINT_MODIFIED, Severity.HIGH, message, where, evidence)]


def verify_recorded(
    ledger: str | os.PathLike[str], public_key: _signing.PublicKeySource | None = None
) -> RecordedVerification:
    """Every checkpoint the ledger saw saved: present, and holding the last recorded state.

    With ``public_key`` a recorded signature must also still verify (a failing signature
    is a finding here, not an exception: this is a sweep over many checkpoints), and a
    ledger position signed into it (``save(..., ledger=...)``) must be one of this
    ledger's: a checkpoint of another run, or of a rolled-back ledger, is a finding.
    """
    findings: list[Finding] = []
    latest = _latest(ledger)
    for path, ev in sorted(latest.items()):
        where = Location(path, None, None)
        base = {"ledger_seq": ev["seq"], "recorded_digest": ev.get("manifest_digest")}
        if not Path(path).exists():
            findings.append(
                Finding(Rule.CHECKPOINT_MISSING, Severity.HIGH,
                        f"checkpoint recorded at ledger seq {ev['seq']} is gone", where, base)
            )  # fmt: skip
            continue
        if public_key is not None and ev.get("signature"):
            try:
                result = _signing.verify(path, public_key)
            except VerificationError as exc:
                findings.append(
                    Finding(Rule.CHECKPOINT_MODIFIED, Severity.HIGH,
                            f"signature no longer verifies: {exc}", where, base)
                )  # fmt: skip
                continue
            findings.extend(result.findings)
            if result.manifest is not None and result.manifest.ledger is not None:
                findings.extend(_bound(ledger, result.manifest.ledger, where, base))
        lay = _tree.layout(path, None)
        current = _signing.build_manifest(lay, _signing.ignore_list(lay, ())).manifest_digest
        if current != ev.get("manifest_digest"):
            findings.append(
                Finding(
                    Rule.CHECKPOINT_MODIFIED,
                    Severity.HIGH,
                    "checkpoint differs from the state last recorded in the ledger "
                    "(rolled back to an older state, or swapped with another one)",
                    where,
                    {**base, "current_digest": current},
                )
            )
    return RecordedVerification(len(latest), tuple(findings))
