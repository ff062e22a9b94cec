"""Package hygiene: the public surface, and what importing trainguard does not import."""

from __future__ import annotations

import subprocess
import sys

import trainguard


def test_import_does_not_pull_torch_rich_or_cli():
    code = (
        "import sys, trainguard; "
        "bad = [m for m in ('torch', 'rich', 'trainguard.cli', 'numpy') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_all_is_exact():
    code = "import trainguard; print(' '.join(n for n in dir(trainguard) if n[0] != '_'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    public = set(out.stdout.split())
    exported = set(trainguard.__all__) - {"__version__"}
    submodules = {"errors", "findings", "scan", "exit_codes", "audithook"}
    assert exported <= public
    assert public - exported <= submodules


def test_one_exception_base():
    for name in (
        "ScanError",
        "LimitExceeded",
        "ConfigError",
        "IntegrityError",
        "VerificationError",
    ):
        assert issubclass(getattr(trainguard, name), trainguard.TrainguardError)
