"""Every way of rewriting history that verify must find, each named by where it is."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from ledgerkit import db, messages

from trainguard import keys
from trainguard.findings import Rule
from trainguard.ledger import Ledger, note, verify
from trainguard.ledger.record import Record
from trainguard.ledger.tree import Frontier, leaf_hash


def _rehash(path: Path, first: int = 1) -> None:
    """What a careful attacker does after an edit: recompute every stored hash and root
    (and the tree state), so only signed heads, the witness or the tip can tell."""
    c = db(path)
    tree = Frontier()
    rows = c.execute("SELECT seq, body FROM records ORDER BY seq").fetchall()
    for seq, body in rows:
        leaf = leaf_hash(body)
        tree.push(leaf)
        if seq >= first:
            c.execute(
                "UPDATE records SET leaf = ?, root = ? WHERE seq = ?", (leaf, tree.root(), seq)
            )
    c.execute("UPDATE state SET size = ?, frontier = ?", (tree.size, tree.to_bytes()))


def _edit(path: Path, seq: int, message: str) -> None:
    c = db(path)
    (body,) = c.execute("SELECT body FROM records WHERE seq = ?", (seq,)).fetchone()
    rec = Record.from_leaf(body)
    forged = Record(**{**{f: getattr(rec, f) for f in rec.__slots__}, "message": message})
    c.execute("UPDATE records SET body = ? WHERE seq = ?", (forged.leaf(), seq))


def test_edit_in_place_names_the_seq(filled: Callable[..., Path], keypair) -> None:
    path = filled(25)
    _edit(path, 7, "nothing happened")
    result = verify(path, public_key=keypair[1])
    assert not result.intact
    assert all(f.rule is Rule.LEDGER_TAMPERED for f in result.findings)
    first = result.findings[0]
    assert first.location.member == "seq 7" and "record 7 was changed" in first.message
    assert "ledger head" in messages(result.findings)  # the heads at 10 and 20 disagree too


def test_edit_with_hashes_recomputed_is_caught_by_heads(filled, keypair) -> None:
    path = filled(25)
    _edit(path, 7, "nothing happened")
    _rehash(path)
    text = messages(verify(path, public_key=keypair[1]).findings)
    assert "seq" not in text.split(":")[0]  # no per-record trace left...
    assert "ledger head #1 (size 10) does not match the records" in text  # ...but the head


def test_edit_with_leaf_recomputed_breaks_the_chain(filled, keypair) -> None:
    path = filled(25)
    _edit(path, 7, "x")
    c = db(path)
    (body,) = c.execute("SELECT body FROM records WHERE seq = 7").fetchone()
    c.execute("UPDATE records SET leaf = ? WHERE seq = 7", (leaf_hash(body),))
    (first, *_) = verify(path).findings
    assert first.location.member == "seq 7" and "hash chain breaks at record 7" in first.message


def test_deleted_row_is_a_gap(filled, keypair) -> None:
    path = filled(25)
    db(path).execute("DELETE FROM records WHERE seq = 12")
    result = verify(path, public_key=keypair[1])
    assert result.findings[0].location.member == "seq 12"
    assert "records 12..12 are missing" in result.findings[0].message


def test_deleted_tail_rows_are_found(filled, keypair) -> None:
    path = filled(25)
    db(path).execute("DELETE FROM records WHERE seq > 22")
    text = messages(verify(path, public_key=keypair[1]).findings)
    assert "records 23..25 are missing from the end" in text


def test_swapped_rows_are_reordering(filled, keypair) -> None:
    path = filled(25)
    c = db(path)
    a = c.execute("SELECT body, leaf, root FROM records WHERE seq = 3").fetchone()
    b = c.execute("SELECT body, leaf, root FROM records WHERE seq = 5").fetchone()
    c.execute("UPDATE records SET body = ?, leaf = ?, root = ? WHERE seq = 3", b)
    c.execute("UPDATE records SET body = ?, leaf = ?, root = ? WHERE seq = 5", a)
    result = verify(path, public_key=keypair[1])
    where = [f.location.member for f in result.findings if "reordered" in f.message]
    assert where == ["seq 3", "seq 5"]


def test_truncation_past_a_signed_head(filled, keypair) -> None:
    """The attacker deletes the tail, rewinds the tree state and removes the tip file:
    the signed heads that covered the tail still say how long history was."""
    path = filled(25)
    c = db(path)
    c.execute("DELETE FROM records WHERE seq > 15")
    _rehash(path)
    (path / "ledger.tip").unlink()
    text = messages(verify(path, public_key=keypair[1]).findings)
    assert "truncated back past ledger head #2" in text and "covers 20 records, 15 remain" in text


def test_truncation_with_heads_removed_needs_the_witness(tmp_path: Path, keypair) -> None:
    path, witness = tmp_path / "L", tmp_path / "witness.jsonl"
    with Ledger(path, key=keypair[0], head_every=10, witness=witness) as led:
        for i in range(25):
            led.append_event(str(i))
    c = db(path)
    c.execute("DELETE FROM records WHERE seq > 15")
    c.execute("DELETE FROM heads WHERE size > 15")
    _rehash(path)
    (path / "ledger.tip").unlink()
    assert verify(path, public_key=keypair[1]).intact  # nothing on the machine can tell...
    result = verify(path, public_key=keypair[1], witness=witness)
    text = messages(result.findings)
    assert "truncated back past witness line 2" in text  # ...the copy elsewhere can


def test_witness_disagreement_after_rewrite_and_resign(tmp_path: Path, keypair) -> None:
    """An attacker holding the (non-ratchet) key rewrites a record and re-signs every
    head: everything on the machine is consistent again, the witness is not."""
    path, witness = tmp_path / "L", tmp_path / "witness.jsonl"
    with Ledger(path, key=keypair[0], head_every=10, witness=witness) as led:
        for i in range(20):
            led.append_event(str(i))
        origin = led.origin
    _edit(path, 4, "all good")
    _rehash(path)
    c = db(path)
    c.execute("DELETE FROM heads")
    tree = Frontier()
    for (leaf,) in c.execute("SELECT leaf FROM records ORDER BY seq").fetchall():
        tree.push(leaf)
        if tree.size % 10 == 0:
            head = note.sign(
                note.body_text(origin, tree.size, tree.root()),
                origin,
                keys.load_private_key(keypair[0]),
            )
            c.execute("INSERT INTO heads (size, note) VALUES (?, ?)", (tree.size, head.text))
    assert verify(path, public_key=keypair[1]).intact
    result = verify(path, public_key=keypair[1], witness=witness)
    text = messages(result.findings)
    assert "witness line 1 (size 10) does not match the records" in text
    assert "the ledger lacks the head the witness holds" in text


def test_forged_head_signature(filled, keypair) -> None:
    path = filled(25)
    c = db(path)
    (text,) = c.execute("SELECT note FROM heads WHERE id = 2").fetchone()
    sig_line = text.split("\n")[-2]
    forged_sig = sig_line[:-8] + ("AAAAAAA=" if not sig_line.endswith("AAAAAAA=") else "BBBBBBB=")
    c.execute("UPDATE heads SET note = ? WHERE id = 2", (text.replace(sig_line, forged_sig),))
    (finding,) = verify(path, public_key=keypair[1]).findings
    assert finding.location.member == "ledger head #2"
    assert "signature does not verify" in finding.message


def test_head_signed_by_another_key(filled, keypair) -> None:
    path = filled(25)
    c = db(path)
    (text,) = c.execute("SELECT note FROM heads WHERE id = 1").fetchone()
    cp = note.parse(text)
    private, _ = keys.generate_ed25519()
    other = note.sign(cp.body, cp.origin, keys.load_private_key(_write_key(path.parent, private)))
    c.execute("UPDATE heads SET note = ? WHERE id = 1", (other.text,))
    (finding,) = verify(path, public_key=keypair[1]).findings
    assert "ledger head #1" in finding.message and "signature does not verify" in finding.message


def test_without_a_key_the_stored_key_is_used_and_said(filled) -> None:
    path = filled(25)
    result = verify(path)
    assert result.intact and result.heads_verified == 3
    assert "key stored in the ledger itself" in result.notes[0]


@pytest.mark.parametrize("how", ["truncate-json", "garbage"])
def test_corrupt_last_row_is_reported(filled, keypair, how: str) -> None:
    path = filled(25, every=100)
    c = db(path)
    new = "substr(body, 1, length(body) - 9)" if how == "truncate-json" else "x'00ff00'"
    c.execute(f"UPDATE records SET body = {new} WHERE seq = 25")
    (first, *_) = verify(path, public_key=keypair[1]).findings
    assert first.location.member == "seq 25"
    assert "record 25 is not a readable record" in first.message


def _write_key(directory: Path, pem: bytes) -> Path:
    p = directory / "other.key"
    p.write_bytes(pem)
    os.chmod(p, 0o600)
    return p
