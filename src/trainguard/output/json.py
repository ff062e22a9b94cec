"""The JSON report: ``{"files": [...], "summary": {...}}`` (field names are a contract)."""

from __future__ import annotations

import json

from trainguard.findings import ScanReport


def render(report: ScanReport, *, explain: bool = False) -> str:
    return json.dumps(report.to_json(explain=explain), indent=2, default=str) + "\n"
