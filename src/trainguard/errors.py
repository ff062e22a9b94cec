"""The one exception tree of trainguard.

::

    TrainguardError            every error trainguard raises on purpose
     +-- ScanError             an input could not be read or parsed to the end
     |    +-- LimitExceeded    a resource bound (size, memory, depth, ratio, time) was hit
     +-- LoadBlocked           a load was refused: the file was judged unsafe or unscannable
     |    +-- SuspiciousCallBlocked   code ran during a load and tried a blocked action
     |    +-- GlobalRefused    the restricted unpickler was asked for a global the scan of
     |                         that file did not allow (also a pickle.UnpicklingError)
     +-- ConfigError           a policy or configuration file is wrong
     +-- IntegrityError        something that was recorded no longer matches
     |    +-- SealRefused      (trainguard.env) the environment failed its pre-seal check
     |    +-- GuardStopped     the runtime guard stopped a job on an alert (``stop_on``)
     +-- LedgerWriteError      (trainguard.ledger) a record could not be made durable
     +-- ProbeFailed           (trainguard.env) the isolated environment checker died
     +-- VerificationError     a signature or manifest does not verify

``scan_*`` functions turn ``ScanError`` into an ``error`` result and never raise it to
the caller; ``verify_*`` functions raise. The CLI catches only ``TrainguardError``.
"""

from __future__ import annotations

import pickle
from typing import Any

__all__ = [
    "ConfigError",
    "GlobalRefused",
    "GuardStopped",
    "IntegrityError",
    "LimitExceeded",
    "LoadBlocked",
    "ScanError",
    "SuspiciousCallBlocked",
    "TrainguardError",
    "VerificationError",
]


class TrainguardError(Exception):
    """Base of every error trainguard raises deliberately."""

    def diagnostics(self) -> str:
        """A human-readable explanation, suitable for the terminal."""
        return str(self)


class ScanError(TrainguardError):
    """An input could not be scanned to the end.

    ``member`` names the part of a container (``archive/data.pkl``, ``a.tar!x.pkl``) and
    ``offset`` the byte offset inside it where reading stopped, when known.
    """

    def __init__(self, message: str, *, member: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.message = message
        self.member = member
        self.offset = offset

    def diagnostics(self) -> str:
        where = []
        if self.member:
            where.append(f"member {self.member}")
        if self.offset is not None:
            where.append(f"offset {self.offset}")
        return f"{self.message} ({', '.join(where)})" if where else self.message


class LimitExceeded(ScanError):
    """A bound that keeps scanning cheap was reached (a bomb, or a file too big to judge)."""


class LoadBlocked(TrainguardError):
    """A file was not handed to a loader (or a load was stopped).

    ``path``, ``member``, ``global_name`` and ``rule`` say what was found where; ``result``
    is the full scan result when there is one; ``finding`` is the ``load.blocked`` finding
    that was recorded.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str,
        member: str | None = None,
        global_name: str | None = None,
        rule: str | None = None,
        result: Any = None,
        finding: Any = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.member = member
        self.global_name = global_name
        self.rule = rule
        self.result = result
        self.finding = finding


class GlobalRefused(LoadBlocked, pickle.UnpicklingError):
    """The restricted unpickler was asked for a global the scan of that file did not allow.

    Both a ``LoadBlocked`` (trainguard's tree) and an ``UnpicklingError`` (what code around
    an unpickler expects)."""


class SuspiciousCallBlocked(LoadBlocked):
    """Code running inside a load tried something a checkpoint never needs (a shell, a
    socket, a signal, new code); the audit hook stopped it."""

    def __init__(self, message: str, *, event: str, path: str, finding: Any = None) -> None:
        super().__init__(message, path=path, rule="runtime.suspicious_call", finding=finding)
        self.event = event


class ConfigError(TrainguardError):
    """A policy or configuration source is malformed."""


class IntegrityError(TrainguardError):
    """Recorded state (an environment seal, a ledger) no longer matches reality."""


class GuardStopped(IntegrityError):
    """The runtime guard stopped the job because an alert reached ``stop_on``.

    ``alert`` is the ``trainguard.findings.Alert`` that stopped it."""

    def __init__(self, message: str, *, alert: Any = None) -> None:
        super().__init__(message)
        self.alert = alert


class VerificationError(TrainguardError):
    """A signature, manifest or chain failed verification."""
