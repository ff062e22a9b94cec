"""The terminal report, rendered with rich (imported here only, never by ``trainguard``)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainguard.findings import ScanReport, Severity, Verdict

_VERDICT_STYLE = {
    Verdict.SAFE: "green",
    Verdict.SUSPICIOUS: "yellow",
    Verdict.UNSAFE: "bold red",
    Verdict.ERROR: "magenta",
}
_SEV_STYLE = {
    Severity.INFO: "dim",
    Severity.LOW: "cyan",
    Severity.MEDIUM: "yellow",
    Severity.HIGH: "red",
    Severity.CRITICAL: "bold red",
}


def render(report: ScanReport, *, color: bool = False, verbose: bool = False) -> str:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=120, soft_wrap=True)
    for fr in report.files:
        style = _VERDICT_STYLE[fr.verdict]
        console.print(
            f"[{style}]{fr.verdict.value.upper():<10}[/] {escape(fr.path)} "
            f"[dim]({escape(fr.format)})[/]"
        )
        for f in fr.findings:
            if f.severity is Severity.INFO and not verbose:
                continue
            sev = _SEV_STYLE[f.severity]
            where = escape(str(f.location))
            console.print(
                f"    [{sev}]{f.severity.label:<8}[/] {f.rule.value:<24} {escape(f.message)}"
            )
            console.print(f"    {'':<8} {'':<24} [dim]at {where}[/]")
    return buf.getvalue()


def summary(report: ScanReport, *, color: bool = False) -> str:
    """One table of counts, for stderr."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=120)
    s = report.summary()
    cols = ("files", "safe", "suspicious", "unsafe", "error", "seconds")
    table = Table(show_header=True, header_style="bold", box=None)
    for col in cols:
        table.add_column(col, justify="right")
    table.add_row(*(str(s[c]) for c in cols))
    console.print(table)
    return buf.getvalue()
