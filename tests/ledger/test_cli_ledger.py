"""``trainguard ledger verify|show`` and their exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ledgerkit import db

from trainguard.cli import main
from trainguard.ledger import Ledger


def test_ledger_cli_show_verify_and_tamper(tmp_path: Path, capsys, monkeypatch) -> None:
    pytest.importorskip("cryptography")
    keys = tmp_path / "keys"
    assert main(["keygen", "--out", str(keys)]) == 0
    folder = tmp_path / "ledger"
    with Ledger(folder, key=keys / "ledger.key") as led:
        led.append_event("training started", step=0)
        led.append_event("checkpoint saved", step=100, evidence={"file": "ckpt.pt"})
    monkeypatch.setenv("TRAINGUARD_LEDGER", str(folder))
    capsys.readouterr()
    assert main(["ledger", "show", "--format", "json", "--key", str(keys / "ledger.pub")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["verified"] is True
    assert [r["message"] for r in doc["records"]] == ["training started", "checkpoint saved"]
    assert {"seq", "time", "kind", "severity", "host", "pid", "uid", "rank", "step"} <= set(
        doc["records"][0]
    )
    assert main(["ledger", "verify", "--key", str(keys / "ledger.pub")]) == 0
    con = db(folder)
    (body,) = con.execute("SELECT body FROM records WHERE seq = 1").fetchone()
    edited = bytes(body).replace(b"training started", b"training stopped")
    con.execute("UPDATE records SET body = ? WHERE seq = 1", (edited,))
    con.commit()
    con.close()
    capsys.readouterr()
    assert main(["ledger", "verify", "--format", "json", "--key", str(keys / "ledger.pub")]) == 1
    rules = {f["rule"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert rules == {"ledger.tampered"}
