"""``trainguard run``: the launcher and supervisor of a guarded training job.

::

    trainguard run [--ledger DIR] [--seal FILE] [--resume PATH] [--stop-on SEV]
                   [--metrics-port N] [--hang-after S] [--guard-timeout S] -- CMD ...

Before the job: the environment it will run in is verified (``env.verified``) and a
checkpoint to resume from is scanned (``scan``). Then CMD starts in its own process
group with trainguard's start-up hook on ``PYTHONPATH`` (``startup/sitecustomize.py``):
every Python process of the job announces itself, loads through ``trainguard.protect()``,
and finds ``TRAINGUARD_RUN_DIR``/``TRAINGUARD_LEDGER``/``TRAINGUARD_RUN_KEY`` for its
``Guard``. While it runs, the supervisor follows the ledger (alerts to stderr as they
come, ``--stop-on`` ends the job), watches heartbeats (``guard.missing``,
``process.hang``, ``process.straggler``) and records how every rank ended
(``process.exit``, ``process.killed``). See ``exits`` for the exit codes.
"""

import typing as _typing

from trainguard.launch.exits import CANNOT_EXECUTE, GUARD_STOPPED, NOT_FOUND, TIMED_OUT
from trainguard.launch.options import ENV_VERIFY_MODES, RunOptions

if _typing.TYPE_CHECKING:
    from trainguard.launch.supervisor import run_command

__all__ = [
    "CANNOT_EXECUTE",
    "ENV_VERIFY_MODES",
    "GUARD_STOPPED",
    "NOT_FOUND",
    "TIMED_OUT",
    "RunOptions",
    "run_command",
]


def __getattr__(name: str) -> _typing.Any:
    """``run_command`` is imported on first use: the ``trainguard`` command line builds
    its ``run`` flags from ``trainguard.launch.args`` without loading the supervisor."""
    if name == "run_command":
        from trainguard.launch.supervisor import run_command

        return run_command
    raise AttributeError(f"module 'trainguard.launch' has no attribute {name!r}")
