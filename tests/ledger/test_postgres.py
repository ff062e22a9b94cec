"""The ledger on a real PostgreSQL server (``trainguard.ledger.pg``).

What the PostgreSQL store trusts is the server's answer; the history is judged the same
way as the SQLite file's: here the attacker is whoever can write the tables, and every
edit below is one such a person can make with plain SQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from ledgerkit import WRITER, messages

from trainguard.cli import main
from trainguard.errors import ConfigError
from trainguard.ledger import Ledger, read_records, show
from trainguard.ledger.pg import split
from trainguard.ledger.store import LedgerWriteError
from trainguard.ledger.verify import verify


def _raw(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """A plain connection on the ledger's schema: what a table writer has."""
    libpq, name = split(url)
    conn = psycopg.connect(libpq, autocommit=True)
    conn.execute(f"SET search_path TO {name}")
    return conn


@pytest.fixture
def signed(pg_ledger: str, keypair: tuple[Path, Path]) -> Iterator[str]:
    """25 events, a signed head every 10 (3 heads)."""
    with Ledger(pg_ledger, key=keypair[0], head_every=10) as led:
        for i in range(25):
            led.append_event(f"step {i}", step=i, evidence={"loss": 1.0 / (i + 1)})
    yield pg_ledger


def _check(url: str, pub: Path) -> tuple[bool, str]:
    result = verify(url, public_key=pub, witness_dir=False)
    return result.intact, messages(result.findings)


def test_round_trip_same_json_as_a_folder(signed: str, keypair, tmp_path: Path) -> None:
    result = verify(signed, public_key=keypair[1], witness_dir=False)
    assert result.intact, messages(result.findings)
    assert (result.records, result.heads, result.heads_verified) == (25, 3, 3)
    assert [r.seq for r in read_records(signed)] == list(range(1, 26))
    folder = tmp_path / "ledger"
    with Ledger(folder, key=keypair[0], head_every=10) as led:
        led.append_event("step 0", step=0)
    doc, other = show(signed, witness_dir=False), show(folder, witness_dir=False)
    assert doc["verified"] and set(doc) == set(other)
    assert set(doc["records"][0]) == set(other["records"][0])
    assert doc["records"][3]["message"] == "step 3"


def test_password_never_leaves_in_messages(pg_ledger: str) -> None:
    url = "postgresql://someone:s3cret-pw@127.0.0.1:1/nothing?ledger=x"
    with pytest.raises(LedgerWriteError) as err:
        Ledger(url)
    assert "s3cret-pw" not in str(err.value) and "***" in str(err.value)


@pytest.mark.parametrize("name", ["Bad-Name", "1abc", "x;drop table meta"])
def test_ledger_names_are_identifiers(pg_server: str, name: str) -> None:
    with pytest.raises(ConfigError, match="ledger name"):
        Ledger(f"{pg_server}?ledger={name}")


def test_ratchet_needs_a_folder(pg_ledger: str) -> None:
    with pytest.raises(ConfigError, match="ratchet"):
        Ledger(pg_ledger, ratchet=True)


def test_edited_body_is_named(signed: str, keypair) -> None:
    with _raw(signed) as c:
        c.execute(
            "UPDATE records SET body = convert_to(replace(convert_from(body, 'UTF8'), "
            "'step 3', 'step 9'), 'UTF8') WHERE seq = 4"
        )
    intact, text = _check(signed, keypair[1])
    assert not intact and "record 4" in text


def test_deleted_row_and_truncation(signed: str, keypair) -> None:
    with _raw(signed) as c:
        c.execute("DELETE FROM records WHERE seq = 7")
    intact, text = _check(signed, keypair[1])
    assert not intact and "7" in text


def test_truncation_past_a_signed_head(signed: str, keypair) -> None:
    with _raw(signed) as c:
        root = c.execute("SELECT root FROM records WHERE seq = 15").fetchone()
        assert root is not None
        c.execute("DELETE FROM records WHERE seq > 15")
        c.execute("UPDATE state SET size = 15")
    intact, text = _check(signed, keypair[1])
    assert not intact, "a ledger cut below its signed head must not verify"
    assert "head" in text


def test_meta_edit_is_caught(signed: str, keypair) -> None:
    with _raw(signed) as c:
        c.execute("UPDATE meta SET value = 'someone-else' WHERE key = 'origin'")
    intact, _ = _check(signed, keypair[1])
    assert not intact


def test_many_processes_one_tree(pg_ledger: str, keypair) -> None:
    """8 writers on 8 connections append at once; the tree has every acknowledged record
    once, in one order, and verifies."""
    procs = [
        subprocess.Popen(
            [sys.executable, WRITER, pg_ledger, "--count", "40", "--tag", f"w{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    acked: dict[str, set[int]] = {}
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        acked[f"w{i}"] = {int(line) for line in out.split()}
    records = read_records(pg_ledger)
    assert [r.seq for r in records] == list(range(1, 321))
    for tag, seqs in acked.items():
        assert len(seqs) == 40
        assert {r.seq for r in records if r.message.startswith(tag + " ")} == seqs
    with Ledger(pg_ledger, key=keypair[0]) as led:  # the supervisor signs over all of it
        led.sign_head()
    intact, text = _check(pg_ledger, keypair[1])
    assert intact, text


def test_cli_verify_show_report(signed: str, keypair, capsys, monkeypatch) -> None:
    monkeypatch.setenv("TRAINGUARD_WITNESS_DIR", "off")
    assert main(["ledger", "verify", "--ledger", signed, "--key", str(keypair[1])]) == 0
    assert "INTACT" in capsys.readouterr().out
    assert main(["ledger", "show", "--ledger", signed, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["records"]) == 25
    assert main(["report", "--ledger", signed, "--format", "json"]) == 0
    assert "step" in capsys.readouterr().out
    with _raw(signed) as c:
        c.execute("DELETE FROM records WHERE seq = 2")
    assert main(["ledger", "verify", "--ledger", signed, "--key", str(keypair[1])]) == 1
    assert "TAMPERED" in capsys.readouterr().out


def test_cli_missing_ledger_is_could_not_check(pg_server: str, capsys) -> None:
    sep = "&" if "?" in pg_server else "?"
    url = f"{pg_server}{sep}ledger=never_made_here"
    assert main(["ledger", "verify", "--ledger", url]) == 2
    assert "never_made_here" in capsys.readouterr().err


def test_guard_writes_alerts_to_postgres(pg_ledger: str, monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from trainguard.guard import Guard
    from trainguard.guard.checks.weights import WeightsCheck

    monkeypatch.setenv("TRAINGUARD_LEDGER", pg_ledger)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = Guard(model, opt, checks=[WeightsCheck()])
    try:
        for step in range(3):
            model(torch.randn(8, 4)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            if step == 1:
                with torch.no_grad():
                    model.weight.add_(1.0)  # tampering between two steps
            guard.step()
    finally:
        guard.close()
    alerts = read_records(pg_ledger, alert="runtime.weight_tamper")
    assert alerts and alerts[0].step == 3
    assert os.environ["TRAINGUARD_LEDGER"] == pg_ledger


def test_trainguard_run_keeps_its_ledger_in_postgres(pg_ledger: str, tmp_path: Path) -> None:
    """``trainguard run --ledger postgresql://...``: the run's origin, its signed heads, the
    job's own records and the supervisor's alerts land in the database; run folders go to
    the state folder; the ledger verifies against the run and its witness."""
    env = {k: v for k, v in os.environ.items() if k != "TRAINGUARD_LEDGER"}
    env["TRAINGUARD_STATE_DIR"] = str(tmp_path / "state")
    env["TRAINGUARD_WITNESS_DIR"] = str(tmp_path / "witness")
    job = "import os; os.kill(os.getpid(), 9)"  # dies by SIGKILL: process.killed
    done = subprocess.run(
        [sys.executable, "-m", "trainguard.launch", "--ledger", pg_ledger, "--no-env-verify",
         "--guard-timeout", "60", "--", sys.executable, "-c", job],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 128 + 9, done.stderr
    records = read_records(pg_ledger)
    (origin,) = [r for r in records if r.message == "run.origin"]
    assert [r.alert for r in records if r.kind == "alert"] == ["process.killed"]
    assert {"run.started", "run.exited"} <= {r.message for r in records}
    assert list((tmp_path / "state" / "runs").glob("*/heartbeats"))
    run_id = str(origin.evidence["run"])
    result = verify(pg_ledger, witness_dir=tmp_path / "witness", origin=run_id)
    assert result.intact and result.heads_verified >= 1, messages(result.findings)
    assert "password" not in done.stderr and pg_ledger.split("?")[0] in done.stderr
