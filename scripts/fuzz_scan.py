"""Long differential fuzzing of the scanner against the real loaders (by hand, not in CI).

    .venv/bin/python scripts/fuzz_scan.py --minutes 60 --seed 7 [--out fuzz-divergences]

Same seeds, mutations and property as ``tests/scan/test_differential.py`` (the oracle in
``tests/scan/oracle.py`` runs every real loader in a sandboxed child). Prints cases/s as it
goes; each divergence is saved once per (seed, problem) as ``<out>/<n>.bin`` (the input)
plus ``<n>.txt`` (the mutation, the scanner's and the oracle's views). Exit 1 if any.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

_TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(_TESTS / "scan"), str(_TESTS)]

import test_differential as td  # noqa: E402
from oracle import shared_oracle  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("fuzz-divergences"))
    ap.add_argument("--only", choices=("all", "real", "bypass"), default="all")
    ap.add_argument("--max-steps", type=int, default=6, help="mutations per case (1..N)")
    args = ap.parse_args(argv)

    seeds = td.all_seeds()
    names = {"all": sorted(seeds), "real": td.REAL, "bypass": td.BYPASS}[args.only]
    donors = [seeds[n] for n in sorted(seeds) if not seeds[n].startswith(b"PK")]
    rng = random.Random(args.seed)
    oracle = shared_oracle()
    args.out.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[str, str]] = set()
    cases = found = 0
    t0 = last = time.monotonic()
    deadline = t0 + args.minutes * 60
    while time.monotonic() < deadline:
        name = rng.choice(names)
        steps = rng.randint(1, args.max_steps)
        program = [(rng.randrange(td.OPS), rng.randrange(1 << 16), rng.randrange(1 << 16))]
        program += [
            (rng.randrange(td.OPS), rng.randrange(1 << 16), rng.randrange(1 << 16))
            for _ in range(steps - 1)
        ]
        whole = rng.random() < 0.3
        data = td.mutate_case(seeds[name], program, donors, whole)
        problems, scan, results = td.check_case(data)
        cases += 1
        if problems:
            key = (name, problems[0].split("]", 1)[-1])
            if key not in seen:
                seen.add(key)
                found += 1
                stem = args.out / f"{args.seed}-{cases}"
                stem.with_suffix(".bin").write_bytes(data)
                text = f"seed {name}  whole={whole}  program {program}\n"
                stem.with_suffix(".txt").write_text(
                    text + td.describe(data, problems, scan, results)
                )
                print(f"divergence #{found}: {stem}.bin  ({problems[0]})", file=sys.stderr)
        now = time.monotonic()
        if now - last >= 10:
            last = now
            rate = cases / (now - t0)
            print(
                f"{cases} cases, {rate:.0f} cases/s, {found} divergences, "
                f"{oracle.kills} sandbox kills",
                file=sys.stderr,
            )
    elapsed = time.monotonic() - t0
    print(f"{cases} cases in {elapsed:.0f} s ({cases / elapsed:.0f} cases/s); {found} divergences")
    oracle.close()
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
