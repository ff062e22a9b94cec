"""What ``trainguard env verify`` costs against the floor of plain single-threaded sha256.

Run by hand from the repository root (torch installed in the venv)::

    .venv/bin/python benchmarks/env_verify.py [--repeat 3] [--record-mode] [--seal FILE]
        [--only NAME ...]

It seals this interpreter's environment once into a temporary folder (``stdlib_pyc=False``:
sealing is not what is timed), reads everything once so the page cache is warm, then
times, interleaved with their floors:

* torch alone, RECORD only: ``verify(distributions=["torch"], record_only=True)`` against
  ``hashlib.file_digest`` over the same RECORD-hashed files (target: under 1.5 s);
* the full verify against the seal (RECORD, seal diff, hooks, .pyc vouched by the seal,
  every file hashed) against the floor over every regular file in the seal
  (target: within 1.3x);
* the same with ``fast=True`` (not code files may be skipped by stat hint);
* the full verify without a seal, with a warm ``.pyc`` verdict cache (warmed by one
  untimed run into a temporary state folder): RECORD, hooks, and every ``.pyc`` hashed
  with its source and found in the cache instead of compiled, against the floor over the
  RECORD-hashed files plus every ``.pyc`` checked and its source (target: within 1.3x);
* with ``--record-mode``, once: the full verify without a seal, where every ``.pyc`` is
  compiled from its source (the slow, seal-less path), against its own floor.

The floor is one thread, ``hashlib.file_digest(f, "sha256")`` per file, nothing else: no
walking, no parsing, no process start. Prints seconds, bytes and ratios of medians.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainguard.env import EnvReport, seal, verify


def floor(paths: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    for p in paths:
        try:
            with open(p, "rb") as f:
                hashlib.file_digest(f, "sha256")
            total += os.path.getsize(p)
        except OSError:
            pass
    return time.perf_counter() - start, total


def record_files(site: Path, only: str | None = None) -> list[str]:
    out: list[str] = []
    for info in site.glob("*.dist-info"):
        if only and not info.name.lower().startswith(only + "-"):
            continue
        rec = info / "RECORD"
        if not rec.exists():
            continue
        with open(rec, newline="") as f:
            for row in csv.reader(f):
                if len(row) > 1 and row[1].startswith("sha256="):
                    p = os.path.normpath(site / row[0])
                    if os.path.isfile(p):
                        out.append(p)
    return sorted(set(out))


def pyc_pairs(dirs: list[Path]) -> list[str]:
    """Every ``__pycache__`` file of this interpreter under ``dirs`` whose source exists,
    and that source: what a verify with the verdict cache hashes besides RECORD files."""
    tag = sys.implementation.cache_tag
    out: set[str] = set()
    for d in dirs:
        for cached in d.rglob(f"__pycache__/*.{tag}*.pyc"):
            parts = cached.name.split(".")
            source = cached.parent.parent / (parts[0] + ".py")
            if source.is_file() and len(parts) in (3, 4):
                out.update((str(cached), str(source)))
    return sorted(out)


def pth_dirs(site: Path) -> list[Path]:
    """Folders ``.pth`` path lines add (an editable install's source tree)."""
    out: list[Path] = []
    for pth in site.glob("*.pth"):
        for line in pth.read_text(errors="replace").splitlines():
            if line and not line.startswith(("#", "import ", "import\t")):
                folder = (site / line.strip()).resolve()
                if folder.is_dir() and folder not in out:
                    out.append(folder)
    return out


def sealed_files(path: Path) -> list[str]:
    lines = path.read_bytes().split(b"\n")[1:-2]
    return [e["path"] for e in map(json.loads, lines) if e["type"] == "file"]


def compare(
    name: str, run: Callable[[], EnvReport], paths: list[str], repeat: int, target: str
) -> None:
    run()  # warm: page cache, interpreter start, imports
    floor(paths)
    ours: list[float] = []
    base: list[float] = []
    report = None
    for i in range(repeat):
        if i % 2:
            base.append(floor(paths)[0])
        start = time.perf_counter()
        report = run()
        ours.append(time.perf_counter() - start)
        if not i % 2:
            base.append(floor(paths)[0])
    assert report is not None
    size = floor(paths)[1]
    mo, mb = statistics.median(ours), statistics.median(base)
    print(
        f"{name:<28} verify {mo:7.3f} s (min {min(ours):.3f})  floor {mb:7.3f} s  "
        f"ratio {mo / mb:5.2f}  target {target}\n"
        f"{'':<28} {len(paths)} files, {size / 1e6:.0f} MB in the floor; verify hashed "
        f"{report.checked.files_hashed} files, {report.checked.bytes_hashed / 1e6:.0f} MB, "
        f"{report.checked.pyc} pyc compiled, {report.checked.pyc_cached} from the cache, "
        f"{len(report.findings)} findings"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--record-mode", action="store_true", help="also time the seal-less verify")
    ap.add_argument("--seal", type=Path, help="use this seal instead of making one")
    ap.add_argument(
        "--only",
        action="append",
        choices=("torch", "seal", "fast", "cache"),
        help="time only these comparisons (repeat); default all",
    )
    ap.add_argument(
        "--state", type=Path, help="keep the verdict cache in this folder (reuse a warm one)"
    )
    args = ap.parse_args(argv)
    only = set(args.only or ("torch", "seal", "fast", "cache"))
    import sysconfig

    site = Path(sysconfig.get_path("purelib"))
    print(f"python {sys.executable}; {os.cpu_count()} CPUs; site {site}")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LD_", "PYTHONPATH"))}
    with tempfile.TemporaryDirectory() as tmp:
        seal_path = args.seal or Path(tmp) / "env.seal"
        cache = (args.state or Path(tmp) / "state") / "pyc-verdicts.bin"
        if "cache" in only:
            start = time.perf_counter()
            cold = verify(environment=environ, pyc_cache=cache)
            print(
                f"verdict cache warmed in {time.perf_counter() - start:.1f} s "
                f"({cold.checked.pyc} .pyc compiled, {cold.checked.pyc_cached} cached, "
                f"{len(cold.findings)} findings)"
            )
            compare(
                "full, no seal, warm cache",
                lambda: verify(environment=environ, pyc_cache=cache),
                sorted(set(record_files(site)) | set(pyc_pairs([site, *pth_dirs(site)]))),
                args.repeat,
                "<= 1.3",
            )
        if not only & {"torch", "seal", "fast"}:
            return 0
        if args.seal is None:
            start = time.perf_counter()
            warm = cache if "cache" in only else None  # spares compiling the site .pyc
            info = seal(seal_path, stdlib_pyc=False, allow_findings=True, pyc_cache=warm)
            print(
                f"seal: {info.entries} entries in {time.perf_counter() - start:.1f} s "
                f"(includes compiling {info.report.checked.pyc} site .pyc); "
                f"{len(info.report.findings)} findings"
            )
        if "torch" in only:
            compare(
                "torch, RECORD only",
                lambda: verify(distributions=["torch"], record_only=True),
                record_files(site, "torch"),
                args.repeat,
                "< 1.5 s",
            )
        all_sealed = sealed_files(seal_path)
        if "seal" in only:
            compare(
                "full, against the seal",
                lambda: verify(seal=seal_path, environment=environ),
                all_sealed,
                args.repeat,
                "<= 1.3",
            )
        if "fast" in only:
            compare(
                "full, against the seal, fast",
                lambda: verify(seal=seal_path, fast=True, environment=environ),
                all_sealed,
                args.repeat,
                "-",
            )
        if args.record_mode:
            compare(
                "full, RECORD mode (no seal)",
                lambda: verify(environment=environ),
                record_files(site),
                1,
                "-",
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
