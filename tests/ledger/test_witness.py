"""Heads sent to a second place: a file, a command, and what happens when it fails."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from trainguard.ledger import Ledger, note, read_records, verify


def test_witness_command_receives_each_signed_note(tmp_path: Path, keypair) -> None:
    got = tmp_path / "got"
    script = f"import sys; open({str(got)!r}, 'a').write(sys.stdin.read() + '\\x00')"
    with Ledger(
        tmp_path / "L", key=keypair[0], head_every=5, witness_command=[sys.executable, "-c", script]
    ) as led:
        for i in range(12):
            led.append_event(str(i))
    notes = [note.parse(t) for t in got.read_text().split("\x00") if t]
    assert [n.size for n in notes] == [5, 10, 12]
    assert all(n.signatures for n in notes)
    lines = "".join(json.dumps({"note": n.text}) + "\n" for n in notes)
    (tmp_path / "w.jsonl").write_text(lines)
    assert verify(tmp_path / "L", public_key=keypair[1], witness=tmp_path / "w.jsonl").intact


def test_failing_witness_is_recorded_not_raised(tmp_path: Path, keypair) -> None:
    with Ledger(
        tmp_path / "L",
        key=keypair[0],
        head_every=5,
        witness_command=[sys.executable, "-c", "import sys; sys.exit(3)"],
    ) as led:
        for i in range(5):
            led.append_event(str(i))
    failures = [r for r in read_records(tmp_path / "L") if "could not be exported" in r.message]
    assert failures and failures[0].severity == "medium" and "exited 3" in failures[0].message
    assert verify(tmp_path / "L", public_key=keypair[1]).intact


def test_witness_without_a_key_pins_roots(tmp_path: Path) -> None:
    path, witness = tmp_path / "L", tmp_path / "w.jsonl"
    with Ledger(path, head_every=4, witness=witness) as led:
        for i in range(10):
            led.append_event(str(i))
    result = verify(path, witness=witness)
    assert result.intact and result.witness_heads == 3
    assert any("no signing key" in n for n in result.notes)


def test_witness_file_of_several_ledgers(tmp_path: Path) -> None:
    witness = tmp_path / "w.jsonl"
    for name in ("A", "B"):
        with Ledger(tmp_path / name, head_every=4, witness=witness) as led:
            for i in range(4):
                led.append_event(str(i))
    result = verify(tmp_path / "A", witness=witness)
    assert result.intact and result.witness_heads == 1
    assert any("other ledgers" in n for n in result.notes)


def test_signing_cannot_start_after_unsigned_heads(tmp_path: Path, keypair) -> None:
    import pytest

    from trainguard.errors import ConfigError

    with Ledger(tmp_path / "L", head_every=2, witness=tmp_path / "w.jsonl") as led:
        led.append_event("a")
        led.append_event("b")
    with pytest.raises(ConfigError, match="unsigned heads"):
        Ledger(tmp_path / "L", key=keypair[0])
