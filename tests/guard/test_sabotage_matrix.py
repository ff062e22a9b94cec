"""Issue 13's evidence: every insider attack of the red-team kit is caught, at the step
it is judged by (``sabotage_kit.judge``: an alert of an expected rule, within ``every``
steps of the injection), and every honest recipe is silent, on 1 rank and on 2 DDP ranks.

The matrix runs as its own program (``benchmarks/sabotage_matrix.py``): each attack in a
fresh forked child, because a patch must die with the job that made it, and the epoch
reseed recipe must come from the entry script, which pytest's process is not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_attack_is_caught_and_every_honest_recipe_is_silent(tmp_path: Path) -> None:
    out = tmp_path / "matrix.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sabotage_matrix.py"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert out.exists(), done.stderr[-3000:]
    runs = json.loads(out.read_text())
    attacks = [r for r in runs if r["section"] in ("attack", "ddp") and r["cls"] != "honest"]
    honest = [r for r in runs if r["section"] == "honest" or r["cls"] == "honest"]
    assert len(attacks) >= 57 and len(honest) >= 13, (len(attacks), len(honest))
    missed = {r["name"]: (r["verdict"], r["detail"]) for r in attacks if r["verdict"] != "caught"}
    noisy = {r["name"]: r["detail"] for r in honest if r["verdict"] != "silent"}
    assert not missed and not noisy, (missed, noisy)
