"""Text and JSON files (configs, tokenizers, READMEs): data that no model loader executes.

``tokenizer_config.json`` may carry a Jinja chat template; it is checked like a GGUF one.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("json", "text")
MAX_TEMPLATE_JSON = 16 << 20


def sniff(head: bytes, win: Window) -> str | None:
    if b"\x00" in head:
        return None
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a cut multi-byte character at the end is fine
            return None
        text = head[: exc.start].decode("utf-8")
    if any(ord(c) < 9 or 13 < ord(c) < 32 for c in text):
        return None
    return "json" if text.lstrip()[:1] in ("{", "[") else "text"


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    if len(win) > MAX_TEMPLATE_JSON or win.peek_at(0, 4096).lstrip()[:1] != b"{":
        return
    try:
        data = json.loads(win.peek_at(0, len(win)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return
    template = data.get("chat_template") if isinstance(data, dict) else None
    if template is None:
        return
    from trainguard.scan.templates import check_template

    templates = template if isinstance(template, list) else [template]
    for t in templates:
        body = t.get("template") if isinstance(t, dict) else t
        if isinstance(body, str):
            check_template(ctx, body, member, 0)
