"""Fixtures for the ledger tests: keys on disk and ledgers with some history, and a
witness folder of the test's own (never the real user's state folder)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from trainguard import keys
from trainguard.ledger import Ledger


@pytest.fixture(autouse=True)
def witness_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$TRAINGUARD_WITNESS_DIR`` for this test (and the launchers it starts)."""
    folder = tmp_path / "witness"
    monkeypatch.setenv("TRAINGUARD_WITNESS_DIR", str(folder))
    monkeypatch.delenv("TRAINGUARD_WITNESS_COMMAND", raising=False)
    monkeypatch.delenv("TRAINGUARD_LEDGER_KEY", raising=False)
    return folder


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    """(private PEM path, public PEM path), the private one mode 0600."""
    private, public = keys.generate_ed25519()
    priv, pub = tmp_path / "ledger.key", tmp_path / "ledger.pub"
    priv.write_bytes(private)
    os.chmod(priv, 0o600)
    pub.write_bytes(public)
    return priv, pub


@pytest.fixture
def filled(tmp_path: Path, keypair: tuple[Path, Path]) -> Callable[..., Path]:
    """Make a signed ledger of ``n`` events with a head every ``every`` appends."""

    def make(n: int = 25, every: int = 10, **kw: object) -> Path:
        path = tmp_path / "ledger"
        with Ledger(path, key=keypair[0], head_every=every, **kw) as led:  # type: ignore[arg-type]
            for i in range(n):
                led.append_event(f"step {i}", step=i, evidence={"loss": 1.0 / (i + 1)})
        return path

    return make
