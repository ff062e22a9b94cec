"""Checkpoints checked against the ledger: deleted, rolled back, swapped."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from trainguard import checkpoints
from trainguard.errors import VerificationError
from trainguard.ledger import Ledger

torch = pytest.importorskip("torch")
pytest.importorskip("cryptography")


def _keys(tmp_path: Path) -> tuple[Path, Path]:
    from trainguard import keys

    private_pem, public_pem = keys.generate_ecdsa_p256()
    private, public = tmp_path / "signing.key", tmp_path / "signing.pub"
    private.write_bytes(private_pem)
    private.chmod(0o600)
    public.write_bytes(public_pem)
    return private, public


def test_deleted_rolled_back_and_swapped_are_found(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    ledger = tmp_path / "ledger"
    run_a, run_b = tmp_path / "run-a", tmp_path / "run-b"
    for d in (run_a, run_b):
        d.mkdir()
    with Ledger(ledger) as led:
        checkpoints.save({"w": torch.zeros(4)}, run_a, private_key=private, ledger=led)
        old = tmp_path / "old-a"
        shutil.copytree(run_a, old)  # an older signed state of run-a
        checkpoints.save({"w": torch.ones(4)}, run_a, private_key=private, ledger=led)
        checkpoints.save({"w": torch.full((4,), 2.0)}, run_b, private_key=private, ledger=led)
    clean = checkpoints.verify_recorded(ledger, public)
    assert clean.ok and clean.checkpoints == 2, clean.findings

    shutil.rmtree(run_a)
    shutil.copytree(old, run_a)  # rolled back: its signature still verifies
    assert checkpoints.verify(run_a, public).ok
    rolled = checkpoints.verify_recorded(ledger, public)
    assert [(f.rule.value, f.location.path) for f in rolled.findings] == [
        ("checkpoint.modified", str(run_a.absolute()))
    ]

    shutil.rmtree(run_b)
    gone = checkpoints.verify_recorded(ledger, public)
    assert ("checkpoint.missing", str(run_b.absolute())) in {
        (f.rule.value, f.location.path) for f in gone.findings
    }
    shutil.copytree(run_a, run_b)  # another run's checkpoint swapped in
    swapped = checkpoints.verify_recorded(ledger, public)
    assert {f.location.path for f in swapped.findings} == {
        str(run_a.absolute()),
        str(run_b.absolute()),
    }


def test_the_signed_manifest_carries_the_ledger_position(tmp_path: Path) -> None:
    private, public = _keys(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    with Ledger(tmp_path / "ledger") as led:
        led.append_event("step 1")
        before = led.position()
        checkpoints.save({"w": torch.zeros(4)}, run, private_key=private, ledger=led)
    signed = checkpoints.verify(run, public)
    assert signed.ok and signed.manifest is not None and signed.manifest.ledger is not None
    assert signed.manifest.ledger.to_json() == before
    assert before["size"] == 1  # the one event appended before the save
    sig = run / "model.sig"
    text = sig.read_text()
    bundle = json.loads(text)
    payload = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    payload["predicate"]["trainguard.ledger"]["size"] = 7  # claim another position
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(
        json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    ).decode()
    sig.write_text(json.dumps(bundle))
    with pytest.raises(VerificationError):
        checkpoints.verify(run, public)


def test_a_checkpoint_of_another_run_is_named(tmp_path: Path) -> None:
    """Two runs signed with the lab's one key: run A's checkpoint copied over run B's
    verifies by signature, and B's ledger says it belongs to another run."""
    private, public = _keys(tmp_path)
    ckpt_a, ckpt_b = tmp_path / "a", tmp_path / "b"
    for d in (ckpt_a, ckpt_b):
        d.mkdir()
    with Ledger(tmp_path / "ledger-a") as led:
        checkpoints.save({"w": torch.zeros(4)}, ckpt_a, private_key=private, ledger=led)
    with Ledger(tmp_path / "ledger-b") as led:
        checkpoints.save({"w": torch.ones(4)}, ckpt_b, private_key=private, ledger=led)
    assert checkpoints.verify_recorded(tmp_path / "ledger-b", public).ok
    shutil.rmtree(ckpt_b)
    shutil.copytree(ckpt_a, ckpt_b)
    assert checkpoints.verify(ckpt_b, public).ok  # the signature alone cannot tell
    found = checkpoints.verify_recorded(tmp_path / "ledger-b", public).findings
    messages = [f.message for f in found if f.rule.value == "checkpoint.modified"]
    assert any("another ledger" in m for m in messages), messages
