"""Entry point of the probe: a JSON request on stdin, a JSON answer on stdout.

Progress goes to stderr as ``@progress PHASE DONE TOTAL`` lines, at most ten a second,
only when the request asks for it; anything else on stderr is a crash for the parent to
show.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import compiled, emit, inventory, pyc, records, wheels
from .hashing import HashRun
from .job import Job


class Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        sys.stderr.write(f"@progress {phase} {done} {total}\n")
        sys.stderr.flush()


def execute(req: dict[str, Any]) -> dict[str, Any]:
    job = Job(req, Progress(bool(req.get("progress"))))
    seal = req.get("seal")
    lines = seal.pop("lines", b"") if seal is not None else b""
    files: dict[str, os.stat_result] = {}
    if seal is not None:
        # Comparing with a seal: the seal lists the files and their sizes, so hashing
        # starts before the walk, largest first, and runs while the tree is walked and the
        # metadata parsed; files the seal does not know are hashed after the walk. The
        # few pyc compile checks the seal does not vouch for fork once the threads end.
        job.parse_seal(lines)
        assert job.sealed is not None
        fast = bool(req.get("fast"))
        sealed_plan = job.plan_sealed()
        if fast:  # code now; other files after the walk, by stat hint
            sealed_plan = [(p, n) for p, n in sealed_plan if emit.is_code(p)]
        run = HashRun(sealed_plan, job.workers)
        raw = job.walk(stat_files=False) if job.roots() else {}
        planned = set(run.order)
        extra = job.plan_all(job.resolve({p: s for p, s in raw.items() if p not in planned}))
        job.load_metadata()
        planned.update(p for p, _ in extra)
        extra += job.plan_records(planned)
        items, orphans = _candidates(job, raw)
        job.collect(run)
        job.collect(HashRun(extra, job.workers))
        files = job.resolve(raw)
        todo = [i for i in items if not job.vouched_by_seal(i[0], i[1])]
        job.checked["pyc_vouched_by_seal"] = len(items) - len(todo)
        todo, hits = compiled.uncached(todo, job.cache or set(), job.hashes, job.stats)
        pending = compiled.start(todo, job.workers)
    elif job.cache:
        # A warm verdict cache: every file walked is hashed at once (libraries first)
        # while the metadata is parsed, .pyc and sources included; then only the pairs
        # whose key the cache does not hold are compiled.
        raw = job.walk(stat_files=False) if job.roots() else {}
        run = HashRun(job.plan_walked(raw), job.workers)
        planned = set(run.order)
        job.load_metadata()
        extra = job.plan_records(planned)
        items, orphans = _candidates(job, raw)
        extra += job.plan_pycs(items, planned)
        job.collect(run)
        job.collect(HashRun(extra, job.workers))
        files = job.resolve(raw)
        todo, hits = compiled.uncached(items, job.cache, job.hashes, job.stats)
        pending = compiled.start(todo, job.workers)
    else:
        # RECORD mode or making a seal, no cache: the compile checks are the long pole,
        # so the pool forks first and compiles while the threads hash.
        files = job.resolve(job.walk()) if job.roots() else {}
        job.load_metadata()
        plan = job.plan_all(files) if job.sealing else []
        plan += job.plan_records({p for p, _ in plan})
        items, orphans = _candidates(job, files)
        todo, hits = items, []
        pending = compiled.start(todo, job.workers)
        job.collect(HashRun(plan, job.workers))
    job.checked["pyc_cached"] = len(hits)
    job.findings += orphans

    found, n = records.check(job.dists, job.lookup, job.hash_errors)
    job.findings += found
    job.checked["distributions"] = len(job.dists)
    job.checked["record_files"] = n
    if job.whole_env:
        job.added(files)
        job.hooks()
    if req.get("wheelhouse"):
        _wheelhouse(job, req["wheelhouse"])
    for path, err in job.hash_errors.items():
        job.findings.append(emit.finding(emit.ERROR, emit.HIGH, f"cannot read: {err}", path))
    if job.sealed is not None:
        skip = job.hash_errors
        sealed = {p: e for p, e in job.sealed.items() if p not in skip}
        dirs = {p: st for t in job.trees.values() for p, st in t.dirs.items()}
        walked = {p: st for p, st in files.items() if p not in skip}
        job.findings += inventory.diff(sealed, dirs, walked, job.hashes)
        job.checked["sealed"] = len(sealed)
    found, checked, stale, passed = compiled.finish(pending, todo, job.progress)
    job.findings += found
    job.checked["pyc"] = checked
    if stale:
        job.notes.append(f"{stale} .pyc file(s) not compared: Python would not load them")

    answer: dict[str, Any] = {
        "layout": job.layout.to_json(),
        "findings": job.findings,
        "checked": job.checked,
        "notes": job.notes,
    }
    if job.cache is not None:
        answer["pyc_ok"] = "".join(hits + passed)
    if req["mode"] == "seal":
        current = job.entries(files)
        answer["seal"] = {
            "roots": job.roots(),
            "files": job.layout.single_files,
            "entries": [current[p] for p in sorted(current)],
        }
    return answer


def _candidates(
    job: Job, files: Mapping[str, object]
) -> tuple[list[compiled.Item], list[dict[str, Any]]]:
    lay = job.layout
    if job.sealing or job.whole_env:
        pycs: list[str] = [p for p in files if p.endswith(".pyc")]
        if job.req["mode"] == "seal" and not job.req.get("stdlib_pyc", True):
            std = tuple(d + os.sep for d in lay.stdlib_dirs)
            pycs = [p for p in pycs if not p.startswith(std)]
        exists: Callable[[str], bool] = files.__contains__
    elif job.req.get("record_only"):
        return [], []
    else:  # chosen distributions: the pycs of their sources
        pycs = sorted(
            {
                c
                for d in job.dists
                for e in d.entries
                if e.path.endswith(".py")
                for c in pyc.cached_for(e.path)
            }
        )
        exists = os.path.exists
    site = tuple(d + os.sep for d in lay.site_dirs)
    return compiled.candidates(pycs, lay.cache_tag, exists, site, job.owned.__contains__)


def _wheelhouse(job: Job, wheelhouse: str) -> None:
    found, compared, unmatched = wheels.check(job.dists, wheelhouse, job.lookup)
    job.findings += found
    job.checked["wheels"] = compared
    if unmatched:
        job.notes.append(
            f"wheelhouse: no wheel for {len(unmatched)} distribution(s): "
            + ", ".join(unmatched[:10])
            + (" ..." if len(unmatched) > 10 else "")
        )


def main() -> int:
    # Hashing threads need the GIL briefly between system calls; with the default 5 ms
    # switch interval they queue behind the main thread's parsing for most of that time.
    sys.setswitchinterval(0.0005)
    head, _, payload = sys.stdin.buffer.read().partition(b"\n")
    req = json.loads(head)
    if req.get("seal") is not None:
        req["seal"]["lines"] = payload
    answer = execute(req)
    out = json.dumps(answer, separators=(",", ":"), default=str)
    sys.stdout.write(out)
    sys.stdout.flush()
    return 0
