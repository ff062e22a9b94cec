"""The drill's matrix, for a terminal (rich) or as JSON."""

from __future__ import annotations

import json
from typing import Any

from trainguard.drill.runner import DrillReport

__all__ = ["render_human", "render_json"]


def render_json(report: DrillReport) -> str:
    return json.dumps(report.to_json(), indent=2)


def render_human(report: DrillReport, console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title="trainguard drill", title_justify="left")
    for column in ("attack", "caught", "first expected alert", "latency", "attribution"):
        table.add_column(column, overflow="fold")
    for a in report.attacks:
        detected = Text("yes", style="bold green") if a.detected else Text("NO", style="bold red")
        hit = next((x for x in a.alerts if x in a.expected), " | ".join(a.expected))
        steps = "-" if a.latency_steps is None else f"{a.latency_steps} st"
        secs = "-" if a.latency_s is None else f"{a.latency_s:.2f} s"
        where = a.where if a.where is None or "/" not in a.where else _short(a.where)
        who = ", ".join(
            x for x in (
                None if a.rank is None else f"rank {a.rank}",
                None if a.pid is None else f"pid {a.pid}",
                where,
            ) if x
        )  # fmt: skip
        table.add_row(Text(a.attack), detected, Text(hit), Text(f"{steps}, {secs}"), Text(who))
    console.print(table)
    caught = sum(a.detected for a in report.attacks)
    clean = len(report.clean_alerts)
    style = "green" if clean == 0 else "bold red"
    console.print(
        Text(f"clean run: {report.clean_steps} steps x 2 ranks, {clean} alert(s)", style=style)
    )
    verdict = "PASS" if report.ok else "FAIL"
    console.print(
        Text(
            f"{verdict}: {caught}/{len(report.attacks)} attacks caught, clean run "
            f"{'silent' if clean == 0 else 'NOT silent'}, {report.seconds:.0f} s; "
            f"runs and ledgers in {report.workdir}",
            style="bold green" if report.ok else "bold red",
        )
    )


def _short(path: str) -> str:
    """The last two parts of a path (with a member suffix kept): enough to recognise it."""
    parts = path.split("/")
    return "/".join(parts[-2:])
