"""Checkpoints checked against the ledger: deleted, rolled back, swapped."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from trainguard import checkpoints
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
