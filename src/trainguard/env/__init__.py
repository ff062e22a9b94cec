"""Environment integrity: prove the Python environment is the one that was installed.

``verify()`` checks an interpreter's environment (RECORD hashes, ``.pyc`` against
source, unowned files, start-up hooks, optionally a seal and a wheelhouse) and returns an
``EnvReport``; ``seal()`` verifies, then writes a signed baseline of every importable or
loadable file. All file checks run in an isolated ``python -I -S`` (see ``spawn``), so
the checker never runs the start-up code it checks. ``exit_code(report)`` is the CLI's
mapping: 0 intact, 1 tampering, 2 could not check.
"""

from __future__ import annotations

from trainguard.env.baseline import PrivateKeySource, seal
from trainguard.env.check import Progress, PublicKeySource, verify
from trainguard.env.report import Checked, EnvReport, SealInfo, SealRefused, exit_code

__all__ = [
    "Checked",
    "EnvReport",
    "PrivateKeySource",
    "Progress",
    "PublicKeySource",
    "SealInfo",
    "SealRefused",
    "exit_code",
    "seal",
    "verify",
]
