"""Placeholder: being written (see the helper task)."""

from __future__ import annotations

from typing import Any

FORMATS: tuple[str, ...] = ()


def sniff(head: bytes, win: Any) -> str | None:
    return None


def scan(ctx: Any, win: Any, member: str | None, depth: int, top: bool) -> None:
    raise NotImplementedError


def check_template(ctx: Any, body: str, member: str | None, offset: int) -> None:
    return None


def scan_config(ctx: Any, zf: Any, win: Any, member: str | None, depth: int) -> None:
    return None
