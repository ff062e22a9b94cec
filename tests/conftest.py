"""Make ``tests/`` importable (``import corpus``), and keep trainguard's per-user state
(TOFU environment seals, the ledger witness, cached verdicts) of this test session in a
private temporary folder, never in the real ``~/.local/state/trainguard``: set before any
test runs, so every ``trainguard run`` the tests start inherits it."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

os.environ.setdefault("TRAINGUARD_AUTHORIZE", "test_*")  # tests open guard.authorized()
if "TRAINGUARD_STATE_DIR" not in os.environ:
    os.environ["TRAINGUARD_STATE_DIR"] = tempfile.mkdtemp(prefix="trainguard-test-state-")
