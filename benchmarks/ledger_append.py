"""Ledger appends per second with acknowledgment durability, 1 and 8 processes.

Run by hand from the repository root::

    .venv/bin/python benchmarks/ledger_append.py [--count 2000] [--dir DIR] [--journal wal]
        [--procs 8] [--postgresql URL]

``--postgresql`` also runs the PostgreSQL back end (``trainguard.ledger.pg``) on that
server, e.g. the one ``eval "$(bash .ci/pg-start)"`` starts
(``$TRAINGUARD_TEST_PG_URL``); its commits are durable when they return
(``synchronous_commit=on``), like SQLite's with ``synchronous=FULL``.

Every append is acknowledged only after its SQLite commit returned with
``synchronous=FULL`` (the WAL is fsynced), which is what the numbers include. Heads are
signed every 1000 appends with a fresh Ed25519 key, as a guarded job would do.

For scale it also times the floor of the same disk: one ``write`` + ``fsync`` per
record to a plain append-only file (no hashing, no index, no concurrency control).
The ledger folder is created under ``--dir`` (default: a temporary folder in the
current directory, so the disk is the one you run on, not a tmpfs /tmp).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from trainguard import keys
from trainguard.ledger import Ledger, verify


def _key(directory: Path) -> Path:
    private, _ = keys.generate_ed25519()
    path = directory / "bench.key"
    path.write_bytes(private)
    os.chmod(path, 0o600)
    return path


def _worker(path: str, key: str, count: int, journal: str, go: object, tag: int) -> None:
    with Ledger(path, key=key, head_every=1000, journal=journal) as led:
        go.wait()  # type: ignore[attr-defined]
        for i in range(count):
            led.append_event("bench", step=i, evidence={"writer": tag, "loss": 0.25})


def run_processes(base: Path, procs: int, count: int, journal: str, pg: str | None = None) -> float:
    """Appends per second over ``procs`` processes, each appending ``count`` (to a new
    ledger in ``base``, or a new schema on the PostgreSQL server ``pg``)."""
    name = f"ledger_{procs}p_{time.monotonic_ns()}"
    path: str | Path = base / name
    if pg is not None:
        path = f"{pg}{'&' if '?' in pg else '?'}ledger={name}"
    key = _key(base)
    Ledger(path, key=key, journal=journal).close()  # created before the clock starts
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    workers = [
        ctx.Process(target=_worker, args=(str(path), str(key), count, journal, go, k))
        for k in range(procs)
    ]
    for w in workers:
        w.start()
    time.sleep(1.0)  # let every worker import and open its connection
    start = time.perf_counter()
    go.set()
    for w in workers:
        w.join()
        assert w.exitcode == 0, w.exitcode
    elapsed = time.perf_counter() - start
    result = verify(path, witness_dir=False)
    assert result.intact and result.records == procs * count, result.findings
    if pg is not None:
        import psycopg

        with psycopg.connect(pg, autocommit=True) as c:
            c.execute(f"DROP SCHEMA {name} CASCADE")
    return procs * count / elapsed


def floor(base: Path, count: int) -> float:
    """write + fsync per record to one append-only file: what the disk allows."""
    fd = os.open(base / "floor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    line = b'{"seq":1,"message":"bench","evidence":{"loss":0.25}}\n'
    start = time.perf_counter()
    try:
        for _ in range(count):
            os.write(fd, line)
            os.fsync(fd)
    finally:
        os.close(fd)
    return count / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=2000, help="appends per process")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=Path.cwd())
    ap.add_argument("--journal", choices=["wal", "delete"], default="wal")
    ap.add_argument("--procs", type=int, default=8, help="writers in the concurrent run")
    ap.add_argument("--postgresql", metavar="URL", help="also measure this PostgreSQL server")
    args = ap.parse_args()
    n, pg = args.procs, args.postgresql
    base = Path(tempfile.mkdtemp(prefix="ledger-bench-", dir=args.dir))
    try:
        runs = [
            ("plain write+fsync floor", lambda: floor(base, args.count)),
            ("sqlite, 1 process", lambda: run_processes(base, 1, args.count, args.journal)),
            (f"sqlite, {n} processes", lambda: run_processes(base, n, args.count, args.journal)),
        ]
        if pg:
            runs += [
                ("postgresql, 1 process", lambda: run_processes(base, 1, args.count, "", pg)),
                (f"postgresql, {n} processes", lambda: run_processes(base, n, args.count, "", pg)),
            ]
        rates: dict[str, list[float]] = {name: [] for name, _ in runs}
        for _ in range(args.repeat):  # interleaved, so a noisy disk hits all three alike
            for name, fn in runs:
                rates[name].append(fn())
        rows = [(n, statistics.median(r), min(r), max(r)) for n, r in rates.items()]
        print(f"disk: {base} ({args.journal} journal, {args.count} appends per process)")
        for name, med, lo, hi in rows:
            print(f"  {name:26s} {med:9.0f} appends/s  (min {lo:.0f}, max {hi:.0f})")
        print(f"  sqlite 1p / floor          {rows[1][1] / rows[0][1]:9.2f}")
        print(f"  sqlite {n}p / 1p {'':10s}{rows[2][1] / rows[1][1]:9.2f}")
        if pg:
            print(f"  postgresql 1p / floor      {rows[3][1] / rows[0][1]:9.2f}")
            print(f"  postgresql {n}p / 1p {'':6s}{rows[4][1] / rows[3][1]:9.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
