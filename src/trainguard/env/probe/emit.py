"""Findings as plain dicts, the only shape that crosses back to the parent process.

The rule ids are the ``Rule`` values of ``trainguard.findings``; they are spelled out here
because the probe may not import the ``trainguard`` package (a test keeps them in step).
"""

from __future__ import annotations

import os
from typing import Any

FILE_MODIFIED = "env.file_modified"
FILE_ADDED = "env.file_added"
FILE_MISSING = "env.file_missing"
STARTUP_HOOK = "env.startup_hook"
SEAL_INVALID = "env.seal_invalid"
ERROR = "env.error"

LOW = "low"
MEDIUM = "medium"
HIGH = "high"
CRITICAL = "critical"

# Files an interpreter executes or maps into memory: a change to one of these is a change
# to what runs, so they are always hashed and their findings are the most severe.
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".pyw", ".so", ".pyd", ".pth", ".dylib", ".dll")


def is_code(path: str) -> bool:
    """True for importable or loadable files (``libfoo.so.1`` counts as a ``.so``)."""
    name = os.path.basename(path)
    return name.endswith(CODE_SUFFIXES) or ".so." in name


def severity_for(path: str, code: str = CRITICAL, other: str = HIGH) -> str:
    return code if is_code(path) else other


def finding(
    rule: str,
    severity: str,
    message: str,
    path: str,
    member: str | None = None,
    **evidence: Any,
) -> dict[str, Any]:
    return {
        "rule": rule,
        "severity": severity,
        "message": message,
        "path": path,
        "member": member,
        "evidence": evidence,
    }
