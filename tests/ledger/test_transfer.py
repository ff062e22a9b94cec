"""JSONL export and import: a shipped copy verifies on its own, tampering travels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from ledgerkit import db

from trainguard.errors import ConfigError, VerificationError
from trainguard.ledger import Ledger, export_jsonl, import_jsonl, read_records, verify


def test_export_import_verify_clean(filled, keypair, tmp_path: Path) -> None:
    path = filled(25)
    out = tmp_path / "ledger.jsonl"
    assert export_jsonl(path, out) == 25
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert lines[0]["type"] == "trainguard.ledger" and lines[0]["tip"] == 25
    assert [x["type"] for x in lines[1:]] == ["record"] * 25 + ["head"] * 3
    copy = tmp_path / "copy"
    assert import_jsonl(out, copy) == 25
    result = verify(copy, public_key=keypair[1])
    assert result.intact and result.heads_verified == 3 and result.records == 25
    assert read_records(copy) == read_records(path)
    direct = verify(out, public_key=keypair[1])  # a .jsonl is verified through an import
    assert direct.intact and direct.path == str(out)


def test_ratchet_export_verifies_from_the_first_key(tmp_path: Path) -> None:
    with Ledger(tmp_path / "L", ratchet=True, head_every=4) as led:
        for i in range(10):
            led.append_event(str(i), evidence={"odd": "\udcff"})
        first = led.first_public_key
    buf = io.StringIO()
    export_jsonl(tmp_path / "L", buf)
    (tmp_path / "x.jsonl").write_text(buf.getvalue())
    result = verify(tmp_path / "x.jsonl", public_key=first)
    assert result.intact and result.heads_verified == 3


def test_tampered_export_is_caught(filled, keypair, tmp_path: Path) -> None:
    path = filled(25)
    out = tmp_path / "ledger.jsonl"
    export_jsonl(path, out)
    lines = out.read_text().splitlines()
    rec = json.loads(lines[5])
    rec["body"] = rec["body"].replace("step 4", "step X")
    lines[5] = json.dumps(rec)
    out.write_text("\n".join(lines) + "\n")
    result = verify(out, public_key=keypair[1])
    assert result.findings[0].location.member == "seq 5"
    assert result.findings[0].location.path == str(out)


def test_import_refuses_an_existing_ledger_and_bad_lines(filled, tmp_path: Path) -> None:
    path = filled(3)
    out = tmp_path / "e.jsonl"
    export_jsonl(path, out)
    with pytest.raises(ConfigError):
        import_jsonl(out, path)
    out.write_text(out.read_text() + "{not json\n")
    with pytest.raises(VerificationError, match="not JSON"):
        import_jsonl(out, tmp_path / "new")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(VerificationError):
        import_jsonl(tmp_path / "empty.jsonl", tmp_path / "new2")


def test_a_gap_travels_in_the_export(filled, keypair, tmp_path: Path) -> None:
    path = filled(25)
    db(path).execute("DELETE FROM records WHERE seq = 3")
    export_jsonl(path, tmp_path / "e.jsonl")
    result = verify(tmp_path / "e.jsonl", public_key=keypair[1])
    assert result.findings[0].location.member == "seq 3"
