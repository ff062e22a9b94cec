"""trainguard: keeps PyTorch training jobs honest on shared GPU clusters.

The public API is re-exported here; importing ``trainguard`` never imports torch, rich or
the command line. Loading-side names are resolved on first use (PEP 562), so a process that
only scans never pays for them.
"""

import typing as _typing

from trainguard.errors import (
    ConfigError,
    GuardStopped,
    IntegrityError,
    LimitExceeded,
    LoadBlocked,
    ScanError,
    SuspiciousCallBlocked,
    TrainguardError,
    VerificationError,
)
from trainguard.findings import (
    Alert,
    FileResult,
    Finding,
    Location,
    Rule,
    ScanReport,
    Severity,
    Verdict,
)
from trainguard.scan import Limits, Policy, scan_bytes, scan_file, scan_path

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "ConfigError",
    "ConvertResult",
    "FileResult",
    "Finding",
    "Guard",
    "GuardStopped",
    "IntegrityError",
    "LimitExceeded",
    "Limits",
    "LoadBlocked",
    "Location",
    "Policy",
    "Rule",
    "ScanError",
    "ScanReport",
    "Severity",
    "SuspiciousCallBlocked",
    "TrainguardError",
    "Verdict",
    "VerificationError",
    "__version__",
    "convert",
    "load",
    "protect",
    "protected",
    "scan_bytes",
    "scan_file",
    "scan_path",
    "unprotect",
]

_LAZY = {
    "load": "trainguard.load",
    "protect": "trainguard.load",
    "protected": "trainguard.load",
    "unprotect": "trainguard.load",
    "convert": "trainguard.load",
    "ConvertResult": "trainguard.load",
    "Guard": "trainguard.guard.core",
}

if _typing.TYPE_CHECKING:
    from trainguard.guard.core import Guard
    from trainguard.load import ConvertResult, convert, load, protect, protected, unprotect


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainguard' has no attribute {name!r}")
    import importlib

    package = importlib.import_module(module)
    # ``trainguard.load`` is the package itself, callable as ``trainguard.load(f)``; naming
    # the function instead would break ``import trainguard.load.audithook``
    value = package if name == "load" else getattr(package, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
