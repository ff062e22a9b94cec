"""The default witness: a folder in the user's own state directory, outside the ledger.

``trainguard run`` writes here by default; ``verify`` reads here by default::

    <dir>/ledgers.jsonl          one line per run: which ledger origin, which run, which
                                 folder (real path), which public key, when, where
    <dir>/heads/<h>.jsonl        every head of one ledger, ``{"note": ...}`` per line
                                 (``<h>``: SHA-256 of the ledger's origin)

``<dir>`` is ``$TRAINGUARD_WITNESS_DIR``, else ``witness`` in trainguard's state folder
(``trainguard.env.state``: ``$TRAINGUARD_STATE_DIR``, ``$XDG_STATE_HOME/trainguard``,
``~/.local/state/trainguard``); ``TRAINGUARD_WITNESS_DIR=off`` turns it off.
An admin can add a witness elsewhere with ``$TRAINGUARD_WITNESS_COMMAND`` (a command
run with each head on stdin: ``curl --data-binary @- https://...``, ``ssh host 'cat >>
heads'``).

The assumption this rests on, stated plainly: the insider shares the file system with
the user (he can write the ledger folder, the checkpoints, the shared environment) but
not the user's home. The folder is made 0700 and checked with the state folder's one
rule (``env.state.why_unsafe``: it and every folder above it owned by the user or root
and writable by no one else): one that fails anchors nothing and is not used. Where the
insider can write the home too (a shared home on a file system he administers, root on
the machine), a file there is no witness: use the command to send heads to a machine he
cannot reach. Code of his that runs inside the user's job runs as the user and can
write here as well: this folder anchors against the insider at his own account, before,
during or after the run; the command anchors against more.

What it catches that nothing inside the ledger folder can: a ledger replaced whole by
another (the index says which ledger this folder last held), rolled back to an older
copy or cut short (the heads say how long it was), or rewritten and re-signed with a key
of the insider's own (the index holds the run's real key, the heads its real roots).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.env.state import state_dir, why_unsafe
from trainguard.ledger.runs import RunOrigin
from trainguard.ledger.witness import append_json_line

__all__ = ["WITNESS_COMMAND_ENV", "WITNESS_DIR_ENV", "IndexEntry", "WitnessDir", "default_dir"]

WITNESS_DIR_ENV = "TRAINGUARD_WITNESS_DIR"
WITNESS_COMMAND_ENV = "TRAINGUARD_WITNESS_COMMAND"
INDEX = "ledgers.jsonl"
_OFF = frozenset({"off", "none", "0", "no", "false"})


def default_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where the default witness lives, or ``None`` when it was turned off."""
    env = os.environ if environ is None else environ
    chosen = env.get(WITNESS_DIR_ENV, "").strip()
    if chosen.lower() in _OFF:
        return None
    if chosen:
        return Path(chosen).expanduser().absolute()
    return state_dir(env) / "witness"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One run as the witness saw it start (line ``line`` of the index)."""

    line: int
    origin: str
    run: str
    ledger: str
    public_key: str | None
    host: str
    started: str


class WitnessDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.index = self.path / INDEX

    def heads_file(self, origin: str) -> Path:
        """The file of ``origin``'s heads; the name is a hash, so an origin an attacker
        wrote into a ledger can never name a path outside this folder."""
        digest = hashlib.sha256(origin.encode("utf-8", "surrogateescape")).hexdigest()[:40]
        return self.path / "heads" / f"{digest}.jsonl"

    def ensure(self) -> None:
        (self.path / "heads").mkdir(mode=0o700, parents=True, exist_ok=True)
        for folder in (self.path, self.path / "heads"):
            if folder.stat().st_mode & 0o077:
                os.chmod(folder, 0o700)

    def trust_problem(self) -> str | None:
        """Why this folder cannot be trusted as a witness (someone other than the user or
        root could write it or a folder above it), or ``None``. A folder that is not
        there yet holds nothing to distrust."""
        if not os.path.lexists(self.path):
            return None
        problem = why_unsafe(self.path)
        return f"the witness folder is not private: {problem}" if problem else None

    def announce(self, run: RunOrigin, ledger_origin: str) -> None:
        """Say in the index that ``run`` starts writing ``ledger_origin`` at its folder.
        Raises ``OSError``; the caller records it."""
        self.ensure()
        ev = run.evidence(ledger_origin)
        entry = {k: ev[k] for k in ("run", "ledger", "public_key", "host", "started", "user")}
        append_json_line(self.index, {"origin": ledger_origin, **entry}, 0o600)

    def entries(self) -> tuple[list[IndexEntry], list[str]]:
        """Every run in the index, and what could not be read (in words)."""
        try:
            text = self.index.read_text(encoding="utf-8")
        except FileNotFoundError:
            return [], []
        except (OSError, UnicodeDecodeError) as exc:
            return [], [f"the witness index {self.index} cannot be read: {exc}"]
        out, bad = [], []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj: Any = json.loads(line)
                out.append(
                    IndexEntry(
                        n,
                        str(obj["origin"]),
                        str(obj["run"]),
                        str(obj["ledger"]),
                        obj.get("public_key"),
                        str(obj.get("host", "")),
                        str(obj.get("started", "")),
                    )
                )
            except (ValueError, KeyError, TypeError):
                bad.append(f"line {n} of the witness index {self.index} is unreadable")
        return out, bad
