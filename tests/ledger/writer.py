"""A ledger writer run as a subprocess by the fault tests.

    writer.py LEDGER [--count N] [--tag T] [--exit-after N] [--ratchet --every N]

Prints the seq of every append once ``append`` has returned (acknowledged), flushed, so
the parent knows exactly which records were promised. ``--exit-after`` ends the process
with ``os._exit`` (no close, no WAL checkpoint), leaving the WAL as a crash would.
"""

from __future__ import annotations

import argparse
import os
import sys

from trainguard.ledger import Ledger


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--count", type=int, default=10**9)
    ap.add_argument("--tag", default="w")
    ap.add_argument("--exit-after", type=int, default=0)
    ap.add_argument("--ratchet", action="store_true")
    ap.add_argument("--every", type=int, default=0)
    args = ap.parse_args()
    led = Ledger(args.path, head_every=args.every, ratchet=args.ratchet)
    for i in range(args.count):
        rec = led.append_event(f"{args.tag} {i}", step=i)
        sys.stdout.write(f"{rec.seq}\n")
        sys.stdout.flush()
        if args.exit_after and i + 1 >= args.exit_after:
            os._exit(0)
    led.close()


if __name__ == "__main__":
    main()
