"""Appending, reading back, signed heads and the JSON contract of ``ledger show``."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from ledgerkit import db

import trainguard.ledger as ledger_pkg
from trainguard import keys
from trainguard.env import merkle
from trainguard.errors import ConfigError, VerificationError
from trainguard.findings import Finding, Location, Rule, Severity
from trainguard.ledger import Ledger, Record, check, default_path, note, show, verify
from trainguard.ledger.store import network_fs_type
from trainguard.ledger.tree import Frontier, leaf_hash

CONTRACT = {"seq", "time", "kind", "alert", "severity", "host", "pid", "uid", "rank", "step"}
CONTRACT |= {"message", "evidence"}


def test_public_names_are_exported() -> None:
    for name in ledger_pkg.__all__:
        assert hasattr(ledger_pkg, name), name


def test_frontier_roots_equal_merkle_root_at_every_size() -> None:
    leaves = [f"leaf {i}".encode() for i in range(130)]
    tree = Frontier()
    assert tree.root() == merkle.root([])
    for i, data in enumerate(leaves, 1):
        tree.push(leaf_hash(data))
        assert tree.root() == merkle.root(leaves[:i]), i
        again = Frontier.from_bytes(tree.size, tree.to_bytes())
        assert again.root() == tree.root()


def test_clean_ledger_verifies_with_zero_findings(filled: Callable[..., Path], keypair) -> None:
    path = filled(25, every=10)
    result = verify(path, public_key=keypair[1])
    assert result.intact and result.findings == () and result.notes == ()
    assert (result.records, result.heads, result.heads_verified) == (25, 3, 3)  # 10, 20, close
    assert check(path, public_key=keypair[1]) == 0


def test_records_events_and_alerts(tmp_path: Path) -> None:
    finding = Finding(
        Rule.ENV_FILE_MODIFIED,
        Severity.HIGH,
        "adamw.py changed",
        Location("/venv/torch/optim/adamw.py", offset=7),
        {"sha256": "ab"},
    )
    with Ledger(tmp_path / "L", rank=3) as led:
        e = led.append_event("started", step=0, evidence={"path": Path("/x"), "lr": 1e-3})
        a = led.append_alert(finding, step=5)
        b = led.append_alert("process.killed", message="rank 2 got SIGKILL", rank=2)
        assert [r.seq for r in led.records()] == [1, 2, 3]
        assert [r.seq for r in led.records(alert=Rule.ENV_FILE_MODIFIED)] == [2]
    assert (e.kind, e.rank, e.step, e.evidence) == ("event", 3, 0, {"path": "/x", "lr": 0.001})
    assert (a.alert, a.severity, a.message) == ("env.file_modified", "high", "adamw.py changed")
    assert a.evidence["location"]["offset"] == 7 and a.evidence["sha256"] == "ab"
    assert (b.alert, b.severity, b.rank) == ("process.killed", "high", 2)
    assert e.time.endswith("Z") and e.pid > 0 and e.host
    doc = show(tmp_path / "L", alert="process.killed")
    assert doc["verified"] is True and len(doc["records"]) == 1
    assert set(doc["records"][0]) == CONTRACT
    json.dumps(doc)


def test_leaf_is_canonical_json_of_the_record(tmp_path: Path) -> None:
    with Ledger(tmp_path / "L") as led:
        rec = led.append_event("x", evidence={"b": 1, "a": [1.5, "é"]})
    body = db(tmp_path / "L").execute("SELECT body FROM records").fetchone()[0]
    assert body == rec.leaf()
    assert body.index(b'"alert"') < body.index(b'"evidence"')  # sorted keys, no spaces
    assert Record.from_leaf(body) == rec


def test_signed_head_is_a_c2sp_checkpoint(tmp_path: Path, keypair) -> None:
    with Ledger(tmp_path / "L", key=keypair[0], head_every=0) as led:
        for i in range(5):
            led.append_event(str(i))
        head = led.sign_head()
        origin = led.origin
    lines = head.text.split("\n")
    assert lines[0] == origin and lines[1] == "5"
    assert base64.b64decode(lines[2]) == head.root
    assert lines[3].startswith("meta ") and lines[4] == ""  # the header's digest, signed
    assert head.meta == note.meta_digest(dict(db(tmp_path / "L").execute("SELECT * FROM meta")))
    assert lines[5].startswith(f"\u2014 {origin} ")
    raw = base64.b64decode(lines[5].rsplit(" ", 1)[1])
    pub = keys.load_public_key(keypair[1])
    assert raw[:4] == note.key_id(origin, keys.public_raw(pub))
    keys.verify(pub, head.body.encode(), raw[4:])
    assert note.parse(head.text) == head
    with pytest.raises(ValueError):
        note.parse("no blank line")


def test_sign_head_without_key_is_a_config_error(tmp_path: Path) -> None:
    with Ledger(tmp_path / "L") as led, pytest.raises(ConfigError):
        led.sign_head()


def test_other_key_is_refused(tmp_path: Path, keypair, filled) -> None:
    path = filled(3)
    private, _ = keys.generate_ed25519()
    other = tmp_path / "other.key"
    other.write_bytes(private)
    other.chmod(0o600)
    with pytest.raises(ConfigError, match="another key"):
        Ledger(path, key=other)
    with pytest.raises(ConfigError, match="fixed key"):
        Ledger(path, ratchet=True)


def test_verify_of_nothing_raises(tmp_path: Path) -> None:
    with pytest.raises(VerificationError):
        verify(tmp_path / "nope")


def test_default_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRAINGUARD_LEDGER", raising=False)
    assert default_path() == Path("trainguard-ledger")
    monkeypatch.setenv("TRAINGUARD_LEDGER", "/runs/l")
    assert default_path() == Path("/runs/l")
    assert default_path("x") == Path("x")


def test_network_file_systems_are_detected(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/vda / ext4 rw 0 0\n"
        "srv:/export /mnt/nfs nfs4 rw 0 0\n"
        "sshfs#u@h: /mnt/my\\040fuse fuse.sshfs rw 0 0\n"
        "lus@o2ib:/fs /lustre lustre rw 0 0\n"
        "tmpfs /mnt/nfs/tmp tmpfs rw 0 0\n"
    )
    assert network_fs_type(Path("/mnt/nfs/run/ledger"), str(mounts)) == "nfs4"
    assert network_fs_type(Path("/mnt/my fuse/l"), str(mounts)) == "fuse.sshfs"
    assert network_fs_type(Path("/lustre/x"), str(mounts)) == "lustre"
    assert network_fs_type(Path("/mnt/nfs/tmp/l"), str(mounts)) is None
    assert network_fs_type(Path("/home/x"), str(mounts)) is None


def test_rollback_journal_mode_works(tmp_path: Path, keypair) -> None:
    with Ledger(tmp_path / "L", key=keypair[0], head_every=3, journal="delete") as led:
        for i in range(7):
            led.append_event(str(i))
    mode = db(tmp_path / "L").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "delete"
    assert verify(tmp_path / "L", public_key=keypair[1]).intact


def test_one_connection_per_process(tmp_path: Path) -> None:
    a = Ledger(tmp_path / "L")
    b = Ledger(tmp_path / "L")
    assert a._store is b._store
    a.append_event("a")
    a.close()
    b.append_event("b")  # still open: the connection is reference counted
    b.close()
    assert [r.message for r in ledger_pkg.read_records(tmp_path / "L")] == ["a", "b"]
    with pytest.raises(ConfigError):
        b.append_event("closed")


def test_unreadable_row_is_shown_not_skipped(tmp_path: Path) -> None:
    with Ledger(tmp_path / "L") as led:
        led.append_event("fine")
    db(tmp_path / "L").execute("UPDATE records SET body = x'7b7b' WHERE seq = 1")
    (rec,) = ledger_pkg.read_records(tmp_path / "L")
    assert rec.alert == "ledger.tampered" and rec.seq == 1


def test_database_that_is_not_sqlite_is_reported(tmp_path: Path) -> None:
    with Ledger(tmp_path / "L") as led:
        led.append_event("fine")
    (tmp_path / "L" / "ledger.sqlite3").write_bytes(b"not a database" * 100)
    for extra in ("-wal", "-shm"):
        (tmp_path / "L" / f"ledger.sqlite3{extra}").unlink(missing_ok=True)
    try:
        result = verify(tmp_path / "L")
    except VerificationError:
        return  # unusable input is allowed to raise
    assert not result.intact


def test_sqlite_is_new_enough() -> None:
    assert sqlite3.sqlite_version_info >= (3, 22)


def test_leaf_bytes_are_rfc8785_whichever_path_made_them() -> None:
    """``Record.leaf`` takes the fast path for float-free records: it must give exactly
    the bytes rfc8785 gives, or verify on another machine would disagree."""
    import rfc8785
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalar = st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text()
    value = st.recursive(
        scalar, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner)
    )

    @settings(max_examples=100, deadline=None)
    @given(st.text(), st.dictionaries(st.text(), value, max_size=5))
    def check(message: str, evidence: dict[str, object]) -> None:
        rec = Record(kind="event", message=message, evidence=evidence, seq=1, pid=1)
        try:
            expected = rfc8785.dumps(rec.to_json())
        except Exception:  # noqa: BLE001 - lone surrogates: rfc8785 refuses, we escape
            return
        assert rec.leaf() == expected

    check()
