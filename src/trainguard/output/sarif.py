"""SARIF 2.1.0 for code-scanning UIs: one result per finding, rules described once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import trainguard
from trainguard.findings import Finding, Rule, ScanReport

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
    Rule.CHECKPOINT_MODIFIED: "A checkpoint file's bytes differ from what was signed.",
    Rule.CHECKPOINT_ADDED: "A checkpoint holds a file that was not signed (a loader may read it).",
    Rule.CHECKPOINT_MISSING: "A file that was signed as part of the checkpoint is gone.",
    Rule.CHECKPOINT_UNSIGNED: "The checkpoint has no signature, so nothing vouches for it.",
    Rule.CHECKPOINT_ERROR: "Part of the checkpoint could not be read, so it was not checked.",
    Rule.LEDGER_TAMPERED: "The ledger was edited, reordered, truncated or its heads forged.",
}


def _uri(path: str) -> str:
    return path.replace("\\", "/")


def location(f: Finding) -> dict[str, Any]:
    """A file (with byte offset and container member), or, for things with no file
    (``<environment>``), a logical location only."""
    logical = (
        [{"fullyQualifiedName": f.location.member, "kind": "member"}] if f.location.member else []
    )
    if f.location.path.startswith("<"):
        return {"logicalLocations": logical or [{"name": f.location.path}]}
    physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(f.location.path)}}
    if f.location.offset is not None:
        physical["region"] = {"byteOffset": f.location.offset}
    loc: dict[str, Any] = {"physicalLocation": physical}
    if logical:
        loc["logicalLocations"] = logical
    return loc


def log(
    findings: Sequence[tuple[Finding, dict[str, Any]]],
    *,
    artifacts: Sequence[str] = (),
    invocation: dict[str, Any] | None = None,
) -> str:
    """The SARIF document for ``(finding, extra result properties)`` pairs: rules described
    once, each rule's ``security-severity`` the worst of its findings."""
    rules = sorted({f.rule for f, _ in findings}, key=lambda r: r.value)
    index = {r: i for i, r in enumerate(rules)}
    worst = {r: max(f.severity for f, _ in findings if f.rule is r) for r in rules}
    results = [
        {
            "ruleId": f.rule.value,
            "ruleIndex": index[f.rule],
            "level": f.severity.sarif_level,
            "message": {"text": f.message},
            "locations": [location(f)],
            "properties": {
                "severity": f.severity.label,
                "security-severity": f.severity.security_severity,
                **extra,
                "evidence": json.loads(json.dumps(dict(f.evidence), default=str)),
            },
        }
        for f, extra in findings
    ]
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "trainguard",
                "version": trainguard.__version__,
                "informationUri": "https://github.com/trainguard/trainguard",
                "rules": [
                    {
                        "id": r.value,
                        "shortDescription": {"text": _RULE_TEXT[r]},
                        "properties": {"security-severity": worst[r].security_severity},
                    }
                    for r in rules
                ],
            }
        },
        "results": results,
    }
    if artifacts:
        run["artifacts"] = [{"location": {"uri": _uri(a)}} for a in artifacts]
    if invocation is not None:
        run["invocations"] = [invocation]
    doc = {"$schema": SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2) + "\n"


def render(report: ScanReport) -> str:
    pairs = [(f, {"verdict": fr.verdict.value}) for fr in report.files for f in fr.findings]
    return log(pairs, artifacts=[fr.path for fr in report.files])
