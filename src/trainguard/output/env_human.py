"""The terminal report of ``env verify``/``env seal``, rendered with rich."""

from __future__ import annotations

import io

from rich.console import Console
from rich.markup import escape

from trainguard.env.report import EnvReport, exit_code
from trainguard.findings import Severity
from trainguard.output.styles import SEVERITY_STYLE

_VERDICT = {0: ("[green]INTACT[/]"), 1: "[bold red]TAMPERED[/]", 2: "[magenta]INCOMPLETE[/]"}


def render(report: EnvReport, *, color: bool = False, verbose: bool = False) -> str:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=120, soft_wrap=True)
    for f in report.findings:
        if f.severity is Severity.INFO and not verbose:
            continue
        sev = SEVERITY_STYLE[f.severity]
        console.print(f"[{sev}]{f.severity.label:<8}[/] {f.rule.value:<18} {escape(f.message)}")
        console.print(f"{'':<8} {'':<18} [dim]at {escape(str(f.location))}[/]")
    # already rendered (with its colours): printing it through the console again would read
    # its escape sequences as text and markup
    return buf.getvalue() + summary(report, color=color)


def summary(report: EnvReport, *, color: bool = False) -> str:
    """A few lines for the end of the report: verdict, what was checked, what was not."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=120, soft_wrap=True)
    c = report.checked
    console.print(
        f"{_VERDICT[exit_code(report)]} {escape(report.python)}: "
        f"{len(report.findings)} finding(s); "
        f"{c.distributions} distributions, {c.record_files} RECORD files, {c.pyc} .pyc compiled"
        + (f", {c.sealed} sealed entries" if report.seal else "")
        + (f", {c.wheels} wheels" if c.wheels else "")
        + f"; {c.bytes_hashed / 1e6:.0f} MB hashed in {report.seconds:.2f} s"
    )
    for note in report.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    return buf.getvalue()
