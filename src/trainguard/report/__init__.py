"""``trainguard report``: a ledger as a terminal summary, a JSON document or one
self-contained HTML page.

``build`` reads and verifies a ledger into a frozen ``ReportModel``; the renderers read
only the model. Importing this package imports neither rich nor jinja2: each renderer
imports its own library when it is used.

::

    model = build("runs/ledger")
    write_html(model, "report.html")
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainguard.report.model import ReportModel, build

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["ReportModel", "build", "render_html", "render_terminal", "run_report", "write_html"]


def render_terminal(model: ReportModel, console: Console) -> None:
    """Print the summary of ``model`` on ``console`` (see ``report.terminal``)."""
    from trainguard.report import terminal

    terminal.render_terminal(model, console)


def render_html(model: ReportModel) -> str:
    """The self-contained HTML page of ``model`` (see ``report.html``)."""
    from trainguard.report import html

    return html.render_html(model)


def write_html(model: ReportModel, path: str | os.PathLike[str]) -> Path:
    from trainguard.report import html

    return html.write_html(model, path)


def run_report(ledger: Path | str, output: Path | None, fmt: str, *, public_key: Any = None) -> int:
    """What ``trainguard report [--ledger DIR] [-o FILE] [--format human|json]`` does.

    ``human`` prints the summary on stdout; ``json`` prints the model as one JSON
    document on stdout. ``-o`` writes the HTML page as well, whichever the format, and
    says so on stderr. Returns 0: a report of a tampered ledger is still a report (its
    banner says so; ``trainguard ledger verify`` is the verb whose exit code judges).
    """
    model = build(ledger, public_key=public_key)
    if fmt == "json":
        sys.stdout.write(json.dumps(model.to_json(), indent=2, default=str) + "\n")
    else:
        from rich.console import Console

        render_terminal(model, Console(soft_wrap=False))
    if output is not None:
        path = write_html(model, output)
        sys.stderr.write(f"trainguard: wrote {path}\n")
    return 0
