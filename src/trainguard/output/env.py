"""Renderers for environment reports: ``render(report, fmt)`` like scan's, plus the
progress bar the CLI shows on a terminal (stderr) while ``env verify``/``env seal`` run."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from trainguard.env.report import EnvReport

if TYPE_CHECKING:
    from trainguard.env.check import Progress

__all__ = ["FORMATS", "progress_bar", "render"]

FORMATS = ("human", "json", "sarif")


def render(report: EnvReport, fmt: str, *, color: bool = False, verbose: bool = False) -> str:
    if fmt == "json":
        return json.dumps(report.to_json(), indent=2, default=str) + "\n"
    if fmt == "sarif":
        from trainguard.output.env_sarif import render as sarif

        return sarif(report)
    if fmt == "human":
        from trainguard.output.env_human import render as human

        return human(report, color=color, verbose=verbose)
    raise ValueError(f"unknown format {fmt!r}")


@contextmanager
def progress_bar(enabled: bool) -> Iterator[Progress | None]:
    """Yield a ``progress`` callback drawing a rich bar on stderr, or None when disabled
    (the CLI passes ``sys.stderr.isatty()``: never a bar in logs or pipes)."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    labels = {"hash": "hashing", "pyc": "compiling .pyc"}
    with Progress(
        TextColumn("{task.description:<16}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(labels.get(phase, phase), total=total)
            bar.update(tasks[phase], completed=done, total=total)

        callback: Callable[[str, int, int], None] = update
        yield callback
