"""The terminal report, rendered with rich (imported here only, never by ``trainguard``)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from trainguard.findings import ScanReport, Severity, Verdict
from trainguard.output.styles import SEVERITY_STYLE

_VERDICT_STYLE = {
    Verdict.SAFE: "green",
    Verdict.SUSPICIOUS: "yellow",
    Verdict.UNSAFE: "bold red",
    Verdict.ERROR: "magenta",
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
            sev = SEVERITY_STYLE[f.severity]
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


_STATUS_STYLE = {"safe": "green", "unknown": "yellow", "dangerous": "bold red"}


def explain(report: ScanReport, *, color: bool = False) -> str:
    """Every global of every file: where it was found, how it is used, and why it was judged
    so, for people deciding what to allowlist."""
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=color, no_color=not color, width=160)
    for fr in report.files:
        if not fr.globals:
            continue
        table = Table(title=escape(fr.path), title_justify="left", box=None, header_style="bold")
        for col in ("global", "written as", "where", "use", "judged", "why"):
            table.add_column(col, overflow="fold")
        for g in fr.globals:
            written = f"{g.module}.{g.qualname}"
            where = (g.member or "") + (f"@{g.offset}" if g.offset is not None else "")
            style = _STATUS_STYLE.get(g.status, "")
            table.add_row(
                escape(g.name),
                "" if written == g.name else escape(written),
                escape(where),
                g.use,
                f"[{style}]{g.status}[/]",
                escape(g.reason),
            )
        console.print(table)
    return buf.getvalue()
