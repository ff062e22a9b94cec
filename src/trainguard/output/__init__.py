"""Renderers for scan reports, one module per output format, each ``render(report) -> str``."""

from __future__ import annotations

from collections.abc import Callable

from trainguard.findings import ScanReport

__all__ = ["FORMATS", "render"]

FORMATS = ("human", "json", "sarif")


def render(report: ScanReport, fmt: str, *, color: bool = False) -> str:
    renderer: Callable[..., str]
    if fmt == "json":
        from trainguard.output.json import render as renderer
    elif fmt == "sarif":
        from trainguard.output.sarif import render as renderer
    elif fmt == "human":
        from trainguard.output.human import render as renderer

        return renderer(report, color=color)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return renderer(report)
