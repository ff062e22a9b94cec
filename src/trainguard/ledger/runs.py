"""A run's origin: the first record ``trainguard run`` writes, and the key it announces.

Each ``trainguard run`` makes a fresh Ed25519 key in the supervisor's memory (never on
disk, never in the job's environment), and appends one ``run.origin`` event before
anything else of the run: run id, command, working folder, start time, host, user, the
ledger folder's real path, the ledger's origin and the run's public key. Every head the
supervisor signs names the run and the seq and leaf hash of that record (``run`` line,
see ``note``), so a head alone says which run vouched for it, and a verifier reads the
key to check it with from the record the head itself covers.

What this buys, and what it does not: the key dies with the supervisor, so after the run
ends nobody can sign another head for it (forward security without a ratchet file), and
no process of the job, however compromised, can sign one while it runs. But a key inside
the ledger only proves the ledger agrees with itself: an insider who writes a whole new
ledger can announce a key of his own. The run's key is worth something against that only
where it is also held outside the folder: in the witness (``anchor``), in the line the
supervisor prints at start, or in the run id a colleague passes to ``verify --origin``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard import keys
from trainguard.ledger.note import RUN_ID

__all__ = ["ORIGIN_EVENT", "RunInfo", "RunOrigin", "new_run_id", "run_info"]

ORIGIN_EVENT = "run.origin"


def new_run_id() -> str:
    """``<UTC time>-<48 random bits>``: sorts by start, unique without coordination."""
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(6)}"


@dataclass(frozen=True, slots=True)
class RunOrigin:
    """What a run announces about itself; ``public_key`` is raw Ed25519 (or ``None`` when
    no signing library is installed: heads are then only pinned by the witness)."""

    run: str
    command: tuple[str, ...]
    public_key: bytes | None
    ledger: str = ""
    """Real path of the ledger folder, filled in when the ledger is opened."""
    cwd: str = field(default_factory=os.getcwd)
    started: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    )
    host: str = field(default_factory=socket.gethostname)
    user: str = field(default_factory=lambda: _user())
    pid: int = field(default_factory=os.getpid)
    key_mode: str = "run"
    """``run`` (a per-run key) or ``key`` (a fixed key the admin gave)."""

    def __post_init__(self) -> None:
        if not RUN_ID.fullmatch(self.run):
            raise ValueError(f"not a run id: {self.run!r}")

    def evidence(self, ledger_origin: str) -> dict[str, Any]:
        """The ``run.origin`` record's evidence."""
        pub = self.public_key
        return {
            "event": ORIGIN_EVENT,
            "run": self.run,
            "ledger_origin": ledger_origin,
            "ledger": self.ledger,
            "command": list(self.command),
            "cwd": self.cwd,
            "started": self.started,
            "host": self.host,
            "user": self.user,
            "launcher_pid": self.pid,
            "key_mode": self.key_mode,
            "public_key": base64.b64encode(pub).decode() if pub is not None else None,
            "key": fingerprint(pub),
        }


@dataclass(frozen=True, slots=True)
class RunInfo:
    """A ``run.origin`` record as ``verify`` found it."""

    run: str
    seq: int
    leaf: bytes
    public_key: bytes | None
    ledger_origin: str
    ledger: str
    host: str
    started: str


def run_info(seq: int, leaf: bytes, evidence: Mapping[str, Any]) -> RunInfo | None:
    """The run a record announces, or ``None`` if it is not a usable ``run.origin``."""
    if evidence.get("event") != ORIGIN_EVENT or not isinstance(evidence.get("run"), str):
        return None
    raw = evidence.get("public_key")
    try:
        pub = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
    except (binascii.Error, ValueError):
        pub = b""  # present but unusable: every head of this run then fails to verify
    return RunInfo(
        run=evidence["run"],
        seq=seq,
        leaf=leaf,
        public_key=pub,
        ledger_origin=str(evidence.get("ledger_origin", "")),
        ledger=str(evidence.get("ledger", "")),
        host=str(evidence.get("host", "")),
        started=str(evidence.get("started", "")),
    )


def fingerprint(public_raw: bytes | None) -> str | None:
    """``SHA256:...`` of a raw Ed25519 key, as ``keys.fingerprint`` prints it."""
    if public_raw is None:
        return None
    return keys.fingerprint(keys.public_key_from_raw(public_raw))


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):
        return os.environ.get("USER", "")
