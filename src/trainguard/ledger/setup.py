"""Opening a ledger: its header (origin, key mode, epoch-0 key) and the signing key.

The header is written once, by whichever process creates the ledger, inside a write
transaction, so ranks that start together agree on one origin. It also pins how heads
are signed: a ledger started with a fixed key refuses another key, and a ratchet ledger
refuses a fixed key, because either switch would leave heads that no single verifier
key chain accepts. Mode ``run`` is ``trainguard run``'s: every run brings its own key
(announced in its ``run.origin`` record), and the job's processes, which hold no key,
append without signing.

Once a head exists the header never changes again, and every head carries a digest of
it (``note.meta_digest``): an edited ``mode`` (say, to ``none``, to pass unsigned heads
off as fine), ``origin``, ``format`` or ``version`` row is found by ``verify``.
"""

from __future__ import annotations

import base64
import os
import sqlite3
import uuid

from trainguard import keys
from trainguard.errors import ConfigError
from trainguard.ledger.ratchet import Ratchet
from trainguard.ledger.store import Store, describe

__all__ = ["FORMAT", "VERSION", "open_meta", "resolve_key"]

FORMAT = "trainguard.ledger"
VERSION = "1"


def resolve_key(key: keys.PrivateKey | str | os.PathLike[str] | None) -> keys.PrivateKey | None:
    if isinstance(key, str | os.PathLike):
        return keys.load_private_key(key)
    return key


def open_meta(
    store: Store, key: keys.PrivateKey | None, ratchet: Ratchet | None, *, run: bool = False
) -> tuple[str, bytes | None]:
    """Create or check the header; returns (origin, epoch-0 / fixed public key).
    ``run``: opened by a run's supervisor with that run's own ``key`` (or none)."""
    with store.transaction("the ledger header") as c:
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        if not meta:
            meta = {
                "format": FORMAT,
                "version": VERSION,
                "origin": f"{FORMAT}/{uuid.uuid4().hex}",
                "mode": "none",
                "first_key": "",
            }
            c.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            where = describe(store.location)
            raise ConfigError(f"{where} is not a version {VERSION} trainguard ledger")
        mode, first = meta.get("mode", "none"), meta.get("first_key", "")
        if run or mode == "run":
            _run_mode(c, mode, key, ratchet, run)
            return meta["origin"], None
        pub = keys.public_raw(keys.public_key_of(key)) if key is not None else None
        if not first and (pub is not None or ratchet is not None):
            (unsigned,) = c.execute("SELECT count(*) FROM heads").fetchone()
            if unsigned:
                raise ConfigError(
                    "this ledger already has unsigned heads (a witness without a key): "
                    "start a new ledger to sign heads"
                )
        if ratchet is not None:
            if mode == "key":
                raise ConfigError("this ledger is signed with a fixed key: open it without ratchet")
            with ratchet.locked():
                if not ratchet.exists():
                    if first:
                        raise ConfigError(
                            f"the ratchet key {ratchet.path} is missing: this ledger's "
                            "chain of heads cannot continue"
                        )
                    seed = keys.ed25519_seed(key) if key is not None else os.urandom(32)
                    ratchet.start(seed)
                    pub = keys.public_raw(keys.public_key_of(keys.ed25519_from_seed(seed)))
                    first = base64.b64encode(pub).decode()
                    _set(c, mode="ratchet", first_key=first)
                else:
                    ratchet.load()  # unreadable or loose permissions: say so now
                    if pub is not None and base64.b64encode(pub).decode() != first:
                        raise ConfigError("the given key is not this ledger's epoch-0 key")
        elif pub is not None:
            if mode == "ratchet":
                raise ConfigError("this ledger's heads use a ratchet: open it with ratchet=True")
            b64 = base64.b64encode(pub).decode()
            if first and first != b64:
                raise ConfigError(
                    "this ledger's heads are signed with another key "
                    f"({_fp(first)}); this one is {_fp(b64)}"
                )
            if not first:
                _set(c, mode="key", first_key=b64)
                first = b64
    return meta["origin"], base64.b64decode(first) if first else None


def _run_mode(
    c: sqlite3.Connection,
    mode: str,
    key: keys.PrivateKey | None,
    ratchet: Ratchet | None,
    run: bool,
) -> None:
    if not run:  # a job process (or a later reader) on a run ledger: append, never sign
        if key is not None or ratchet is not None:
            raise ConfigError(
                "this ledger's heads are signed by the supervisor of each `trainguard run`, "
                "with a key of that run's own: open it without a key"
            )
        return
    if mode in ("key", "ratchet"):
        raise ConfigError(
            f"this ledger's heads are signed with a {'fixed key' if mode == 'key' else 'ratchet'}"
            ": give `trainguard run` that key (--ledger-key), or a new --ledger folder"
        )
    if mode != "run":
        (unsigned,) = c.execute("SELECT count(*) FROM heads").fetchone()
        if unsigned:
            raise ConfigError(
                "this ledger already has unsigned heads (a witness without a key): "
                "start a new ledger folder for `trainguard run`"
            )
        _set(c, mode="run")


def _set(c: sqlite3.Connection, **values: str) -> None:
    for k, v in values.items():
        c.execute("UPDATE meta SET value = ? WHERE key = ?", (v, k))


def _fp(b64: str) -> str:
    return keys.fingerprint(keys.public_key_from_raw(base64.b64decode(b64)))
