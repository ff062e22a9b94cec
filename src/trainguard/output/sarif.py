"""SARIF 2.1.0 for code-scanning UIs: one result per finding, rules described once."""

from __future__ import annotations

import json
from typing import Any

import trainguard
from trainguard.findings import Rule, ScanReport, Severity

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

_RULE_TEXT = {
    Rule.CODE_EXECUTION: "The file runs code when loaded (pickle call, gadget, bytecode).",
    Rule.UNKNOWN_GLOBAL: "The file references a global that no allowlist vouches for.",
    Rule.UNKNOWN_FORMAT: "The file's format was not recognised, so it was not judged.",
    Rule.MALFORMED: "A header or structure is inconsistent in a way loaders can be hurt by.",
    Rule.CONTAINER_ANOMALY: "The container is unusual in a way used to evade scanners.",
    Rule.PATH_TRAVERSAL: "A path inside the file points outside where it should.",
    Rule.TEMPLATE_INJECTION: "A template tries to escape its sandbox.",
    Rule.POLICY_EXPIRED: "An allowlist entry that covered this file has expired.",
    Rule.ERROR: "The file could not be scanned to the end.",
    Rule.LOAD_BLOCKED: "A load was blocked by policy.",
    Rule.SUSPICIOUS_CALL: "Code running during a load attempted a blocked action.",
    Rule.ENV_FILE_MODIFIED: "An installed file differs from its RECORD, wheel, seal or source.",
    Rule.ENV_FILE_ADDED: "A file that no RECORD, wheel or seal accounts for is importable.",
    Rule.ENV_FILE_MISSING: "A file that was installed or sealed is gone.",
    Rule.ENV_STARTUP_HOOK: "Code runs at interpreter start-up or import without being asked.",
    Rule.ENV_SEAL_INVALID: "The environment seal's root or signature does not verify.",
    Rule.ENV_ERROR: "Part of the environment could not be checked.",
}


def _uri(path: str) -> str:
    return path.replace("\\", "/")


def render(report: ScanReport) -> str:
    rules = sorted({f.rule for fr in report.files for f in fr.findings}, key=lambda r: r.value)
    index = {r: i for i, r in enumerate(rules)}
    results: list[dict[str, Any]] = []
    for fr in report.files:
        for f in fr.findings:
            region: dict[str, Any] = {}
            if f.location.offset is not None:
                region = {"region": {"byteOffset": f.location.offset}}
            logical = (
                [{"fullyQualifiedName": f.location.member, "kind": "member"}]
                if f.location.member
                else []
            )
            loc: dict[str, Any] = {
                "physicalLocation": {"artifactLocation": {"uri": _uri(f.location.path)}, **region}
            }
            if logical:
                loc["logicalLocations"] = logical
            results.append(
                {
                    "ruleId": f.rule.value,
                    "ruleIndex": index[f.rule],
                    "level": f.severity.sarif_level,
                    "message": {"text": f.message},
                    "locations": [loc],
                    "properties": {
                        "severity": f.severity.label,
                        "security-severity": f.severity.security_severity,
                        "verdict": fr.verdict.value,
                        "evidence": json.loads(json.dumps(dict(f.evidence), default=str)),
                    },
                }
            )
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
                                    "security-severity": Severity.HIGH.security_severity
                                },
                            }
                            for r in rules
                        ],
                    }
                },
                "artifacts": [{"location": {"uri": _uri(fr.path)}} for fr in report.files],
                "results": results,
            }
        ],
    }
    return json.dumps(doc, indent=2) + "\n"
