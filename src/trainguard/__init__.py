"""trainguard: keeps PyTorch training jobs honest on shared GPU clusters.

The public API is re-exported here; importing ``trainguard`` never imports torch, rich or
the command line.
"""

from trainguard.errors import (
    ConfigError,
    IntegrityError,
    LimitExceeded,
    ScanError,
    TrainguardError,
    VerificationError,
)
from trainguard.findings import FileResult, Finding, Location, Rule, ScanReport, Severity, Verdict
from trainguard.scan import Limits, Policy, scan_bytes, scan_file, scan_path

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FileResult",
    "Finding",
    "IntegrityError",
    "LimitExceeded",
    "Limits",
    "Location",
    "Policy",
    "Rule",
    "ScanError",
    "ScanReport",
    "Severity",
    "TrainguardError",
    "Verdict",
    "VerificationError",
    "__version__",
    "scan_bytes",
    "scan_file",
    "scan_path",
]
