"""Checking signed heads: where they come from, and which key must have signed each.

Heads come from the ledger itself, from witnesses (copies kept elsewhere) and from the
person verifying (``--expect-head``). All are checked the same way, against the same key
chain: with a fixed key every head must be signed by it; with the ratchet, epoch 0 is
signed by the anchor key and every later epoch by the ``next-key`` that a verified head
of the epoch before published; in a ``trainguard run`` ledger each head by the key of
the run it names. A head whose epoch the chain cannot reach is reported, because that
is exactly what deleting heads (to hide a rewrite) leaves behind.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from trainguard import keys
from trainguard.errors import ConfigError, VerificationError
from trainguard.ledger import note
from trainguard.ledger.store import blob

__all__ = [
    "HeadRef",
    "check_chain",
    "check_runs",
    "expected_heads",
    "ledger_heads",
    "witness_heads",
]

Report = Callable[[str, str, dict[str, object]], None]


@dataclass(frozen=True, slots=True)
class HeadRef:
    """One head and where it was found (``ledger head #3``, ``witness line 7``)."""

    where: str
    checkpoint: note.Checkpoint | None
    error: str | None = None


def ledger_heads(rows: Iterable[tuple[int, int, object]]) -> list[HeadRef]:
    out = []
    for rowid, _size, text in rows:
        if not isinstance(text, str):
            text = blob(text).decode("utf-8", "replace")
        out.append(_parse(f"ledger head #{rowid}", text))
    return out


def witness_heads(path: Path, origin: str, label: str = "witness") -> tuple[list[HeadRef], int]:
    """This ledger's heads in the witness file; also how many lines were for others."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VerificationError(f"cannot read the witness file {path}: {exc}") from None
    out, other = [], 0
    for ref in _note_lines(lines, label):
        if ref.checkpoint is not None and ref.checkpoint.origin != origin:
            other += 1
            continue
        out.append(ref)
    return out, other


def expected_heads(sources: Iterable[str | Path]) -> list[HeadRef]:
    """Heads the verifier brings (``--expect-head``): each a file holding one signed note,
    or witness lines. They are never filtered by origin: one of another ledger is the
    answer that this is not the ledger it was expected to be."""
    out: list[HeadRef] = []
    for source in sources:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VerificationError(f"cannot read the expected head {source}: {exc}") from None
        label = f"expected head {len(out) + 1}"
        if text.lstrip().startswith("{"):
            refs = _note_lines(text.splitlines(), label)
        else:
            refs = [_parse(label, text.strip("\n") + "\n")]
        bad = [r.error for r in refs if r.checkpoint is None]
        if bad or not refs:
            raise VerificationError(f"{source} is not a signed head: {bad[0] if bad else 'empty'}")
        out.extend(refs)
    return out


def _note_lines(lines: list[str], label: str) -> list[HeadRef]:
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            text = json.loads(line)["note"]
            if not isinstance(text, str):
                raise TypeError("note is not text")
        except (ValueError, KeyError, TypeError) as exc:
            out.append(HeadRef(f"{label} line {n}", None, f"unreadable: {exc}"))
            continue
        out.append(_parse(f"{label} line {n}", text))
    return out


def _parse(where: str, text: str) -> HeadRef:
    try:
        return HeadRef(where, note.parse(text))
    except ValueError as exc:
        return HeadRef(where, None, str(exc))


def check_chain(
    heads: list[HeadRef], anchor: bytes | None, ratchet: bool, signed: bool, report: Report
) -> tuple[int, int | None, dict[int, bytes]]:
    """Verify every head's signature. Returns (heads verified, highest verified epoch,
    public key of each reachable epoch)."""
    chain: dict[int, bytes] = {} if anchor is None else {0: anchor}
    verified, top = 0, None
    if anchor is None:
        return 0, None, chain
    parsed = [h for h in heads if h.checkpoint is not None]
    if not ratchet:
        for h in parsed:
            assert h.checkpoint is not None
            if _good(h, anchor, signed, report):
                verified += 1
        return verified, None, chain
    for h in sorted(parsed, key=lambda h: (h.checkpoint.epoch or 0) if h.checkpoint else 0):
        cp = h.checkpoint
        assert cp is not None
        if cp.epoch is None:
            report(f"{h.where} (size {cp.size}) has no epoch in a ratchet ledger", h.where, {})
            continue
        key = chain.get(cp.epoch)
        if key is None:
            report(
                f"{h.where} (size {cp.size}) is signed for epoch {cp.epoch}, which no verified "
                "head leads to: heads before it were removed, or it is forged",
                h.where,
                {"epoch": cp.epoch, "tree_size": cp.size},
            )
            continue
        if not _good(h, key, signed, report):
            continue
        verified += 1
        top = cp.epoch if top is None else max(top, cp.epoch)
        if cp.next_key is None:
            report(f"{h.where} publishes no next key", h.where, {"epoch": cp.epoch})
        elif chain.setdefault(cp.epoch + 1, cp.next_key) != cp.next_key:
            report(
                f"{h.where} publishes a different next key for epoch {cp.epoch + 1}",
                h.where,
                {"epoch": cp.epoch},
            )
    return verified, top, chain


def check_runs(
    heads: list[HeadRef], run_keys: dict[str, bytes | None], report: Report
) -> tuple[int, int]:
    """Mode ``run``: every head must name a run this ledger announces (its ``run`` line)
    and be signed by that run's key. Returns (heads verified, largest size verified)."""
    verified = covered = 0
    for h in heads:
        cp = h.checkpoint
        if cp is None:
            continue
        ev: dict[str, object] = {"tree_size": cp.size}
        if cp.run is None:
            report(
                f"{h.where} (size {cp.size}) names no run: no run's supervisor made it", h.where, ev
            )
        elif cp.run.run not in run_keys:
            report(
                f"{h.where} (size {cp.size}) is signed for run {cp.run.run}, which this ledger "
                "does not announce (no run.origin record): forged, or from another ledger",
                h.where,
                {**ev, "run": cp.run.run},
            )
        else:
            key = run_keys[cp.run.run]
            if key is None:
                if cp.signatures:
                    report(
                        f"{h.where} is signed, but run {cp.run.run} announced no key", h.where, ev
                    )
            elif _good(h, key, True, report):
                verified += 1
                covered = max(covered, cp.size)
    return verified, covered


def _good(h: HeadRef, raw: bytes, signed: bool, report: Report) -> bool:
    cp = h.checkpoint
    assert cp is not None
    if not cp.signatures:
        if signed:
            report(f"{h.where} (size {cp.size}) is not signed", h.where, {"tree_size": cp.size})
        return False
    try:
        public = keys.public_key_from_raw(raw)
    except ConfigError:
        report(f"the key for {h.where} is not an Ed25519 key", h.where, {})
        return False
    if cp.verify(public):
        return True
    report(
        f"{h.where} (size {cp.size}): the signature does not verify with the expected key "
        f"({keys.fingerprint(public)}): forged or altered",
        h.where,
        {"tree_size": cp.size, "epoch": cp.epoch, "key": keys.fingerprint(public)},
    )
    return False
