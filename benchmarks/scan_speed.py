"""Scan speed against ``pickle.loads`` (the physical limit) and the other scanners.

    .venv/bin/python benchmarks/scan_speed.py [--workdir DIR] [--big] [--repeat N]

Inputs, built under ``--workdir`` (default: a folder in the system temp dir) and reused:

(a) ``tokenizer.pkl``: ~25 MB, opcode-dense (a tokenizer-like dict of ~1M str->int entries
    plus a merges list of str pairs; ~3.5M opcodes);
(b) ``small-objects.pkl`` (``--big``): a ~1 GB raw pickle of many small tuples, written
    opcode by opcode (the ``pickle.loads`` baseline needs ~6 GB of memory);
(c) ``checkpoint.pt`` (``--big``): a 1 GiB ``torch.save`` checkpoint of 512 tensors.

Rows, all timed in this run on the same file (best of ``--repeat``): ``pickle.loads`` of the
file's bytes (for (c) ``torch.load(weights_only=True)``, as there is no one pickle to load),
``trainguard.scan_file`` in process, the ``trainguard scan`` CLI as a process,
``picklescan`` API and CLI, and the fickling API (``is_likely_safe``; (a) only). Ratios:
trainguard API / baseline (target <= 2) and picklescan API / trainguard API (target >= 10
on (a) and (b); > 1 on (c)). Tool runs over ``--timeout`` seconds are reported as such.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BIN = Path(sys.executable).parent


def build_tokenizer(path: Path) -> None:
    vocab = {f"\u0120tok{i:07d}": i for i in range(1_000_000)}
    merges = [(f"\u0120m{i:06d}", f"er{i % 977:03d}") for i in range(100_000)]
    path.write_bytes(pickle.dumps({"vocab": vocab, "merges": merges}, protocol=4))


def build_small_objects(path: Path, target: int = 1 << 30) -> None:
    """A protocol-4 list of (str, int) tuples, written in chunks (never held in memory)."""
    with open(path, "wb") as fh:
        fh.write(b"\x80\x04]")  # PROTO 4, EMPTY_LIST
        written, i = 3, 0
        while written < target:
            chunk = bytearray(b"(")  # MARK
            for _ in range(1000):
                s = f"name-{i:019d}".encode()
                chunk += b"\x8c" + bytes([len(s)]) + s + b"M" + struct.pack("<H", i & 0xFFFF)
                chunk += b"\x86"  # TUPLE2
                i += 1
            chunk += b"e"  # APPENDS
            fh.write(chunk)
            written += len(chunk)
        fh.write(b".")


def build_checkpoint(path: Path) -> None:
    import torch

    sd = {f"layer{i}.weight": torch.randn(512, 1024) for i in range(512)}  # 2 MiB each
    torch.save(sd, path)


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _process(args: list[str], timeout: float) -> Callable[[], object]:
    def run() -> object:
        return subprocess.run(args, capture_output=True, timeout=timeout, check=False)

    return run


def measure(kind: str, path: Path, repeat: int, timeout: float) -> dict[str, float | None]:
    from trainguard import scan_file

    rows: dict[str, Callable[[], object]] = {}
    if kind == "checkpoint":

        def baseline() -> object:
            import torch

            return torch.load(path, weights_only=True, map_location="cpu")

        rows["baseline: torch.load(weights_only=True)"] = baseline
    else:
        rows["baseline: pickle.loads"] = lambda: pickle.loads(path.read_bytes())
    rows["trainguard scan_file (API)"] = lambda: scan_file(path)
    rows["trainguard scan (CLI process)"] = _process(
        [str(BIN / "trainguard"), "scan", str(path)], timeout
    )

    def picklescan_api() -> object:
        from picklescan.scanner import scan_file_path

        return scan_file_path(str(path))

    rows["picklescan (API)"] = picklescan_api
    rows["picklescan (CLI process)"] = _process([str(BIN / "picklescan"), "-p", str(path)], timeout)
    if kind == "tokenizer":

        def fickling_api() -> object:
            import fickling

            return fickling.is_likely_safe(str(path))

        rows["fickling is_likely_safe (API)"] = fickling_api
    out: dict[str, float | None] = {}
    for label, fn in rows.items():
        try:
            out[label] = _best(fn, repeat)
        except subprocess.TimeoutExpired:
            out[label] = None
        print(f"  {label:42} {_fmt(out[label])}", file=sys.stderr)
    return out


def _fmt(t: float | None) -> str:
    return "timeout" if t is None else f"{t:9.3f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tg-scan-speed")
    ap.add_argument("--big", action="store_true", help="also (b) 1 GB pickle and (c) 1 GiB .pt")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--only", default="", help="comma-separated subset of a,b,c")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    inputs = [("tokenizer", "tokenizer.pkl", build_tokenizer, "(a)")]
    if args.big:
        inputs += [
            ("small-objects", "small-objects.pkl", build_small_objects, "(b)"),
            ("checkpoint", "checkpoint.pt", build_checkpoint, "(c)"),
        ]
    if args.only:
        wanted = {f"({x.strip()})" for x in args.only.split(",")}
        everything = [
            ("tokenizer", "tokenizer.pkl", build_tokenizer, "(a)"),
            ("small-objects", "small-objects.pkl", build_small_objects, "(b)"),
            ("checkpoint", "checkpoint.pt", build_checkpoint, "(c)"),
        ]
        inputs = [i for i in everything if i[3] in wanted]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, best of {args.repeat}")
    for kind, name, build, tag in inputs:
        path = args.workdir / name
        if not path.exists():
            print(f"building {path} ...", file=sys.stderr)
            tmp = path.with_suffix(".part")
            build(tmp)
            tmp.rename(path)
        size = path.stat().st_size
        ops = _count_ops(path) if kind == "tokenizer" else None
        print(
            f"\n{tag} {name}: {size / 1e6:.1f} MB" + (f", {ops / 1e6:.2f}M opcodes" if ops else "")
        )
        times = measure(kind, path, args.repeat, args.timeout)
        base = next(iter(times.values()))
        tg = times["trainguard scan_file (API)"]
        ps = times["picklescan (API)"]
        for label, t in times.items():
            ratio = f"{t / base:6.2f}x baseline" if t and base else ""
            print(f"  {label:42} {_fmt(t)}  {ratio}")
        if tg and base:
            target = "<= 2" if kind != "checkpoint" else "(reference)"
            print(f"  trainguard / baseline: {tg / base:.2f} (target {target})")
        if tg and ps:
            target = ">= 10" if kind != "checkpoint" else "> 1"
            print(f"  picklescan / trainguard: {ps / tg:.2f} (target {target})")
    return 0


def _count_ops(path: Path) -> int:
    import pickletools

    n = 0
    with open(path, "rb") as fh:
        for _ in pickletools.genops(io.BufferedReader(fh)):
            n += 1
    return n


if __name__ == "__main__":
    raise SystemExit(main())
