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


def scan_path(
    *paths: str | os.PathLike[str],
    policy: Policy | None = None,
    limits: Limits | None = None,
) -> ScanReport:
    """Scan files and folders (recursively). Returns one ``FileResult`` per file."""
    t0 = time.perf_counter()
    policy = policy or Policy()
    limits = limits or Limits()
    results: list[FileResult] = []
    for path, problem in iter_files(paths):
        if problem:
            ctx = FileScan(path, str(path), policy, limits)
            ctx.add(Rule.ERROR, Severity.MEDIUM, problem)
            ctx.complete = False
            results.append(ctx.result("missing"))
            continue
        results.append(scan_file(path, policy=policy, limits=limits))
    return ScanReport(tuple(results), time.perf_counter() - t0)
