"""SARIF 2.1.0 for environment reports, with the rule texts and levels of ``sarif.py``.

Files become artifact locations; environment variables (``<environment>``) become
logical locations only, since they have no file to point at.
"""

from __future__ import annotations

import json
from typing import Any

import trainguard
from trainguard.env.report import EnvReport
from trainguard.findings import Finding
from trainguard.output.sarif import _RULE_TEXT, SCHEMA, _uri


def _location(f: Finding) -> dict[str, Any]:
    logical = (
        [{"fullyQualifiedName": f.location.member, "kind": "member"}] if f.location.member else []
    )
    if f.location.path.startswith("<"):
        return {"logicalLocations": logical or [{"name": f.location.path}]}
    loc: dict[str, Any] = {"physicalLocation": {"artifactLocation": {"uri": _uri(f.location.path)}}}
    if logical:
        loc["logicalLocations"] = logical
    return loc


def render(report: EnvReport) -> str:
    rules = sorted({f.rule for f in report.findings}, key=lambda r: r.value)
    index = {r: i for i, r in enumerate(rules)}
    results = [
        {
            "ruleId": f.rule.value,
            "ruleIndex": index[f.rule],
            "level": f.severity.sarif_level,
            "message": {"text": f.message},
            "locations": [_location(f)],
            "properties": {
                "severity": f.severity.label,
                "security-severity": f.severity.security_severity,
                "evidence": json.loads(json.dumps(dict(f.evidence), default=str)),
            },
        }
        for f in report.findings
    ]
    doc = {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "trainguard",
                        "version": trainguard.__version__,
                        "informationUri": "https://github.com/trainguard/trainguard",
                        "rules": [
                            {
                                "id": r.value,
                                "shortDescription": {"text": _RULE_TEXT[r]},
                                "properties": {
                                    "security-severity": max(
                                        f.severity for f in report.findings if f.rule is r
                                    ).security_severity
                                },
                            }
                            for r in rules
                        ],
                    }
                },
                "invocations": [
                    {
                        "executionSuccessful": report.complete,
                        "properties": {"summary": report.summary()},
                    }
                ],
                "results": results,
            }
        ],
    }
    return json.dumps(doc, indent=2) + "\n"
