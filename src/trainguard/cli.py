"""The ``trainguard`` command: parses arguments, calls the library, renders. No logic here."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from trainguard import exit_codes
from trainguard.errors import TrainguardError

__all__ = ["main"]


def _build_parser() -> argparse.ArgumentParser:
    from trainguard import __version__

    parser = argparse.ArgumentParser(
        prog="trainguard",
        description="Keeps PyTorch training jobs honest on shared GPU clusters.",
    )
    parser.add_argument("--version", action="version", version=f"trainguard {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True)

    scan = sub.add_parser(
        "scan",
        help="scan model files and folders without loading them",
        description="Exit codes: 0 all safe, 1 something suspicious or unsafe, "
        "2 something could not be scanned (2 wins over 1).",
    )
    scan.add_argument("paths", nargs="+", metavar="PATH")
    scan.add_argument(
        "--format",
        choices=("human", "json", "sarif"),
        default=os.environ.get("TRAINGUARD_FORMAT", "human"),
    )
    scan.add_argument("-o", "--output", metavar="FILE", help="write the report here, not stdout")
    scan.add_argument(
        "--policy",
        metavar="FILE",
        default=os.environ.get("TRAINGUARD_POLICY"),
        help="policy TOML or pyproject.toml (default: $TRAINGUARD_POLICY, then the nearest "
        "pyproject.toml with [tool.trainguard])",
    )
    scan.add_argument(
        "--fail-on",
        choices=("suspicious", "unsafe"),
        default="suspicious",
        help="lowest verdict that makes the exit code 1 (default: suspicious)",
    )
    scan.add_argument("--max-seconds", type=float, default=None, help="time budget per file")
    scan.add_argument("-v", "--verbose", action="store_true", help="also show info findings")
    return parser


def _scan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from trainguard.findings import Verdict
    from trainguard.output import render
    from trainguard.scan import Limits, Policy, scan_path

    policy = Policy.from_file(args.policy) if args.policy else Policy.discover()
    limits = Limits()
    if args.max_seconds:
        limits = replace(limits, max_seconds=args.max_seconds)
    report = scan_path(*args.paths, policy=policy, limits=limits)
    color = args.output is None and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    if args.format == "human":
        from trainguard.output.human import render as human
        from trainguard.output.human import summary

        text = human(report, color=color, verbose=args.verbose)
        sys.stderr.write(summary(report, color=color and sys.stderr.isatty()))
    else:
        text = render(report, args.format)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    if report.has_error:
        return exit_codes.ERROR
    bad = {Verdict.UNSAFE} | ({Verdict.SUSPICIOUS} if args.fail_on == "suspicious" else set())
    if any(f.verdict in bad for f in report.files):
        return exit_codes.FINDINGS
    return exit_codes.OK


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        if args.verb == "scan":
            return _scan(args)
    except TrainguardError as exc:
        sys.stderr.write(f"trainguard: error: {exc.diagnostics()}\n")
        return exit_codes.ERROR
    except KeyboardInterrupt:
        sys.stderr.write("trainguard: interrupted\n")
        return 130
    parser.error(f"unknown verb {args.verb}")
    return exit_codes.ERROR  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
