"""The forward-secure head key: chain, erasure, theft, crash between commit and advance."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from ledgerkit import db, messages

from trainguard import keys
from trainguard.errors import ConfigError
from trainguard.ledger import Ledger, note, verify
from trainguard.ledger.ratchet import Ratchet, next_seed


def _ratchet_ledger(path: Path, n: int = 23, every: int = 5, **kw: object) -> bytes:
    with Ledger(path, ratchet=True, head_every=every, **kw) as led:  # type: ignore[arg-type]
        for i in range(n):
            led.append_event(str(i))
        assert led.first_public_key is not None
        return led.first_public_key


def test_chain_of_heads_verifies_from_the_first_key(tmp_path: Path) -> None:
    first = _ratchet_ledger(tmp_path / "L")
    result = verify(tmp_path / "L", public_key=first)
    assert result.intact and result.heads == 5 and result.heads_verified == 5
    epochs = [note.parse(t).epoch for (t,) in db(tmp_path / "L").execute("SELECT note FROM heads")]
    assert epochs == [0, 1, 2, 3, 4]
    assert Ratchet(tmp_path / "L").load()[0] == 5


def test_old_seed_is_gone_from_disk(tmp_path: Path, keypair) -> None:
    path = tmp_path / "L"
    seed0 = keys.ed25519_seed(keys.load_private_key(keypair[0]))
    first = _ratchet_ledger(path, n=5, every=5, key=keypair[0])
    assert first == keys.public_raw(keys.load_public_key(keypair[1]))
    epoch, seed = Ratchet(path).load()
    assert epoch == 1 and seed == next_seed(seed0) != seed0
    assert oct((path / "ratchet.key").stat().st_mode & 0o777) == "0o600"
    for f in path.iterdir():
        data = f.read_bytes()
        assert seed0 not in data and base64.b64encode(seed0) not in data, f


def test_stolen_current_key_cannot_resign_earlier_heads(tmp_path: Path) -> None:
    """The thief has today's seed; rewriting record 3 needs the head of epoch 0 (size 5)
    re-signed, which today's key cannot do in a way the chain accepts."""
    path = tmp_path / "L"
    first = _ratchet_ledger(path)
    epoch, stolen = Ratchet(path).load()
    c = db(path)
    c.execute("UPDATE records SET body = replace(body, '\"3\"', '\"x\"') WHERE seq = 4")
    (text,) = c.execute("SELECT note FROM heads WHERE id = 1").fetchone()
    cp = note.parse(text)
    body = cp.body.replace(f"epoch {cp.epoch}", f"epoch {epoch}")
    forged = note.sign(body, cp.origin, keys.ed25519_from_seed(stolen))
    c.execute("UPDATE heads SET note = ? WHERE id = 1", (forged.text,))
    text = messages(verify(path, public_key=first).findings)
    assert "ledger head #1" in text


def test_heads_removed_are_found_by_the_key_epoch(tmp_path: Path) -> None:
    path = tmp_path / "L"
    first = _ratchet_ledger(path)
    db(path).execute("DELETE FROM heads WHERE id > 2")
    text = messages(verify(path, public_key=first).findings)
    assert "moved on to epoch 5, but the last verified head is epoch 1" in text


def test_a_head_whose_predecessor_is_gone_is_unverifiable(tmp_path: Path) -> None:
    path = tmp_path / "L"
    first = _ratchet_ledger(path)
    db(path).execute("DELETE FROM heads WHERE id = 2")
    text = messages(verify(path, public_key=first).findings)
    assert "epoch 2, which no verified head leads to" in text


def test_crash_between_commit_and_advance_recovers(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "L"
    first = _ratchet_ledger(path, n=5, every=5)
    # Simulate: the head of epoch 1 was committed, the seed never advanced.
    with monkeypatch.context() as m:
        m.setattr(Ratchet, "advance", lambda self, e, s: (e, s))
        with Ledger(path, ratchet=True, head_every=5) as led:
            for i in range(5):
                led.append_event(str(i))
    assert Ratchet(path).load()[0] == 1
    with Ledger(path, ratchet=True, head_every=5) as led:
        for i in range(5):
            led.append_event(str(i))
    epochs = [note.parse(t).epoch for (t,) in db(path).execute("SELECT note FROM heads")]
    assert epochs == [0, 1, 2]
    assert verify(path, public_key=first).intact


def test_torn_next_seed_file_falls_back(tmp_path: Path) -> None:
    path = tmp_path / "L"
    first = _ratchet_ledger(path, n=5, every=5)
    (path / "ratchet.key.next").write_bytes(b'{"form')
    assert Ratchet(path).load()[0] == 1
    _ratchet_ledger(path, n=5, every=5)
    assert verify(path, public_key=first).intact


def test_missing_ratchet_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "L"
    _ratchet_ledger(path, n=5, every=5)
    (path / "ratchet.key").unlink()
    with pytest.raises(ConfigError, match="missing"):
        Ledger(path, ratchet=True)


def test_loose_permissions_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "L"
    _ratchet_ledger(path, n=5, every=5)
    (path / "ratchet.key").chmod(0o644)
    with pytest.raises(ConfigError, match="group or others"):
        Ledger(path, ratchet=True)


def test_public_state_is_published(tmp_path: Path) -> None:
    path = tmp_path / "L"
    _ratchet_ledger(path, n=10, every=5)
    state = json.loads((path / "ratchet.pub").read_text())
    (t,) = db(path).execute("SELECT note FROM heads ORDER BY id DESC LIMIT 1").fetchone()
    assert state["epoch"] == 2 and base64.b64decode(state["public_key"]) == note.parse(t).next_key
