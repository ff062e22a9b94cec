"""trainguard: keeps PyTorch training jobs honest on shared GPU clusters.

The public API is re-exported here; importing ``trainguard`` never imports torch, rich or
the command line.
"""

from trainguard.convert import ConvertResult, convert
from trainguard.errors import (
    ConfigError,
    IntegrityError,
    LimitExceeded,
    LoadBlocked,
    ScanError,
    SuspiciousCallBlocked,
    TrainguardError,
    VerificationError,
)
from trainguard.findings import FileResult, Finding, Location, Rule, ScanReport, Severity, Verdict
from trainguard.load import load
from trainguard.protect import protect, protected, unprotect
from trainguard.scan import Limits, Policy, scan_bytes, scan_file, scan_path

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConvertResult",
    "FileResult",
    "Finding",
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
