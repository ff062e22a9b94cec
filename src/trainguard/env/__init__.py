"""Environment integrity: prove the Python environment is the one that was installed.

``verify()`` checks an interpreter's environment (RECORD hashes, ``.pyc`` against source,
unowned files, start-up hooks, ``pyvenv.cfg`` and the standard library it points at,
optionally a seal and a wheelhouse) and returns an ``EnvReport``; ``seal()`` verifies,
then writes a signed baseline of every importable or loadable file. All file checks run
in an isolated ``python -I -S`` (see ``spawn``), so the checker never runs the start-up
code it checks. ``verify_anchored()`` is what ``trainguard run`` does by default: never
RECORD alone, but a pinned seal or the interpreter's first-use seal (trust on first use,
kept in the user's state folder, see ``tofu`` and ``state``). ``TrustedOrigins`` answers,
at run time, whether a function comes from a verified file of a known module.
``exit_code(report)`` is the CLI's mapping: 0 intact, 1 tampering, 2 could not check.
"""

from __future__ import annotations

from trainguard.env.baseline import PrivateKeySource, seal
from trainguard.env.check import Progress, PublicKeySource, verify
from trainguard.env.report import Checked, EnvReport, SealInfo, SealRefused, exit_code
from trainguard.env.tofu import Anchored, verify_anchored
from trainguard.env.trusted import TrustedOrigins

__all__ = [
    "Anchored",
    "Checked",
    "EnvReport",
    "PrivateKeySource",
    "Progress",
    "PublicKeySource",
    "SealInfo",
    "SealRefused",
    "TrustedOrigins",
    "exit_code",
    "seal",
    "verify",
    "verify_anchored",
]
