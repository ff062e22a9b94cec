"""``RunOptions``: the settings of one ``trainguard run``, one field per command-line flag."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trainguard.errors import ConfigError
from trainguard.findings import Severity

__all__ = ["ENV_VERIFY_MODES", "RunOptions"]

ENV_VERIFY_MODES = ("auto", "full", "off")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Settings of ``trainguard run [flags] -- CMD ...``.

    ``env_verify``: ``auto`` verifies the job's environment before it starts against
    ``seal`` (unsigned: only if no one else can write it) or else the interpreter's
    first-use seal in the user's state folder, made by the first run that finds nothing
    wrong (trust on first use; ``trainguard.env.tofu``), with the ``fast`` stat shortcut
    for files that are not code; ``full`` never takes the shortcut; ``off`` skips it.
    ``stop_on``: an alert of this severity or worse (from the pre-flight checks, the
    supervisor or any rank's guard) stops the job (or keeps it from starting): exit
    ``GUARD_STOPPED``. ``guard_timeout``: how long a rank may run without attaching a
    guard (or after closing it) before ``guard.missing``; generous by default because
    loading a large model from shared storage comes before the guard. ``hang_after``:
    seconds without a step on a guarded rank before ``process.hang``; generous by default
    because an evaluation or a checkpoint save inside the training loop is an honest pause
    (a real collective hang also ends in NCCL's own timeout). ``timeout``: stop the job
    after this many
    seconds (exit ``TIMED_OUT``). ``stop_grace``: seconds between SIGTERM and SIGKILL
    when the job is stopped. ``protect``: the start-up hook calls
    ``trainguard.protect()`` in every Python process of the job.
    """

    command: tuple[str, ...]
    ledger: Path | str | None = None
    """A folder or a ``postgresql://`` URL. Default: ``$TRAINGUARD_LEDGER``, then
    ``./trainguard-ledger``."""
    ledger_key: Path | None = None
    """Ed25519 key that signs ledger heads. Default: ``$TRAINGUARD_LEDGER_KEY``."""
    seal: Path | None = None
    seal_key: Path | None = None
    env_verify: str = "auto"
    env_ignore: tuple[str, ...] = ()
    resume: tuple[Path, ...] = ()
    stop_on: Severity | None = None
    metrics_port: int | None = None
    hang_after: float = 1800.0
    guard_timeout: float = 600.0
    closed_after: float | None = None
    timeout: float | None = None
    stop_grace: float = 10.0
    protect: bool = True
    witness_dir: str | None = None
    """Where the supervisor keeps its copy of every head (``off``: nowhere). Default:
    ``$TRAINGUARD_WITNESS_DIR``, else ``witness`` in the state folder."""
    witness_command: str | None = None
    """A command run with each head on stdin (an admin's witness). Default:
    ``$TRAINGUARD_WITNESS_COMMAND``."""

    def __post_init__(self) -> None:
        if not self.command:
            raise ConfigError("trainguard run needs a command: trainguard run -- CMD ...")
        if self.env_verify not in ENV_VERIFY_MODES:
            raise ConfigError(
                f"env_verify must be one of {', '.join(ENV_VERIFY_MODES)}: {self.env_verify!r}"
            )
        for name in ("hang_after", "guard_timeout", "stop_grace", "closed_after"):
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.timeout is not None and self.timeout <= 0:
            raise ConfigError("timeout must be positive")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"not a port: {self.metrics_port}")
