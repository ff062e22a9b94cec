"""Optional packages that some format readers need, and the one message for when one is missing.

Every reader that imports an optional package lazily (py7zr, lz4, h5py, jinja2, PyYAML) says
the same thing when it is absent, so that "could not check" always comes with its remedy:
the ``scan`` extra installs every one of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trainguard.errors import ScanError
from trainguard.findings import Rule, Severity

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan

__all__ = ["INSTALL_HINT", "missing_extra", "missing_extra_error"]

INSTALL_HINT = "install it with: pip install 'trainguard[scan]'"


def missing_extra_error(package: str, what: str, member: str | None = None) -> ScanError:
    """The error a reader raises when ``package`` is needed to read ``what``."""
    return ScanError(
        f"{what}: not scanned, the optional package {package} is not installed; {INSTALL_HINT}",
        member=member,
    )


def missing_extra(ctx: FileScan, package: str, member: str | None, what: str = "") -> None:
    """Record that ``member`` (or the file) could not be checked without ``package``.

    The file gets the ``error`` verdict (never ``safe``) and a ``scan.error`` finding whose
    message names the package and the install command (``evidence.package``).
    """
    msg = missing_extra_error(package, what or "this part").message
    ctx.complete = False
    ev = {"kind": "error", "package": package, "extra": "scan"}
    ctx.add(Rule.ERROR, Severity.MEDIUM, msg, member, None, ev)
