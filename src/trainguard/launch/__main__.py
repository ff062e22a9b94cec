"""``python -m trainguard.launch [flags] -- CMD ...``: the same as ``trainguard run``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from trainguard import exit_codes
from trainguard.errors import TrainguardError
from trainguard.launch.args import add_arguments, options_from

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    from trainguard.launch.supervisor import run_command

    parser = argparse.ArgumentParser(
        prog="python -m trainguard.launch", description="Guard and supervise a training job."
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(options_from(args))
    except TrainguardError as exc:
        sys.stderr.write(f"trainguard: error: {exc.diagnostics()}\n")
        return exit_codes.ERROR
    except KeyboardInterrupt:  # before the job started (during the pre-flight checks)
        sys.stderr.write("trainguard: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
