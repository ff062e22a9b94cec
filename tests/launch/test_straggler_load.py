"""End to end on a machine loaded on purpose: ``trainguard drill --attack straggler`` (the
clean 2-rank job, then the same job with rank 1 sleeping 50-300 ms before every step)
while three busy loops per CPU compete with it (load about 6 on 2 cores).

Both straggler detectors (the supervisor's heartbeat windows and the replica check's
gathered busy windows) trust that an honest rank's slowness on a busy machine is uneven
and shared; this attacks that trust with real contention, not synthetic numbers: the
clean run must not name a straggler, and the sleeping rank must still be named. Nothing
here depends on how fast the machine is, only on the loops competing for its CPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

LOOP = """import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    pass
"""
LOOPS_PER_CPU = 3
MAX_LOOPS = 24


@contextlib.contextmanager
def busy_loops(count: int, seconds: float) -> Iterator[list[subprocess.Popen[bytes]]]:
    """``count`` processes spinning at normal priority, each ending by itself after
    ``seconds`` and killed when the block ends, whatever happens in it."""
    loops: list[subprocess.Popen[bytes]] = []
    try:
        for _ in range(count):
            loops.append(subprocess.Popen([sys.executable, "-c", LOOP, str(seconds)]))
        yield loops
    finally:
        for loop in loops:
            loop.kill()
        for loop in loops:
            loop.wait()


def test_loaded_machine_names_no_straggler_but_the_sleeping_rank(tmp_path: Path) -> None:
    cpus = len(os.sched_getaffinity(0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINGUARD_")}
    cmd = [sys.executable, "-m", "trainguard", "drill", "--attack", "straggler"]
    cmd += ["--format", "json", "--ledger", str(tmp_path)]
    with busy_loops(min(LOOPS_PER_CPU * cpus, MAX_LOOPS), seconds=600) as loops:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)
        spinning = [loop.poll() is None for loop in loops]
    assert all(spinning), "the load ended before the drill did"
    assert done.stdout, done.stderr[-4000:]
    report = json.loads(done.stdout)
    clean = report["clean"]
    assert "process.straggler" not in clean["alert_ids"], json.dumps(clean)
    (row,) = report["attacks"]
    assert row["attack"] == "straggler" and row["detected"], json.dumps(row)
    assert row["attribution"]["rank"] == 1
    assert (done.returncode == 0) == report["ok"]
