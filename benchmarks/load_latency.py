"""What ``trainguard.load`` costs over a plain ``torch.load(weights_only=True)``.

Run by hand from the repository root::

    .venv/bin/python benchmarks/load_latency.py [--size-gb 1.0] [--repeat 5] [--tensors 512]

It writes one checkpoint of about ``--size-gb`` GiB (a state dict of ``--tensors`` float32
tensors, named like a transformer's) into a temporary folder, reads it once so the page
cache is warm, does one untimed load of each kind, then times ``--repeat`` rounds of

* ``torch.load(path, weights_only=True)`` (the baseline: torch's own safe loader), and
* ``trainguard.load(path)`` (scan, then the restricted unpickler of allowed globals),

interleaved, alternating which goes first, in this one process. It prints the median and
the minimum of each, the time of the scan alone (``trainguard.scan_file``), and the
ratio of the medians; the issue's target is a ratio under 1.05. The file is deleted at the
end unless ``--keep`` is given.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import trainguard


def make_checkpoint(path: Path, size_gb: float, tensors: int) -> int:
    """A state dict of ``tensors`` float32 tensors totalling ~``size_gb`` GiB; its bytes."""
    per = max(1, int(size_gb * 2**30) // 4 // tensors)
    width = 1024 if per >= 1024 else per
    g = torch.Generator().manual_seed(0)
    sd = {}
    for i in range(tensors):
        layer, kind = divmod(i, 8)
        name = f"model.layers.{layer}.block.{kind}.weight"
        sd[name] = torch.rand(per // width, width, generator=g)
    torch.save(sd, path)
    return sum(t.numel() * 4 for t in sd.values())


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    start = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - start
    del out
    return elapsed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=1.0, help="checkpoint size in GiB (1.0)")
    ap.add_argument("--repeat", type=int, default=5, help="timed rounds (5)")
    ap.add_argument("--tensors", type=int, default=512, help="tensors in the state dict (512)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write it (a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint file")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory(dir=args.dir, prefix="trainguard-bench-")
    path = Path(tmp.name) / "checkpoint.pt"
    t0 = time.perf_counter()
    nbytes = make_checkpoint(path, args.size_gb, args.tensors)
    size = path.stat().st_size
    print(
        f"wrote {path} ({size / 2**30:.2f} GiB, {args.tensors} tensors, "
        f"{nbytes / 2**30:.2f} GiB of data) in {time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )

    with open(path, "rb") as f:  # warm the page cache
        while f.read(64 * 2**20):
            pass
    runs: dict[str, Callable[[], Any]] = {
        "torch.load(weights_only=True)": lambda: torch.load(path, weights_only=True),
        "trainguard.load": lambda: trainguard.load(path),
    }
    verdict = trainguard.scan_file(path).verdict.value
    for fn in runs.values():  # untimed: imports, allocator, caches
        timed(fn)
    times: dict[str, list[float]] = {name: [] for name in runs}
    scan: list[float] = []
    for i in range(args.repeat):
        order = list(runs) if i % 2 == 0 else list(reversed(runs))
        for name in order:
            times[name].append(timed(runs[name]))
        scan.append(timed(lambda: trainguard.scan_file(path)))

    print(f"torch {torch.__version__}, trainguard {trainguard.__version__}, verdict {verdict}")
    print(f"checkpoint: {size / 2**30:.2f} GiB, {args.tensors} float32 tensors")
    print(f"{'loader':<32} {'median s':>9} {'min s':>8}   (n={args.repeat}, page cache warm)")
    for name, ts in [*times.items(), ("trainguard.scan_file (alone)", scan)]:
        print(f"{name:<32} {statistics.median(ts):>9.3f} {min(ts):>8.3f}")
    base, guarded = (statistics.median(ts) for ts in times.values())
    ratio = guarded / base
    print(f"ratio trainguard.load / torch.load (medians): {ratio:.3f}  (target < 1.05)")
    if args.keep:
        kept = Path.cwd() / "load_latency_checkpoint.pt"
        path.replace(kept)
        print(f"kept {kept}", file=sys.stderr)
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
