"""The one exception tree of trainguard.

::

    TrainguardError            every error trainguard raises on purpose
     +-- ScanError             an input could not be read or parsed to the end
     |    +-- LimitExceeded    a resource bound (size, ops, depth, ratio, time) was hit
     +-- ConfigError           a policy or configuration file is wrong
     +-- IntegrityError        something that was recorded no longer matches
     +-- VerificationError     a signature or manifest does not verify

``scan_*`` functions turn ``ScanError`` into an ``error`` result and never raise it to
the caller; ``verify_*`` functions raise. The CLI catches only ``TrainguardError``.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "IntegrityError",
    "LimitExceeded",
    "ScanError",
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


class ConfigError(TrainguardError):
    """A policy or configuration source is malformed."""


class IntegrityError(TrainguardError):
    """Recorded state (an environment seal, a ledger) no longer matches reality."""


class VerificationError(TrainguardError):
    """A signature, manifest or chain failed verification."""
