"""``trainguard keygen`` / ``env seal`` / ``env verify`` from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from envkit import Env

from trainguard.cli import main


@pytest.fixture
def quiet_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainguard.env.environ import VARIABLES

    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_keygen_seal_verify_and_tamper(
    env: Env, tmp_path: Path, capsys, quiet_environ, state
) -> None:
    pytest.importorskip("cryptography")
    keys = tmp_path / "keys"
    assert main(["keygen", "--out", str(keys)]) == 0
    assert os.stat(keys / "ledger.key").st_mode & 0o077 == 0
    assert os.stat(keys / "signing.key").st_mode & 0o077 == 0
    assert main(["keygen", "--out", str(keys)]) == 2  # never overwrites a key
    seal = tmp_path / "env.seal"
    rc = main(
        ["env", "seal", "-o", str(seal), "--key", str(keys / "ledger.key"),
         "--python", env.python]
    )  # fmt: skip
    assert rc == 0 and seal.exists()
    args = ["env", "verify", "--python", env.python, "--seal", str(seal)]
    args += ["--key", str(keys / "ledger.pub"), "--format", "json"]
    capsys.readouterr()
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["findings"] == []
    target = next(env.site.glob("tinypkg/*.py"))
    target.write_bytes(target.read_bytes() + b"\n# tampered\n")
    assert main(args) == 1
    rules = {f["rule"] for f in json.loads(capsys.readouterr().out)["findings"]}
    assert "env.file_modified" in rules


def test_first_use_reseal_and_the_verdict_cache(env: Env, capsys, quiet_environ, state) -> None:
    """``env seal --first-use`` replaces the seal ``trainguard run`` keeps; ``env verify``
    takes .pyc verdicts from the state folder unless ``--no-cache``."""
    from trainguard.env.tofu import first_use_path

    assert main(["env", "seal", "--first-use", "--python", env.python]) == 0
    assert first_use_path(env.python, state).exists()
    assert main(["env", "seal", "--first-use", "-o", "x.seal", "--python", env.python]) == 2
    args = ["env", "verify", "--python", env.python, "--format", "json"]
    capsys.readouterr()
    assert main(args) == 0
    warm = json.loads(capsys.readouterr().out)["summary"]["checked"]
    assert warm["pyc_cached"] >= 3 and warm["pyc"] == 0
    assert main([*args, "--no-cache"]) == 0
    cold = json.loads(capsys.readouterr().out)["summary"]["checked"]
    assert cold["pyc_cached"] == 0 and cold["pyc"] == warm["pyc_cached"]


def test_the_verdict_is_printed_once_on_a_terminal(env: Env, tmp_path: Path, state) -> None:
    """On a terminal the report already ends with its verdict line; the copy on stderr is
    for when stdout went to a file or a pipe."""
    import pty
    import subprocess
    import sys

    from trainguard.env.environ import VARIABLES

    environ = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    primary, secondary = pty.openpty()
    cmd = [sys.executable, "-m", "trainguard", "env", "verify", "--python", env.python]
    proc = subprocess.Popen(cmd, stdout=secondary, stderr=secondary, env=environ)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # EIO: the other side closed
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=300) == 0
    os.close(primary)
    text = b"".join(chunks).decode(errors="replace")
    assert text.count("INTACT") == 1, text
    assert "[32m" not in text.replace("\x1b[32m", ""), text  # colours are codes, not text
    piped = subprocess.run(cmd, capture_output=True, text=True, env=environ, timeout=300)
    assert "INTACT" in piped.stdout and "INTACT" in piped.stderr
