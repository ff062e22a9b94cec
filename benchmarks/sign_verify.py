"""Signing and verifying a 1 GB checkpoint folder: trainguard against the upstream
``model_signing`` CLI, on the same folder in the same run, and against plain sha256.

Run by hand from the repository root::

    .venv/bin/python benchmarks/sign_verify.py [--size-gb 1] [--files 4] [--repeat 5]
        [--upstream-python /work/ms-venv/bin/python] [--no-save]

The upstream tool lives in its own venv (``pip install model-signing==1.1.1 pyOpenSSL``);
``--upstream-python`` (or $TRAINGUARD_MODEL_SIGNING_PYTHON) names its interpreter, by
default this one if it can import ``model_signing``, else ``/work/ms-venv/bin/python``.

The folder (``--files`` files of random bytes, one twice the size of the others, so the
work does not split evenly) is read once so the page cache is warm, then each round
times, interleaved:

* floor: one thread, ``hashlib.file_digest(f, "sha256")`` per file, nothing else;
* each tool's Python API (``checkpoints.sign``/``verify``; upstream's ``signing.Config``/
  ``verifying.Config``), timed inside a process that has imported it and done one
  untimed sign and verify: the library cost, same footing for both;
* both as fresh processes (``python -c`` for trainguard, the ``model_signing`` CLI for
  upstream): what a user waits for, interpreter start and imports included.

Both tools write their signature outside the folder, so neither sees the other's. With
torch installed it also times ``checkpoints.save`` of a 1 GB state dict against
``torch.save`` followed by fsync and a read-back sha256 (what it replaces).
Prints medians (and best) in seconds and the ratios the issue sets targets for: at least
as fast as upstream, and within 1.2x of the floor.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from trainguard import checkpoints, keys

SAVE_BASE = "torch.save+fsync+sha256"
_API = r"""
import json, sys, time
folder, key, pub, sig = sys.argv[1:5]
if sys.argv[5] == "upstream":
    from model_signing import hashing, signing, verifying

    def sign():
        (signing.Config().use_elliptic_key_signer(private_key=key)
            .set_hashing_config(hashing.Config()).sign(folder, sig))

    def verify():
        (verifying.Config().use_elliptic_key_verifier(public_key=pub)
            .set_hashing_config(hashing.Config()).verify(folder, sig))
else:
    from trainguard import checkpoints

    def sign():
        checkpoints.sign(folder, key, out=sig)

    def verify():
        assert checkpoints.verify(folder, pub, signature=sig).ok

sign(); verify()  # warm-up: lazy imports and first-use costs are not the library's speed
out = {}
for name, fn in (("sign", sign), ("verify", verify)):
    t = time.perf_counter()
    fn()
    out[name] = time.perf_counter() - t
print(json.dumps(out))
"""


def upstream_python(given: str | None) -> str | None:
    candidates = [given or os.environ.get("TRAINGUARD_MODEL_SIGNING_PYTHON")]
    candidates += [sys.executable, "/work/ms-venv/bin/python"]
    for py in filter(None, candidates):
        probe = subprocess.run(
            [py, "-c", "import model_signing._cli, OpenSSL"], capture_output=True, text=True
        )
        if probe.returncode == 0:
            return py
    return None


def make_folder(root: Path, total: int, files: int) -> list[Path]:
    """``files`` files of random bytes, the first twice the size of the rest."""
    root.mkdir(parents=True, exist_ok=True)
    unit = total // (files + 1)
    paths = []
    for i in range(files):
        size = unit * 2 if i == 0 else unit
        path = root / f"model-{i:05d}-of-{files:05d}.safetensors"
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n
        paths.append(path)
    return paths


def floor(paths: list[Path]) -> float:
    start = time.perf_counter()
    for p in paths:
        with open(p, "rb") as f:
            hashlib.file_digest(f, "sha256")
    return time.perf_counter() - start


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed: {done.stdout}{done.stderr}")
    return took


def bench_save(work: Path, total: int, repeat: int) -> dict[str, list[float]]:
    import torch

    state = {"w": torch.randint(0, 255, (total,), dtype=torch.uint8), "step": 1}
    out: dict[str, list[float]] = {SAVE_BASE: [], "checkpoints.save": []}
    for _ in range(repeat):
        target = work / "plain.pt"
        start = time.perf_counter()
        torch.save(state, target)
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
            f.seek(0)
            hashlib.file_digest(f, "sha256")
        out[SAVE_BASE].append(time.perf_counter() - start)
        target.unlink()
        target = work / "ours.pt"
        out["checkpoints.save"].append(timed(lambda t=target: checkpoints.save(state, t)))
        target.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--upstream-python")
    parser.add_argument("--dir", help="work folder (default: a temporary one)")
    parser.add_argument("--no-save", action="store_true", help="skip the save() benchmark")
    parser.add_argument("--json", action="store_true", help="print raw timings as JSON too")
    args = parser.parse_args(argv)

    up_py = upstream_python(args.upstream_python)
    total = int(args.size_gb * 1e9)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        work = Path(tmp)
        folder = work / "checkpoint"
        paths = make_folder(folder, total, args.files)
        nbytes = sum(p.stat().st_size for p in paths)
        private, public = keys.generate_ecdsa_p256()
        key, pub = work / "key.pem", work / "key.pub"
        key.write_bytes(private)
        os.chmod(key, 0o600)
        pub.write_bytes(public)
        ours_sig, up_sig = work / "ours.sig", work / "upstream.sig"
        floor(paths)  # warm the page cache

        t: dict[str, list[float]] = {}

        def add(name: str, value: float) -> None:
            t.setdefault(name, []).append(value)

        ours_proc = [sys.executable, "-c"]
        sign_code = (
            "import sys; from trainguard.checkpoints import sign; "
            "sign(sys.argv[1], sys.argv[2], out=sys.argv[3])"
        )
        verify_code = (
            "import sys; from trainguard.checkpoints import verify; "
            "assert verify(sys.argv[1], sys.argv[2], signature=sys.argv[3]).ok"
        )
        tools = [("trainguard", sys.executable, ours_sig)]
        if up_py:
            tools.append(("upstream", up_py, up_sig))
        common = [str(folder), str(key), str(pub)]
        for _ in range(args.repeat):
            add("floor: sha256 1 thread", floor(paths))
            for tool, py, sig in tools:
                done = subprocess.run(
                    [py, "-c", _API, *common, str(sig), tool],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                api = json.loads(done.stdout.strip().splitlines()[-1])
                add(f"{tool} sign (API)", api["sign"])
                add(f"{tool} verify (API)", api["verify"])
            add(
                "trainguard sign (process)",
                run([*ours_proc, sign_code, *common[:2], str(ours_sig)]),
            )
            add(
                "trainguard verify (process)",
                run([*ours_proc, verify_code, common[0], common[2], str(ours_sig)]),
            )
            if up_py:
                cli = [up_py, "-m", "model_signing"]
                add(
                    "upstream sign (CLI)",
                    run(
                        [
                            *cli,
                            "sign",
                            "key",
                            "--private_key",
                            common[1],
                            "--signature",
                            str(up_sig),
                            common[0],
                        ]
                    ),
                )
                add(
                    "upstream verify (CLI)",
                    run(
                        [
                            *cli,
                            "verify",
                            "key",
                            "--public_key",
                            common[2],
                            "--signature",
                            str(up_sig),
                            common[0],
                        ]
                    ),
                )
        if not args.no_save:
            try:
                t.update(bench_save(work, total, max(1, args.repeat // 2)))
            except ImportError:
                print("(torch not installed: save() not timed)", file=sys.stderr)

    med = {k: statistics.median(v) for k, v in t.items()}
    print(
        f"checkpoint folder: {args.files} files, {nbytes / 1e9:.3f} GB, {os.cpu_count()} CPUs, "
        f"warm page cache, {args.repeat} rounds; upstream: {up_py or 'NOT AVAILABLE'}"
    )
    print(f"{'':32s} {'median s':>9s} {'best s':>8s} {'GB/s':>6s}")
    for k, v in t.items():
        print(f"{k:32s} {med[k]:9.3f} {min(v):8.3f} {nbytes / 1e9 / med[k]:6.2f}")
    print("ratios of medians (lower is better for trainguard):")

    def ratio(label: str, ours: str, theirs: str, target: str) -> None:
        if ours in med and theirs in med:
            print(f"  {label:44s} {med[ours] / med[theirs]:6.2f}  ({target})")

    floor_key = "floor: sha256 1 thread"
    for op in ("sign", "verify"):
        api, proc = f"trainguard {op} (API)", f"trainguard {op} (process)"
        ratio(f"trainguard {op} / floor (API)", api, floor_key, "target <= 1.2")
        ratio(f"trainguard {op} / upstream (API)", api, f"upstream {op} (API)", "target <= 1.0")
        ratio(f"trainguard {op} / upstream (process)", proc, f"upstream {op} (CLI)", "<= 1.0")
    ratio("checkpoints.save / torch.save+fsync+sha256", "checkpoints.save", SAVE_BASE, "")
    if args.json:
        print(json.dumps(t))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
