"""Hostile database contents: verify reports them, it never crashes on them."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from ledgerkit import db

from trainguard.errors import VerificationError
from trainguard.ledger import read_records, verify

EDITS = [
    "UPDATE records SET body = x'' WHERE seq = 3",
    "UPDATE records SET body = 12 WHERE seq = 3",
    "UPDATE records SET body = '[1,2]' WHERE seq = 3",
    "UPDATE records SET leaf = 5 WHERE seq = 3",
    "UPDATE records SET root = 'abc' WHERE seq = 3",
    "UPDATE records SET seq = seq + 100 WHERE seq = 25",
    "UPDATE heads SET note = '' WHERE id = 1",
    "UPDATE heads SET note = x'ff00' WHERE id = 1",
    "UPDATE heads SET note = 'just text' WHERE id = 1",
    "UPDATE state SET size = 'x'",
    "DELETE FROM state",
    "DELETE FROM meta",
    "UPDATE meta SET value = '!!' WHERE key = 'first_key'",
    "UPDATE meta SET value = 'other' WHERE key = 'origin'",
    "DROP TABLE heads",
    "DROP TABLE records",
]


@pytest.mark.parametrize("sql", EDITS)
def test_hostile_edit_is_a_finding(filled, keypair, sql: str) -> None:
    path = filled(25)
    db(path).execute(sql)
    result = verify(path, public_key=keypair[1])
    assert not result.intact, sql
    with contextlib.suppress(VerificationError):
        read_records(path)


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(VerificationError):
        verify(tmp_path)
    with pytest.raises(VerificationError):
        read_records(tmp_path)
