"""The flags of ``trainguard run`` (and ``python -m trainguard.launch``), defined once:
``add_arguments`` fills a parser, ``options_from`` turns its result into ``RunOptions``."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainguard.errors import ConfigError
from trainguard.findings import Severity
from trainguard.launch.options import ENV_VERIFY_MODES, RunOptions
from trainguard.ledger.store import location

__all__ = ["add_arguments", "options_from"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ledger",
        metavar="DIR",
        help="ledger folder or postgresql://...?ledger=NAME (default: $TRAINGUARD_LEDGER, then "
        "./trainguard-ledger)",
    )
    parser.add_argument(
        "--ledger-key",
        metavar="PRIVATE_KEY",
        help="Ed25519 key that signs ledger heads (default: $TRAINGUARD_LEDGER_KEY)",
    )
    parser.add_argument(
        "--seal",
        metavar="FILE",
        help="verify the environment against this seal (default: the interpreter's first-use "
        "seal in $TRAINGUARD_STATE_DIR, else ~/.local/state/trainguard, made by the first run "
        "that finds nothing wrong: trust on first use)",
    )
    parser.add_argument("--seal-key", metavar="PUBLIC_KEY", help="key the seal is signed with")
    parser.add_argument(
        "--env-verify",
        choices=ENV_VERIFY_MODES,
        default="auto",
        help="auto: against the seal, skipping non-code files whose stat matches; full: "
        "never skip; off. The first run seals (a full check, once)",
    )
    parser.add_argument(
        "--no-env-verify", dest="env_verify", action="store_const", const="off", help="= off"
    )
    parser.add_argument(
        "--env-ignore",
        action="append",
        default=[],
        metavar="NAME",
        help="environment variable not to report (LD_LIBRARY_PATH on a CUDA cluster)",
    )
    parser.add_argument(
        "--resume",
        action="append",
        default=[],
        metavar="PATH",
        help="scan this checkpoint (file or folder) before the job starts",
    )
    parser.add_argument(
        "--stop-on",
        metavar="SEVERITY",
        help="stop the job (or do not start it) on an alert this severe: "
        + ", ".join(s.label for s in Severity),
    )
    parser.add_argument("--metrics-port", type=int, metavar="N", help="Prometheus on 127.0.0.1:N")
    parser.add_argument(
        "--hang-after",
        type=float,
        default=1800.0,
        metavar="S",
        help="a guarded rank with no step for S seconds is hung (default 1800)",
    )
    parser.add_argument(
        "--guard-timeout",
        type=float,
        default=600.0,
        metavar="S",
        help="a rank running S seconds without a guard (or after closing it) is "
        "guard.missing (default 600)",
    )
    parser.add_argument(
        "--closed-after",
        type=float,
        metavar="S",
        help="a rank still running S seconds after its guard closed is guard.missing "
        "(default: --guard-timeout)",
    )
    parser.add_argument("--timeout", type=float, metavar="S", help="stop the job after S seconds")
    parser.add_argument(
        "--stop-grace",
        type=float,
        default=10.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when stopping (default 10)",
    )
    parser.add_argument(
        "--witness-dir",
        metavar="DIR",
        help="keep a copy of every signed ledger head here, outside the ledger folder "
        "(default: $TRAINGUARD_WITNESS_DIR, else witness/ in the state folder; off: none)",
    )
    parser.add_argument(
        "--witness-command",
        metavar="CMD",
        help="also run CMD with each head on stdin, e.g. an upload to a server the job cannot "
        "write (default: $TRAINGUARD_WITNESS_COMMAND)",
    )
    parser.add_argument(
        "--no-protect",
        dest="protect",
        action="store_false",
        help="do not call trainguard.protect() in the job's processes",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD ...")


def options_from(args: argparse.Namespace) -> RunOptions:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    try:
        stop_on = Severity.parse(args.stop_on) if args.stop_on else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return RunOptions(
        command=tuple(command),
        ledger=location(args.ledger) if args.ledger else None,
        ledger_key=Path(args.ledger_key) if args.ledger_key else None,
        seal=Path(args.seal) if args.seal else None,
        seal_key=Path(args.seal_key) if args.seal_key else None,
        witness_dir=args.witness_dir,
        witness_command=args.witness_command,
        env_verify=args.env_verify,
        env_ignore=tuple(args.env_ignore),
        resume=tuple(Path(p) for p in args.resume),
        stop_on=stop_on,
        metrics_port=args.metrics_port,
        hang_after=args.hang_after,
        guard_timeout=args.guard_timeout,
        closed_after=args.closed_after,
        timeout=args.timeout,
        stop_grace=args.stop_grace,
        protect=args.protect,
    )
