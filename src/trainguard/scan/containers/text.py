"""Text, JSON and YAML files (configs, tokenizers, READMEs): data that no model loader executes,
except the Jinja chat templates they may carry, which a chat renderer runs.

Templates are judged wherever a renderer picks them up: the ``chat_template`` key of
``tokenizer_config.json``/``chat_template.json`` (and the other keys in ``TEMPLATE_KEYS``),
the same keys in YAML configs, and standalone template files such as the
``chat_template.jinja`` that recent transformers save next to the tokenizer. A standalone
template is recognised by its name (``.jinja``, ``.jinja2``, ``.j2``): the bytes are plain
text, and the name is how transformers decides to render them.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from trainguard.findings import Rule, Severity
from trainguard.scan.optional import missing_extra

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

FORMATS = ("json", "text")
MAX_TEMPLATE_JSON = 16 << 20
MAX_YAML = 4 << 20
"""YAML configs above this are not parsed (their chat template is reported as not judged)."""
TEMPLATE_SUFFIXES = (".jinja", ".jinja2", ".j2")
YAML_SUFFIXES = (".yaml", ".yml")
TEMPLATE_KEYS = ("chat_template", "custom_chat_template", "jinja_template", "chat_template_jinja")
_COMPRESSED = (".gz", ".bz2", ".xz", ".lz4", ".lzma", ".zst")
_YAML_KEY = re.compile(
    rb"^[ \t-]*[\"']?(?:custom_|jinja_)?chat_template(?:_jinja)?[\"']?[ \t]*:", re.M
)


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
    from trainguard.scan.templates import MAX_TEMPLATE, check_template

    name = _name(ctx, member)
    if name.endswith(TEMPLATE_SUFFIXES):
        body = win.peek_at(0, min(len(win), MAX_TEMPLATE + 1)).decode("utf-8", "replace")
        check_template(ctx, body, member, 0)
        return
    if win.peek_at(0, 4096).lstrip()[:1] == b"{":
        if len(win) <= MAX_TEMPLATE_JSON:
            _json(ctx, win, member)
        return
    is_yaml = name.endswith(YAML_SUFFIXES)
    data = win.peek_at(0, min(len(win), MAX_YAML + 1))
    if b"chat_template" not in data or not (is_yaml or _YAML_KEY.search(data)):
        return
    if len(win) > MAX_YAML:
        _not_judged(ctx, member, f"YAML over {MAX_YAML} bytes names a chat template")
        return
    _yaml(ctx, data, member, is_yaml)


def _name(ctx: FileScan, member: str | None) -> str:
    """The file name a loader would see: the member's, else the top-level file's."""
    last = (member or "").replace("!", "/").rstrip("/")
    name = PurePosixPath(last).name if last and not last.endswith(">") else ctx.path.name
    name = name.lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    return name


def _json(ctx: FileScan, win: Window, member: str | None) -> None:
    try:
        data = json.loads(win.peek_at(0, len(win)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return
    _check_all(ctx, data, member)


def _yaml(ctx: FileScan, data: bytes, member: str | None, is_yaml: bool) -> None:
    try:
        yaml: Any = importlib.import_module("yaml")  # PyYAML ships no type hints
    except ImportError:
        missing_extra(ctx, "PyYAML", member, "YAML config with a chat template")
        return
    loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # never constructs objects
    try:
        doc = yaml.load(data.decode("utf-8", "replace"), Loader=loader)
    except (yaml.YAMLError, RecursionError, ValueError, TypeError):
        if is_yaml:
            _not_judged(ctx, member, "YAML that names a chat template cannot be parsed")
        return
    _check_all(ctx, doc, member)


def _check_all(ctx: FileScan, data: object, member: str | None) -> None:
    from trainguard.scan.templates import check_template

    for body in _templates_in(data):
        check_template(ctx, body, member, 0)


def _templates_in(data: object) -> list[str]:
    """Template sources under ``TEMPLATE_KEYS``: a string, a list of ``{"name", "template"}``
    (transformers' form for several templates), or a mapping of names to templates."""
    if not isinstance(data, dict):
        return []
    found: list[str] = []
    for key in TEMPLATE_KEYS:
        value = data.get(key)
        items = value if isinstance(value, list) else [value]
        if isinstance(value, dict):
            items = list(value.values())
        for item in items:
            body = item.get("template") if isinstance(item, dict) else item
            if isinstance(body, str):
                found.append(body)
    return found


def _not_judged(ctx: FileScan, member: str | None, why: str) -> None:
    msg = f"{why}: the template was not judged"
    ctx.add(Rule.TEMPLATE_INJECTION, Severity.MEDIUM, msg, member, 0, {})
