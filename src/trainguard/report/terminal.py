"""The terminal summary of a ledger, rendered with rich.

Every string from the ledger goes through ``_text``: it becomes a rich ``Text`` (never
markup, so ``[bold]`` in a message is shown, not obeyed) with control characters and
bidirectional overrides made visible, because an escape sequence in an alert message
would otherwise be written raw to the reader's terminal (clearing it, retitling it,
hiding lines). Colour follows the console, which honours ``NO_COLOR``.
"""

from __future__ import annotations

from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from trainguard.findings import Severity
from trainguard.output.styles import SEVERITY_STYLE
from trainguard.report.model import Item, ReportModel, short_time, visible

__all__ = ["render_terminal"]

MAX_ALERTS = 200
MAX_ITEMS = 20


def _text(value: object, style: str = "", limit: int = 500) -> Text:
    return Text(visible(str(value), limit), style=style)


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD)


def _sev(sev: Severity) -> Text:
    return Text(sev.label, style=SEVERITY_STYLE[sev])


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


def _state(ok: bool | None, good: str) -> Text:
    if ok is None:
        return Text("unknown", "magenta")
    return Text(good, "green") if ok else Text("FAILED", "bold red")


def render_terminal(model: ReportModel, console: Console, *, max_alerts: int = MAX_ALERTS) -> None:
    """Print the summary of ``model`` on ``console``: header, alerts, counts per rule,
    then the environment, checkpoint, scan and process sections that have content."""
    console.print(_header(model))
    v = model.verification
    if not v.intact:
        _items(console, "Ledger verification findings", v.findings, style="bold red")
    _alerts(console, model, max_alerts)
    _rules(console, model)
    _env(console, model)
    _checkpoints(console, model)
    _scans(console, model)
    _processes(console, model)


def _header(model: ReportModel) -> Panel:
    v = model.verification
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("ledger", _text(model.ledger))
    if v.intact:
        heads = (
            f"{v.heads_verified}/{v.heads} signed heads verified" if v.heads else "no signed heads"
        )
        state = Text(f"yes (hash chain intact, {heads})", style="green")
    else:
        why = v.error or f"{len(v.findings)} finding(s)"
        state = Text("NO: NOT INTACT, ", style="bold red") + _text(why, "bold red")
    grid.add_row("verified", state)
    for note in v.notes:
        grid.add_row("", _text(note, "dim"))
    ranks = [r for r in model.ranks if r is not None]
    span = Text(str(model.records))
    if model.first_time and model.last_time:
        span += _text(f"  ({short_time(model.first_time)} .. {short_time(model.last_time)} UTC)")
    grid.add_row("records", span)
    grid.add_row("runs", str(model.run_count))
    grid.add_row(
        "ranks", f"{len(ranks)}" + (f"  ({', '.join(map(str, ranks[:16]))})" if ranks else "")
    )
    grid.add_row("steps", _opt(model.max_step))
    counts = Text()
    for sev in sorted(Severity, reverse=True):
        n = model.severity_counts()[sev]
        counts.append(f"{n} {sev.label}", style=SEVERITY_STYLE[sev] if n else "dim")
        counts.append("  ")
    grid.add_row("alerts", Text(f"{len(model.alerts)}  ") + counts)
    border = "green" if v.intact else "bold red"
    return Panel(grid, title="trainguard report", title_align="left", border_style=border)


def _alerts(console: Console, model: ReportModel, limit: int) -> None:
    if not model.alerts:
        console.print(Text("No alerts.", style="green"))
        return
    shown = model.alerts[:limit]
    one_day = len({a.time[:10] for a in shown}) == 1
    table = _table("Alerts" + (f" ({shown[0].time[:10]}, UTC)" if one_day else " (UTC)"))
    table.add_column("time", no_wrap=True)
    table.add_column("step", justify="right")
    table.add_column("rank", justify="right")
    table.add_column("rule", overflow="fold")
    table.add_column("severity", no_wrap=True)
    table.add_column("message", ratio=1, min_width=20)
    for a in shown:
        when = short_time(a.time)[11:] if one_day else short_time(a.time)
        table.add_row(
            _text(when or a.time), _opt(a.step), _opt(a.rank), _text(a.rule),
            _sev(a.severity), _text(a.message),
        )  # fmt: skip
    console.print(table)
    if len(model.alerts) > limit:
        more = len(model.alerts) - limit
        console.print(Text(f"... {more} more alert(s): trainguard ledger show", style="dim"))


def _rules(console: Console, model: ReportModel) -> None:
    rows = model.rule_counts()
    if not rows:
        return
    table = _table("Alerts per rule")
    table.add_column("rule")
    table.add_column("count", justify="right")
    table.add_column("worst")
    for rule, n, worst in rows:
        table.add_row(_text(rule), str(n), _sev(worst))
    console.print(table)


def _items(
    console: Console, title: str, items: tuple[Item, ...], *, style: str = "", indent: int = 0
) -> None:
    if not items:
        return
    if title:
        console.print(Text(title, style=style or "bold"))
    pad = " " * indent
    for f in items[:MAX_ITEMS]:
        line = Text(pad + "  ") + _sev(f.severity) + " " + _text(f.rule) + ": "
        line += _text(f.message)
        if f.location:
            line += Text(" at ", style="dim") + _text(f.location, "dim")
        console.print(line)
    if len(items) > MAX_ITEMS:
        console.print(Text(f"{pad}  ... {len(items) - MAX_ITEMS} more", style="dim"))


def _env(console: Console, model: ReportModel) -> None:
    if not model.env:
        return
    console.print(Text("Environment verification", style="bold"))
    for e in model.env:
        state = _state(e.ok, "intact")
        seconds = f", {e.seconds:.1f} s" if e.seconds is not None else ""
        console.print(
            Text("  ") + _text(short_time(e.time)) + " " + state + f"  {_opt(e.files)} files"
            f"{seconds}, {len(e.findings)} finding(s)"
        )
        _items(console, "", e.findings, indent=2)


def _checkpoints(console: Console, model: ReportModel) -> None:
    if not model.checkpoints:
        return
    table = _table("Checkpoints")
    for col in ("time", "action", "path", "digest", "result"):
        wide = col == "path"
        table.add_column(col, ratio=1 if wide else None, min_width=20 if wide else None)
    for c in model.checkpoints:
        result = _state(c.ok, "ok") if c.action == "verified" else Text("recorded", "dim")
        if c.findings:
            result += Text(f" {len(c.findings)} finding(s)", "red")
        table.add_row(
            _text(short_time(c.time)), c.action, _text(c.path), _text((c.digest or "-")[:16]),
            result,
        )  # fmt: skip
    console.print(table)
    for c in model.checkpoints:
        _items(console, "", c.findings)


_VERDICT_STYLE = {"safe": "green", "suspicious": "yellow", "unsafe": "bold red", "error": "magenta"}


def _scans(console: Console, model: ReportModel) -> None:
    if not model.scans:
        return
    table = _table("Scans")
    for col in ("time", "path", "verdict", "findings"):
        table.add_column(
            col, ratio=1 if col == "path" else None, min_width=20 if col == "path" else None
        )
    for s in model.scans:
        style = _VERDICT_STYLE.get(s.verdict, "magenta")
        table.add_row(
            _text(short_time(s.time)), _text(s.path), _text(s.verdict, style), str(len(s.findings))
        )
    console.print(table)


def _processes(console: Console, model: ReportModel) -> None:
    if not (model.runs or model.processes or model.guards):
        return
    parts: list[Table] = []
    if model.runs:
        runs = _table("Runs")
        for col in ("time", "", "command", "exit code", "signal"):
            runs.add_column(
                col,
                ratio=1 if col == "command" else None,
                min_width=16 if col == "command" else None,
            )
        for r in model.runs:
            bad = (r.exit_code not in (0, None)) or r.signal is not None
            runs.add_row(
                _text(short_time(r.time)), r.action, _text(r.command),
                Text(_opt(r.exit_code), "red" if bad else ""), _text(_opt(r.signal)),
            )  # fmt: skip
        parts.append(runs)
    if model.guards or model.processes:
        ranks = _table("Ranks")
        for col in ("rank", "optimizer", "checks", "steps", "alerts", "exit"):
            ranks.add_column(col, ratio=1 if col == "checks" else None)
        exits = {p.rank: p for p in model.processes}
        for g in model.guards:
            p = exits.pop(g.rank, None)
            ranks.add_row(
                _opt(g.rank), _text(_opt(g.optimizer)), _text(", ".join(g.checks)),
                _opt(g.steps) if g.stopped else Text("no guard.stopped", "yellow"),
                _opt(g.alerts), _exit(p.code, p.signal) if p else Text("-"),
            )  # fmt: skip
        for rank, p in exits.items():
            ranks.add_row(_opt(rank), "-", "-", "-", "-", _exit(p.code, p.signal))
        parts.append(ranks)
    console.print(Group(*parts))


def _exit(code: int | None, signal: str | None) -> Text:
    if signal is not None:
        return Text("signal ", "bold red") + _text(signal, "bold red")
    return Text(_opt(code), "green" if code == 0 else "red")
