"""The ledger ``trainguard run`` writes by default, against an insider who can write the
ledger folder (but not the user's home, where the witness is): each test attacks one
thing the design trusts and shows what catches it.

=====================================  ===============================================
attack                                 what catches it
=====================================  ===============================================
a ``meta`` row edited                  the header digest in every signed head
the whole ledger replaced by a clean   the witness index (this folder held another
run's (both made by ``run``)           ledger); ``--origin``
rolled back to an older copy           the witness: heads past what remains, a run it
                                       saw start that the ledger lacks
cut short, heads removed too           the witness's heads
rewritten whole, re-signed with a key  the run's key the witness index holds, the
of the insider's own                   witness heads' roots and signatures
a head forged from inside the job      the job holds no key: the signature fails
=====================================  ===============================================
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from ledgerkit import db, messages
from runkit import ALERTING, CLEAN, cut_after, replace_folder, run_job

from trainguard import keys
from trainguard.cli import main
from trainguard.ledger import Ledger, export_jsonl, note, verify
from trainguard.ledger.runs import RunOrigin

pytest.importorskip("cryptography")


def test_run_signs_every_head_with_its_own_key_and_witnesses_it(tmp_path: Path, witness_dir):
    run = run_job(tmp_path / "L", CLEAN)
    assert run.code == 0, run.stderr
    (origin,) = run.origins
    assert run.records[0] == origin  # the run's origin is its first record
    ev = origin.evidence
    assert ev["run"] in run.stderr and ev["command"][-1].endswith(".py") and ev["host"]
    assert ev["ledger"] == os.path.realpath(tmp_path / "L") and ev["key_mode"] == "run"
    meta = dict(db(run.ledger).execute("SELECT key, value FROM meta"))
    assert meta["mode"] == "run" and meta["first_key"] == ""  # no key kept in the folder
    result = verify(run.ledger)
    assert result.intact, messages(result.findings)
    assert result.runs == (ev["run"],) and result.notes == ()
    assert result.heads >= 2 and result.heads_verified == result.heads + result.witness_heads
    assert result.witness_heads == result.heads  # every head went to the witness
    assert any("witness index" in a for a in result.anchors)
    assert oct(witness_dir.stat().st_mode & 0o777) == "0o700"
    assert main(["ledger", "verify", "--ledger", str(run.ledger), "--origin", ev["run"]]) == 0
    export_jsonl(run.ledger, tmp_path / "L.jsonl")  # shipped elsewhere: found by its origin
    shipped = verify(tmp_path / "L.jsonl")
    assert shipped.intact and shipped.runs == (ev["run"],) and shipped.anchors


def test_the_job_holds_no_key_and_cannot_sign(tmp_path: Path):
    """Code of the insider's running inside the job looks for the key in its environment,
    tries to sign with a key of its own, and writes a head signed by it into the ledger."""
    job = """
        import json, os, sqlite3
        from trainguard import keys
        from trainguard.errors import ConfigError
        from trainguard.ledger import Ledger, note
        folder = os.environ["TRAINGUARD_LEDGER"]
        private, _ = keys.generate_ed25519()
        open("mine.key", "wb").write(private); os.chmod("mine.key", 0o600)
        try:
            Ledger(folder, key="mine.key").close(); refused = None
        except ConfigError as exc:
            refused = str(exc)
        c = sqlite3.connect(os.path.join(folder, "ledger.sqlite3"), isolation_level=None)
        (text,) = c.execute("SELECT note FROM heads ORDER BY id DESC LIMIT 1").fetchone()
        cp = note.parse(text)
        forged = note.sign(cp.body, cp.origin, keys.load_private_key("mine.key"))
        c.execute("INSERT INTO heads (size, note) VALUES (?, ?)", (cp.size, forged.text))
        json.dump({"env": dict(os.environ), "refused": refused}, open("job.json", "w"))
    """
    run = run_job(tmp_path / "L", job, env={"TRAINGUARD_LEDGER_KEY": ""})
    assert run.code == 0, run.stderr
    seen = json.loads((tmp_path / "job.json").read_text())
    assert "TRAINGUARD_LEDGER_KEY" not in seen["env"]
    assert "signed by the supervisor" in seen["refused"]
    public = base64.b64decode(run.origins[0].evidence["public_key"])
    for name, value in seen["env"].items():  # nothing in the job's environment is the key
        assert not _is_seed_of(value, public), name
    for f in run.ledger.rglob("*"):
        assert not f.is_file() or b"PRIVATE KEY" not in f.read_bytes(), f
    text = messages(verify(run.ledger).findings)
    assert "signature does not verify" in text and "forged or altered" in text


@pytest.mark.parametrize(
    ("sql", "value"),
    [
        ("UPDATE meta SET value = ? WHERE key = 'mode'", "none"),
        ("UPDATE meta SET value = ? WHERE key = 'format'", "trainguard.ledger.v0"),
        ("UPDATE meta SET value = ? WHERE key = 'version'", "2"),
        ("UPDATE meta SET value = ? WHERE key = 'first_key'", "AAAA"),
        ("INSERT INTO meta VALUES ('note', ?)", "added"),
        ("UPDATE meta SET value = ? WHERE key = 'origin'", "trainguard.ledger/0000"),
    ],
)
def test_meta_row_edits_are_caught(tmp_path: Path, sql: str, value: str):
    run = run_job(tmp_path / "L", ALERTING)
    assert run.alerts() and verify(run.ledger).intact
    db(run.ledger).execute(sql, (value,))
    result = verify(run.ledger)
    assert not result.intact
    assert {f.rule.value for f in result.findings} == {"ledger.tampered"}


@pytest.mark.parametrize("lab_key", [False, True], ids=["run-key", "same-lab-key"])
def test_alerting_run_replaced_by_a_clean_runs_ledger(tmp_path: Path, keypair, lab_key: bool):
    env = {"TRAINGUARD_LEDGER_KEY": str(keypair[0])} if lab_key else {}
    bad = run_job(tmp_path / "a" / "L", ALERTING, env=env)
    good = run_job(tmp_path / "b" / "L", CLEAN, env=env)
    assert bad.alerts() and not good.alerts()
    assert verify(bad.ledger).intact and verify(good.ledger).intact
    bad_run = bad.run_id
    replace_folder(bad.ledger, good.ledger)  # the insider: the clean run's ledger, copied over
    assert not bad.alerts()  # what a reader sees now is a clean run
    result = verify(bad.ledger)
    text = messages(result.findings)
    assert "the ledger was replaced" in text and bad_run in text
    assert main(["ledger", "verify", "--ledger", str(bad.ledger)]) == 1
    # from another machine (no witness there): the run id kept from the job's log is enough
    args = ["ledger", "verify", "--ledger", str(bad.ledger), "--witness-dir", "off"]
    assert main(args) == 0
    assert main([*args, "--origin", bad_run]) == 1


def test_rollback_to_an_older_copy(tmp_path: Path):
    ledger, snapshot = tmp_path / "L", tmp_path / "old-copy"
    first = run_job(ledger, CLEAN).run_id
    shutil.copytree(ledger, snapshot)  # the insider keeps a copy of the clean history
    run = run_job(ledger, ALERTING)  # a second run appends to the same ledger
    assert run.alerts() and len(run.origins) == 2
    second = run.run_id
    whole = verify(ledger)
    assert whole.intact and whole.runs == (first, second), whole.findings
    kept = verify(snapshot)  # an older copy kept elsewhere is that, not tampering...
    assert kept.intact and any("an older copy" in n for n in kept.notes), kept.findings
    replace_folder(ledger, snapshot)  # ...but put back in the ledger's place, it is
    text = messages(verify(ledger).findings)
    assert "truncated back past state witness line" in text
    assert f"the witness saw run {second} start writing this ledger" in text


def test_truncation_is_caught_by_the_witness(tmp_path: Path):
    run = run_job(tmp_path / "L", ALERTING)
    (alert,) = run.alerts()
    cut_after(run.ledger, alert.seq - 1)  # the alert and everything after it, gone
    assert not run.alerts()
    alone = verify(run.ledger, witness_dir=False)
    assert alone.intact  # the folder alone agrees with itself...
    assert any("nothing outside the ledger folder" in n for n in alone.notes)  # ...and says so
    result = verify(run.ledger)
    assert not result.intact
    assert "truncated back past state witness line" in messages(result.findings)


def test_expected_head_from_outside(tmp_path: Path, witness_dir: Path):
    """No witness folder where the check runs; a head copied off the machine is enough."""
    run = run_job(tmp_path / "L", ALERTING)
    (heads,) = (witness_dir / "heads").glob("*.jsonl")
    kept = tmp_path / "last-head.txt"
    kept.write_text(json.loads(heads.read_text().splitlines()[-1])["note"])
    (alert,) = run.alerts()
    cut_after(run.ledger, alert.seq - 1)
    result = verify(run.ledger, witness_dir=False, expect_heads=[kept])
    assert "truncated back past expected head 1" in messages(result.findings)
    other = tmp_path / "other"
    run_job(other, CLEAN)
    args = ["ledger", "verify", "--ledger", str(other), "--witness-dir", "off"]
    assert main([*args, "--expect-head", str(kept)]) == 1  # a head of another ledger


def test_rewritten_whole_and_resigned_with_the_insiders_key(tmp_path: Path):
    """The insider rebuilds the ledger without the alert: same ledger origin, same run id,
    every record but the alert, heads signed by a run key of his own."""
    run = run_job(tmp_path / "L", ALERTING)
    records, meta = run.records, dict(db(run.ledger).execute("SELECT key, value FROM meta"))
    forged = tmp_path / "forged"
    forged.mkdir()
    c = db(forged)
    c.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    c.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
    c.close()
    mine = keys.ed25519_from_seed(os.urandom(32))
    origin = records[0].evidence
    fake = RunOrigin(
        run=origin["run"],
        command=tuple(origin["command"]),
        public_key=keys.public_raw(keys.public_key_of(mine)),
    )
    with Ledger(forged, key=mine, run=fake, head_every=0) as led:
        for r in records[1:]:
            if r.kind == "event":
                led.append_event(r.message, step=r.step, evidence=r.evidence, rank=r.rank)
        led.head()
    replace_folder(run.ledger, forged)
    assert not run.alerts()
    assert verify(run.ledger, witness_dir=False).intact  # consistent, on its own
    text = messages(verify(run.ledger).findings)
    assert "re-signed with another key" in text
    assert "does not match the records" in text or "ledger lacks the head" in text


def test_admin_witness_command_and_witness_off(tmp_path: Path):
    """The admin's command receives every head (here: appends it to a file); with the
    witness folder off, the supervisor says so and verify says what it cannot rule out."""
    got = tmp_path / "sent"
    script = f"import sys; open({str(got)!r}, 'a').write(sys.stdin.read() + '\\x00')"
    env = {
        "TRAINGUARD_WITNESS_DIR": "off",
        "TRAINGUARD_WITNESS_COMMAND": shlex.join([sys.executable, "-c", script]),
    }
    run = run_job(tmp_path / "L", ALERTING, env=env)
    assert "TRAINGUARD_WITNESS_DIR is off" in run.stderr
    sent = [note.parse(t) for t in got.read_text().split("\x00") if t]
    assert [h.text for h in sent] == [h.text for h in _ledger_heads(run.ledger)]
    assert all(h.signatures and h.run and h.run.run == run.run_id for h in sent)
    result = verify(run.ledger)
    assert result.intact and any("nothing outside the ledger folder" in n for n in result.notes)


def test_missing_ledger_could_not_check(tmp_path: Path, capsys):
    missing = str(tmp_path / "nope")
    assert main(["ledger", "verify", "--ledger", missing]) == 2
    assert main(["ledger", "show", "--ledger", missing]) == 2
    assert "could not check" in capsys.readouterr().err


def test_report_exit_codes_match_its_help(tmp_path: Path, capsys):
    pytest.importorskip("rich")
    with pytest.raises(SystemExit):
        main(["report", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit codes: 0 the report was made" in text and "2 no readable ledger" in text
    assert main(["report", "--ledger", str(tmp_path / "nope")]) == 2
    run = run_job(tmp_path / "L", ALERTING)
    cut_after(run.ledger, 2)
    assert main(["report", "--ledger", str(run.ledger), "--format", "json"]) == 0  # tampered
    assert json.loads(capsys.readouterr().out)["verification"]["intact"] is False


def _ledger_heads(path: Path) -> list[note.Checkpoint]:
    return [note.parse(t) for (t,) in db(path).execute("SELECT note FROM heads ORDER BY id")]


def _is_seed_of(value: str, public: bytes) -> bool:
    for decode in (bytes.fromhex, base64.b64decode):
        try:
            raw = decode(value)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == 32:
            seed_pub = keys.public_raw(keys.public_key_of(keys.ed25519_from_seed(raw)))
            if seed_pub == public:
                return True
    return False


def test_witness_flags_of_run(tmp_path: Path):
    """``--witness-dir``/``--witness-command`` on the command line do what the variables
    do, and win over them: an admin's flags are not undone by the job's environment."""
    got = tmp_path / "sent"
    script = f"import sys; open({str(got)!r}, 'a').write(sys.stdin.read() + '\\x00')"
    folder = tmp_path / "elsewhere"
    env = {"TRAINGUARD_WITNESS_DIR": "off", "TRAINGUARD_WITNESS_COMMAND": ""}
    flags = ("--witness-dir", str(folder), "--witness-command",
             shlex.join([sys.executable, "-c", script]))  # fmt: skip
    run = run_job(tmp_path / "L", CLEAN, *flags, env=env)
    assert run.code == 0, run.stderr
    sent = [note.parse(t) for t in got.read_text().split("\x00") if t]
    assert sent and [h.text for h in sent] == [h.text for h in _ledger_heads(run.ledger)]
    assert str(folder) in run.stderr and "is off" not in run.stderr
    result = verify(run.ledger, witness_dir=folder, origin=run.run_id)
    assert result.intact and any(str(folder) in a for a in result.anchors), result.anchors
    off = run_job(tmp_path / "M", CLEAN, "--witness-dir", "off", env={})
    assert "is off" in off.stderr
