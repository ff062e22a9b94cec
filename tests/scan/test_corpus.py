"""The evidence corpus (``tests/corpus.py``) against the scanner.

Every malicious case must be flagged (``unsafe`` or ``suspicious``; bombs may be ``error``),
every benign case must be ``safe`` in every file, and no payload may have run.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

import trainguard

import corpus

MALICIOUS = [s for s in corpus.SPECS if s.malicious]
BENIGN = [s for s in corpus.SPECS if not s.malicious]
FLAGGED = {"unsafe", "suspicious"}


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, corpus.Case]]:
    root = tmp_path_factory.mktemp("corpus")
    cases = corpus.build_corpus(root)
    return root, {c.name: c for c in cases}


def _markers(root: Path) -> list[Path]:
    return sorted(root.rglob("PWNED-*"))


def _describe(report: trainguard.ScanReport) -> str:
    lines = []
    for f in report.files:
        lines.append(f"{f.path}: {f.verdict.value} ({f.format})")
        for x in f.findings:
            g = x.evidence.get("global")
            use = x.evidence.get("use")
            extra = f" [global={g} use={use}]" if g else ""
            lines.append(f"    {x.rule.value} {x.severity.label}: {x.message}{extra}")
    return "\n".join(lines)


def test_corpus_shape(built: tuple[Path, dict[str, corpus.Case]]) -> None:
    root, cases = built
    assert [s.name for s in corpus.SPECS] == list(cases)
    assert sum(c.malicious for c in cases.values()) >= 60
    assert sum(not c.malicious for c in cases.values()) >= 40
    for c in cases.values():
        assert re.fullmatch(r"[a-z0-9]+(?:-[a-z0-9]+)*", c.name), c.name
        assert c.path.exists(), c
        assert c.path.is_relative_to(root)
        assert c.expect in (("flagged", "error-or-flagged") if c.malicious else ("safe",))
    techniques = Counter(c.technique for c in cases.values())
    assert [t for t, k in techniques.items() if k > 1] == []
    assert _markers(root) == [], "building the corpus ran a payload"


@pytest.mark.parametrize("spec", MALICIOUS, ids=[s.name for s in MALICIOUS])
def test_malicious_flagged(built: tuple[Path, dict[str, corpus.Case]], spec: corpus.Spec) -> None:
    case = built[1][spec.name]
    report = trainguard.scan_path(case.path)
    assert report.files, f"nothing scanned for {case.path}"
    verdicts = {f.verdict.value for f in report.files}
    wanted = FLAGGED | ({"error"} if case.expect == "error-or-flagged" else set())
    assert verdicts & wanted, f"MISSED {case.technique}\n{_describe(report)}"


@pytest.mark.parametrize("spec", BENIGN, ids=[s.name for s in BENIGN])
def test_benign_safe(built: tuple[Path, dict[str, corpus.Case]], spec: corpus.Spec) -> None:
    case = built[1][spec.name]
    report = trainguard.scan_path(case.path)
    assert report.files, f"nothing scanned for {case.path}"
    bad = [f for f in report.files if f.verdict.value != "safe"]
    assert not bad, f"FALSE ALARM on {case.technique}\n{_describe(report)}"


def test_no_payload_ran(built: tuple[Path, dict[str, corpus.Case]]) -> None:
    root, cases = built
    trainguard.scan_path(*(c.path for c in cases.values()))
    assert _markers(root) == []
