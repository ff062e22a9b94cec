"""Fixtures for the ledger tests: keys on disk and ledgers with some history, and a
witness folder of the test's own (never the real user's state folder)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL server: ``$TRAINGUARD_TEST_PG_URL`` (``.ci/run`` starts one), else one
    started here with ``.ci/pg-start`` (which installs Debian's package if needed)."""
    url = os.environ.get("TRAINGUARD_TEST_PG_URL")
    if url:
        yield url
        return
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TRAINGUARD_TEST_PG_PORT": str(_free_port())}
    out = subprocess.run(
        ["bash", str(root / ".ci" / "pg-start")], capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, f"could not start PostgreSQL: {out.stderr[-2000:]}"
    found = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.stdout.splitlines()
        if line.startswith("export ")
    )
    try:
        yield found["TRAINGUARD_TEST_PG_URL"]
    finally:
        subprocess.run(
            ["bash", str(root / ".ci" / "pg-stop")],
            env={**os.environ, "TRAINGUARD_TEST_PG_DIR": found["TRAINGUARD_TEST_PG_DIR"]},
            check=False,
        )


@pytest.fixture
def pg_ledger(pg_server: str) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL ledger (its own schema), dropped afterwards."""
    import psycopg

    name = "t_" + secrets.token_hex(6)
    sep = "&" if "?" in pg_server else "?"
    yield f"{pg_server}{sep}ledger={name}"
    with psycopg.connect(pg_server, autocommit=True) as c:
        c.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
