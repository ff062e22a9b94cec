"""Static scanner for model files: reads bytes, never executes them, never imports torch.

``scan_path`` walks files and folders; ``scan_file`` and ``scan_bytes`` judge one input.
Each returns results, never raises for bad input: a file that cannot be read to the end
gets the ``error`` verdict with a ``scan.error`` finding saying where and why.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from trainguard.errors import ScanError
from trainguard.findings import FileResult, Rule, ScanReport, Severity
from trainguard.scan.engine import FileScan
from trainguard.scan.limits import Limits
from trainguard.scan.policy import Policy

__all__ = ["Limits", "Policy", "iter_files", "scan_bytes", "scan_file", "scan_path"]


def scan_file(
    path: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    display: str | None = None,
) -> FileResult:
    """Scan one file (any supported format, recognised by content)."""
    p = Path(path)
    ctx = FileScan(p, display or str(path), policy or Policy(), limits or Limits())
    try:
        fh = open(p, "rb")  # noqa: SIM115 - closed below, after every window is done
    except OSError as exc:
        ctx.fail(ScanError(f"cannot open: {exc.strerror or exc}"), None)
        return ctx.result("unreadable")
    with fh:
        fmt = ctx.scan_window(ctx.window(fh), None, 0, top=True)
    return ctx.result(fmt)


def scan_bytes(
    data: bytes,
    name: str = "<bytes>",
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
) -> FileResult:
    """Scan an in-memory blob as if it were a file called ``name``."""
    ctx = FileScan(Path(name), name, policy or Policy(), limits or Limits())
    fmt = ctx.scan_window(ctx.window(io.BytesIO(data)), None, 0, top=True)
    return ctx.result(fmt)


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, str | None]]:
    """Every file under ``paths`` in a stable order; (path, problem) for what cannot be walked.

    Directory symlinks are not followed (no loops); file symlinks are scanned as their target.
    """
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            for root, dirs, files in os.walk(p, onerror=None, followlinks=False):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name, None
        elif p.exists():
            yield p, None
        else:
            yield p, "no such file or directory"


PARALLEL_FROM = 64
"""Folders with at least this many files are scanned by several processes."""


def _scan_one(item: tuple[Path, str | None], policy: Policy, limits: Limits) -> FileResult:
    path, problem = item
    if problem:
        ctx = FileScan(path, str(path), policy, limits)
        ctx.add(Rule.ERROR, Severity.MEDIUM, problem)
        ctx.complete = False
        return ctx.result("missing")
    return scan_file(path, policy=policy, limits=limits)


def _scan_chunk(
    items: list[tuple[Path, str | None]], policy: Policy, limits: Limits
) -> list[FileResult]:
    return [_scan_one(item, policy, limits) for item in items]


def scan_path(
    *paths: str | os.PathLike[str],
    policy: Policy | None = None,
    limits: Limits | None = None,
    jobs: int = 1,
) -> ScanReport:
    """Scan files and folders (recursively). Returns one ``FileResult`` per file, in order.

    ``jobs > 1`` forks that many worker processes for lists of ``PARALLEL_FROM`` files or
    more (the CLI does, with one per CPU). The library default stays in-process: forking a
    process that runs threads (a training job) is not safe.
    """
    t0 = time.perf_counter()
    policy = policy or Policy()
    limits = limits or Limits()
    items = list(iter_files(paths))
    if jobs > 1 and len(items) >= PARALLEL_FROM and _can_fork():
        results = _parallel(items, policy, limits, jobs)
    else:
        results = [_scan_one(item, policy, limits) for item in items]
    return ScanReport(tuple(results), time.perf_counter() - t0)


def _can_fork() -> bool:
    import multiprocessing

    return "fork" in multiprocessing.get_all_start_methods()


def _parallel(
    items: list[tuple[Path, str | None]], policy: Policy, limits: Limits, jobs: int
) -> list[FileResult]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = max(8, len(items) // (jobs * 4))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_scan_chunk, chunk, policy, limits) for chunk in chunks]
        return [r for f in futures for r in f.result()]
