"""The checks that bind a ledger to its header, to its runs and to what is held outside
its folder: the part of ``verify`` that finds a ledger swapped, rolled back, cut short
or rewritten whole, which no check of the ledger against itself can.

What each one trusts:

* ``header``: signed heads (the ``meta`` digest in each). An edited ``meta`` row is
  found wherever one head carries the digest; a header that says ``none`` while the
  records announce signed runs is found without any head.
* ``bindings``: the ``run`` line of each head against the ``run.origin`` record it names.
* ``index``: the witness folder's index (``anchor``), which only the user can write. It
  says which ledger each folder last held and which runs, with which keys, wrote each
  ledger: a folder holding another ledger, a run the ledger lost, or a run's key that is
  not the one its supervisor announced is ``ledger.tampered``.
* ``origin``: the run id or ledger origin the person verifying brings (``--origin``).

Where nothing outside the folder speaks for the ledger, a note says so: a ledger
checked only against itself is consistent, not proven.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainguard.ledger import note
from trainguard.ledger.anchor import IndexEntry
from trainguard.ledger.heads import HeadRef
from trainguard.ledger.pg import redact
from trainguard.ledger.runs import RunInfo

__all__ = ["bindings", "header", "index", "origin", "uncovered"]

Report = Callable[[str, str, dict[str, Any]], None]


def header(
    meta: dict[str, str], heads: Sequence[HeadRef], runs: dict[str, RunInfo], report: Report
) -> None:
    """The header against the digest signed into heads, and against the runs it holds."""
    digest = note.meta_digest(meta)
    mode = meta.get("mode", "")
    bare = next((h for h in heads if h.checkpoint and h.checkpoint.meta is None), None)
    if bare is not None and mode == "run":
        report(f"{bare.where} carries no header digest, which every run's head has", bare.where, {})
    edited = next(
        (h for h in heads if h.checkpoint and h.checkpoint.meta not in (None, digest)), None
    )
    if edited is not None:  # one edit, one finding: every later head says the same
        report(
            "the ledger's header (meta: mode, origin, format, version, key) is not the one "
            f"{edited.where} was signed under: it was edited",
            "meta",
            {"now": digest.hex(), "mode": mode},
        )
    if runs and mode not in ("run", "key"):
        report(
            f"the header says mode {mode!r}, but the ledger holds the origin records of "
            f"{len(runs)} signed run(s): the header was edited",
            "meta",
            {"mode": mode, "runs": sorted(runs)},
        )


def bindings(heads: Sequence[HeadRef], runs: dict[str, RunInfo], report: Report) -> None:
    """Each head's ``run`` line must name the record where that run's origin is."""
    for h in heads:
        cp = h.checkpoint
        if cp is None or cp.run is None:
            continue
        info = runs.get(cp.run.run)
        if info is None:
            continue  # said by the signature check: a run the ledger does not announce
        if (info.seq, info.leaf) != (cp.run.seq, cp.run.leaf) or cp.run.seq > cp.size:
            report(
                f"{h.where} names run {cp.run.run}'s origin as record {cp.run.seq}, but the "
                f"ledger's origin record of that run is {info.seq} with other content",
                h.where,
                {"run": cp.run.run, "named_seq": cp.run.seq, "found_seq": info.seq},
            )


def index(
    path: Path | str,
    meta_origin: str,
    runs: dict[str, RunInfo],
    entries: Sequence[IndexEntry],
    report: Report,
) -> list[str]:
    """The ledger against the witness index; returns notes."""
    notes: list[str] = []
    here = redact(path) if isinstance(path, str) else os.path.realpath(path)  # as recorded
    mine = [e for e in entries if e.ledger == here]
    if mine and mine[-1].origin != meta_origin:
        last = mine[-1]
        elsewhere = next((e for e in reversed(entries) if e.origin == meta_origin), None)
        moved = f", which run {elsewhere.run} wrote at {elsewhere.ledger}" if elsewhere else ""
        report(
            f"this folder last held ledger {last.origin} (run {last.run}, started {last.started} "
            f"on {last.host}); it now holds {meta_origin or 'a ledger without origin'}{moved}: "
            "the ledger was replaced",
            f"witness index line {last.line}",
            {"expected_origin": last.origin, "found_origin": meta_origin, "run": last.run},
        )
    for e in entries:
        if e.origin != meta_origin:
            continue
        info = runs.get(e.run)
        if info is None and e.ledger != here:
            continue  # a run in a copy of this ledger kept elsewhere: not this folder's
        if info is None:
            report(
                f"the witness saw run {e.run} start writing this ledger ({e.started}, on "
                f"{e.host}), but the ledger has no origin record of it: rolled back to before "
                "that run, or rewritten",
                f"witness index line {e.line}",
                {"run": e.run},
            )
        elif e.public_key != _b64(info.public_key):
            report(
                f"run {e.run}'s key in the ledger is not the key its supervisor announced to "
                "the witness: the ledger was rewritten and re-signed with another key",
                f"seq {info.seq}",
                {"run": e.run, "announced": e.public_key, "in_ledger": _b64(info.public_key)},
            )
    away = sorted({i.ledger for i in runs.values() if i.ledger and i.ledger != here})
    if away:
        notes.append(f"this ledger was written at {', '.join(away)} (moved or copied since)")
    return notes


def origin(expected: str, meta_origin: str, runs: dict[str, RunInfo], report: Report) -> None:
    """``--origin``: the ledger must be that ledger, or hold that run."""
    if expected in (meta_origin, meta_origin.rpartition("/")[2]) or expected in runs:
        return
    held = ", ".join(sorted(runs)) or "none"
    report(
        f"this is not the ledger of {expected}: it is {meta_origin} and holds the runs {held}",
        "origin",
        {"expected": expected, "origin": meta_origin, "runs": sorted(runs)},
    )


def uncovered(count: int, covered: int, runs: dict[str, RunInfo]) -> list[str]:
    if not runs or covered >= count:
        return []
    return [
        f"records {covered + 1}..{count} are not covered by a signed head (a run still going, "
        "a supervisor that was killed, or records appended since): nothing vouches for them yet"
    ]


def _b64(raw: bytes | None) -> str | None:
    return base64.b64encode(raw).decode() if raw is not None else None
