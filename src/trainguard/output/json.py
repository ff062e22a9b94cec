"""The JSON report: ``{"files": [...], "summary": {...}}`` (field names are a contract)."""

from __future__ import annotations

import json

from trainguard.findings import ScanReport


def render(report: ScanReport) -> str:
    return json.dumps(report.to_json(), indent=2, sort_keys=False, default=str) + "\n"
