"""Terminal styles shared by the rich renderers (one place, so every report agrees)."""

from __future__ import annotations

from trainguard.findings import Severity

SEVERITY_STYLE = {
    Severity.INFO: "dim",
    Severity.LOW: "cyan",
    Severity.MEDIUM: "yellow",
    Severity.HIGH: "red",
    Severity.CRITICAL: "bold red",
}
