"""Static scanner for model files: reads bytes, never executes them, never imports torch.

``scan_path`` walks files and folders; ``scan_file`` and ``scan_bytes`` judge one input.
Each returns results, never raises for bad input: a file that cannot be read to the end
gets the ``error`` verdict with a ``scan.error`` finding saying where and why. So does what
is not a regular file (a FIFO, device or socket is never opened for reading: that could block
or never end), an unreadable file or folder, a folder with nothing in it, and a link to a
folder met inside a folder (see ``iter_files`` for what is followed). Every string in a
result can be written as UTF-8: lone surrogates read from a file become ``\\udxxx`` text.
"""

from __future__ import annotations

import dataclasses
import enum
import io
import os
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from trainguard.errors import ScanError
from trainguard.findings import FileResult, Rule, ScanReport, Severity
from trainguard.scan.engine import FileScan
from trainguard.scan.limits import Limits
from trainguard.scan.policy import Policy

__all__ = ["Limits", "Policy", "iter_files", "scan_bytes", "scan_file", "scan_path"]

_SPECIAL = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the check cannot block the open
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
)


def scan_file(
    path: str | os.PathLike[str],
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    display: str | None = None,
) -> FileResult:
    """Scan one file (any supported format, recognised by content).

    A symbolic link is followed (the target is what a loader opening the path reads). Only
    regular files are opened: a FIFO, device, socket or folder gets the ``error`` verdict
    without being read, since reading one can block forever or never end (``/dev/zero``).
    """
    p = Path(path)
    ctx = FileScan(p, display or str(path), policy or Policy(), limits or Limits())
    fh = _open_regular(ctx, p)
    if fh is None:
        return _printable(ctx.result(ctx.kind or "unreadable"))
    with fh:
        fmt = ctx.scan_window(ctx.window(fh), None, 0, top=True)
    return _printable(ctx.result(fmt))


def _open_regular(ctx: FileScan, p: Path) -> BinaryIO | None:
    """The file opened for reading, or None with the reason recorded as a ``scan.error``."""
    try:
        st = p.stat()
        what = _special(st.st_mode)
        if what is None:
            fd = os.open(p, _OPEN_FLAGS)
            st = os.fstat(fd)  # what was opened, not what was looked at
            what = _special(st.st_mode)
            if what is not None:
                os.close(fd)
    except OSError as exc:
        dangling = isinstance(exc, FileNotFoundError) and p.is_symlink()
        why = "dangling symbolic link" if dangling else (exc.strerror or str(exc))
        ctx.fail(ScanError(f"cannot open: {why}"), None)
        return None
    if what is not None:
        ctx.kind = "folder" if what == "a folder" else "special"
        msg = f"not a regular file but {what}: not read, since reading it may never end"
        ctx.fail(ScanError(msg), None)
        return None
    fh = os.fdopen(fd, "rb")
    if st.st_size == 0 and fh.read(1):
        fh.close()
        msg = "reports a size of 0 but has content (a /proc or /sys file?): not judged"
        ctx.fail(ScanError(msg), None)
        return None
    return fh


def _special(mode: int) -> str | None:
    return next((what for test, what in _SPECIAL if test(mode)), None)


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
    return _printable(ctx.result(fmt))


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[tuple[Path, str | None]]:
    """Every file under ``paths`` in a stable order; (path, problem) for what cannot be walked.

    What is followed: a path given here is followed when it is a symbolic link (to a file or
    a folder: it was named on purpose). Inside a folder, links to files are followed (scanned
    as their target, as a loader reads them: a Hugging Face cache snapshot is such links);
    links to folders are not (loops, trees outside the one asked for) and are reported as a
    problem, never passed over in silence. Special files (FIFOs, devices, sockets) are
    yielded and get the ``error`` verdict from ``scan_file``, unopened. An unreadable
    folder, and a folder with no file in it, is a problem too: nothing there was checked.
    """
    for raw in paths:
        p = Path(raw)
        try:
            is_dir = stat.S_ISDIR(p.stat().st_mode)
        except OSError as exc:
            yield p, _stat_problem(p, exc)
            continue
        if not is_dir:
            yield p, None
            continue
        found = False
        for item in _walk(p):
            found = True
            yield item
        if not found:
            yield p, "folder holds no files: nothing was scanned"


def _stat_problem(p: Path, exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "dangling symbolic link" if p.is_symlink() else "no such file or directory"
    return f"cannot read: {exc.strerror or exc}"


_FOLDER_LINK = "symbolic link to a folder: not followed (scan its target by name to include it)"


def _walk(top: Path) -> Iterator[tuple[Path, str | None]]:
    errors: list[OSError] = []
    for root, dirs, files in os.walk(top, onerror=errors.append, followlinks=False):
        yield from _walk_errors(errors)
        dirs.sort()
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        for name in links:
            yield Path(root) / name, _FOLDER_LINK
        dirs[:] = [d for d in dirs if d not in links]
        for name in sorted(files):
            yield Path(root) / name, None
    yield from _walk_errors(errors)


def _walk_errors(errors: list[OSError]) -> Iterator[tuple[Path, str | None]]:
    for exc in errors:
        where = Path(exc.filename) if exc.filename else Path("?")
        yield where, f"cannot read folder: {exc.strerror or exc}"
    errors.clear()


def _printable(result: FileResult) -> FileResult:
    """The result with every string made encodable: names read from a file (a pickle global
    decoded with ``surrogatepass``, a non-UTF-8 file name) can hold lone surrogates, which
    no UTF-8 output can write. They become ``\\udcxx`` escapes."""
    out: FileResult = _escape(result)
    return out


def _escape(obj: Any) -> Any:
    if isinstance(obj, str) and not isinstance(obj, enum.Enum):
        try:
            obj.encode("utf-8")
        except UnicodeEncodeError:
            return obj.encode("utf-8", "backslashreplace").decode("utf-8")
        return obj
    if isinstance(obj, list | tuple):
        items = [_escape(x) for x in obj]
        same = all(a is b for a, b in zip(items, obj, strict=True))
        return obj if same else type(obj)(items)
    if isinstance(obj, Mapping):
        pairs = [(_escape(k), _escape(v)) for k, v in obj.items()]
        same = all(a is k and b is v for (a, b), (k, v) in zip(pairs, obj.items(), strict=True))
        return obj if same else dict(pairs)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        changed = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            new = _escape(value)
            if new is not value:
                changed[f.name] = new
        return dataclasses.replace(obj, **changed) if changed else obj
    return obj


PARALLEL_FROM = 64
"""Folders with at least this many files are scanned by several processes."""


def _scan_one(item: tuple[Path, str | None], policy: Policy, limits: Limits) -> FileResult:
    path, problem = item
    if problem:
        ctx = FileScan(path, str(path), policy, limits)
        ctx.add(Rule.ERROR, Severity.MEDIUM, problem)
        ctx.complete = False
        kind = "folder" if "folder" in problem else "missing"
        return _printable(ctx.result("unreadable" if problem.startswith("cannot") else kind))
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
