"""Which ``.pyc`` files to compile-check, and running the checks on all cores.

``compile()`` holds the GIL, so the checks go to forked processes. The pool is forked
before any hashing thread starts (forking a threaded process is unsafe), or after they
have all finished.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from . import emit, pyc

BATCH = 32
Item = tuple[str, str, int]  # (pyc, source, optimisation level)


def candidates(
    pycs: Iterable[str],
    cache_tag: str,
    exists: Callable[[str], bool],
    orphans_flagged_under: tuple[str, ...],
    owned: Callable[[str], bool],
) -> tuple[list[Item], list[dict[str, Any]]]:
    """The pycs this interpreter would load (its cache tag, a source beside them), and
    findings for orphans: a ``__pycache__`` file without a source is never imported, but
    one that no RECORD lists was put there by someone (reported under site dirs only;
    editable source trees collect stale ones legitimately)."""
    items: list[Item] = []
    found: list[dict[str, Any]] = []
    for p in pycs:
        source, opt, cached = pyc.source_for(p, cache_tag)
        if source is None:
            continue
        if exists(source):
            items.append((p, source, opt))
        elif cached and p.startswith(orphans_flagged_under) and not owned(p):
            found.append(
                emit.finding(
                    emit.FILE_ADDED,
                    emit.LOW,
                    "compiled file without a source, owned by no distribution",
                    p,
                )
            )
    return items, found


def start(items: list[Item], workers: int) -> list[Any]:
    """Begin the checks: futures from a forked pool, or results computed inline."""
    batches = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
    if (
        len(items) < 2 * BATCH
        or workers < 2
        or "fork" not in multiprocessing.get_all_start_methods()
    ):
        return [pyc.check_batch(b) for b in batches]
    pool = ProcessPoolExecutor(
        max_workers=min(workers, os.cpu_count() or 1),
        mp_context=multiprocessing.get_context("fork"),
    )
    futures = [pool.submit(pyc.check_batch, b) for b in batches]
    pool.shutdown(wait=False)
    return futures


def finish(
    pending: list[Any], items: list[Item], progress: Callable[[str, int, int], None]
) -> tuple[list[dict[str, Any]], int, int, list[str]]:
    """Collect results. Returns findings, pycs compared, stale ones skipped, and the
    verdict keys of those that passed."""
    by_pyc = {p: s for p, s, _ in items}
    found: list[dict[str, Any]] = []
    passed: list[str] = []
    skipped = 0
    for i, part in enumerate(pending):
        if isinstance(part, Future):
            try:
                part = part.result()
            except Exception as exc:  # noqa: BLE001 - a crashed child is a result too
                part = [
                    (p, pyc.ERROR, f"checker crashed: {exc!r}", "")
                    for p, _, _ in items[i * BATCH : (i + 1) * BATCH]
                ]
        for path, status, detail, key in part:
            skipped += status in (pyc.STALE, pyc.GONE, pyc.BAD_MAGIC)
            if key:
                passed.append(key)
            f = pyc.finding_for(path, by_pyc[path], status, detail)
            if f is not None:
                found.append(f)
        progress("pyc", min((i + 1) * BATCH, len(items)), len(items))
    return found, len(items) - skipped, skipped, passed


def uncached(
    items: list[Item],
    cache: set[str],
    hashes: dict[str, tuple[str, int]],
    stats: dict[str, os.stat_result],
) -> tuple[list[Item], list[str]]:
    """Split ``items`` into those still to compile and the keys of cache hits. A hit needs
    this run's hash and ``fstat`` of both files (hashed by the caller just before)."""
    todo: list[Item] = []
    hits: list[str] = []
    for item in items:
        p, source, opt = item
        got = (hashes.get(p), stats.get(p), hashes.get(source), stats.get(source))
        if None in got:
            todo.append(item)
            continue
        ph, pst, sh, sst = got
        key = pyc.verdict_key(p, pst, ph[0], source, sst, sh[0], opt)  # type: ignore[index,arg-type]
        if key in cache:
            hits.append(key)
        else:
            todo.append(item)
    return todo, hits
