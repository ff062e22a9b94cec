"""The repository's own docs stay in step with the code.

``docs/threats.md`` must have a table row for every alert id of ``Rule``, and every id its
tables name must be a real ``Rule`` value (ids the code does not have belong in prose, in
its "Not built yet" section). ``docs/architecture.md`` must name every package, exception
and exit code it documents. The README must link both.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import trainguard
from trainguard import errors, exit_codes
from trainguard.findings import Rule

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
THREATS = DOCS / "threats.md"
ARCHITECTURE = DOCS / "architecture.md"
README = ROOT / "README.md"
PACKAGE = Path(trainguard.__file__).resolve().parent

ID = re.compile(r"`([a-z_]+\.[a-z_]+)`")
"""A backticked ``word.word`` token: how the docs' tables write an alert id."""


def _table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("|")]


def _first_cell(row: str) -> str:
    return row.strip().strip("|").split("|")[0].strip()


def test_docs_exist() -> None:
    assert THREATS.is_file()
    assert ARCHITECTURE.is_file()


def test_every_rule_has_a_row_in_the_alert_table() -> None:
    rows = _table_rows(THREATS.read_text(encoding="utf-8"))
    first = {_first_cell(r) for r in rows}
    missing = [r.value for r in Rule if f"`{r.value}`" not in first]
    assert not missing, f"Rule ids without a row in docs/threats.md: {missing}"


def test_each_rule_has_exactly_one_row() -> None:
    rows = _table_rows(THREATS.read_text(encoding="utf-8"))
    first = [_first_cell(r) for r in rows]
    twice = sorted({c for c in first if c.startswith("`") and first.count(c) > 1})
    assert not twice, f"alert ids with more than one row: {twice}"


def test_every_id_in_the_tables_is_a_rule() -> None:
    known = {r.value for r in Rule}
    found = {m for row in _table_rows(THREATS.read_text(encoding="utf-8")) for m in ID.findall(row)}
    assert found, "no alert ids found in the tables of docs/threats.md"
    unknown = sorted(found - known)
    assert not unknown, f"docs/threats.md tables name ids that Rule does not have: {unknown}"


def test_rows_say_severity_and_attack() -> None:
    severities = ("info", "low", "medium", "high", "critical", "none yet")
    for row in _table_rows(THREATS.read_text(encoding="utf-8")):
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if not ID.fullmatch(cells[0]) or cells[0].strip("`") not in {r.value for r in Rule}:
            continue
        assert len(cells) == 4, row
        assert any(s in cells[1] for s in severities), row
        assert cells[2], row
        assert re.fullmatch(r"-|\d(, \d)*", cells[3]), row


@pytest.mark.parametrize("target", ["docs/threats.md", "docs/architecture.md"])
def test_readme_links_the_docs(target: str) -> None:
    text = README.read_text(encoding="utf-8")
    assert f"]({target})" in text, f"README does not link {target}"
    assert (ROOT / target).is_file()


def test_readme_points_inside_the_repo() -> None:
    text = README.read_text(encoding="utf-8")
    for outside in ("THREATS.md", "ARCHITECTURE.md"):
        assert outside not in text, f"README names {outside}, which is not in this repository"


def test_links_between_docs_resolve() -> None:
    for doc in (THREATS, ARCHITECTURE):
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{doc.name} links a missing {target}"


def test_architecture_names_every_package() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    packages = sorted(
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()
    )
    assert packages
    missing = [name for name in packages if f"`{name}/`" not in text]
    assert not missing, f"packages missing from docs/architecture.md: {missing}"


def test_architecture_names_every_exception() -> None:
    text = ARCHITECTURE.read_text(encoding="utf-8")
    missing = [name for name in errors.__all__ if name not in text]
    assert not missing, f"exceptions missing from docs/architecture.md: {missing}"


def test_architecture_lists_every_exit_code() -> None:
    rows = _table_rows(ARCHITECTURE.read_text(encoding="utf-8"))
    listed = {
        (cells[0], cells[1].strip("`"))
        for cells in ([c.strip() for c in r.strip().strip("|").split("|")] for r in rows)
        if len(cells) >= 2 and cells[0].isdigit()
    }
    codes = {
        (str(value), name)
        for name, value in vars(exit_codes).items()
        if name.isupper() and isinstance(value, int)
    }
    assert codes
    assert codes <= listed, f"exit codes missing from docs/architecture.md: {codes - listed}"
