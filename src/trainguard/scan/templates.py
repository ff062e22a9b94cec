"""Chat templates (Jinja source shipped inside GGUF files and ``tokenizer_config.json``):
judged from their syntax tree, never rendered.

llama-cpp-python once rendered GGUF chat templates without a sandbox (CVE-2024-34359), so
a template that reaches for Python internals (``__class__``, ``__globals__``, frame and
function attributes, ``cycler.__init__``) is treated as code execution.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from trainguard.findings import Rule, Severity
from trainguard.scan.optional import missing_extra

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan

__all__ = ["check_template"]

# -- chat templates ------------------------------------------------------------------------
# Attribute names that only an escape attempt reads (besides every dunder and name-mangled
# private such as ``self._TemplateReference__context``): frame, code and function internals,
# module handles and the functions that run commands.
_ESCAPE_NAMES = frozenset({
    "func_globals", "func_code", "gi_frame", "gi_code", "f_back", "f_globals", "f_locals",
    "f_builtins", "f_code", "tb_frame", "tb_next", "cr_frame", "cr_code", "ag_frame",
    "ag_code", "co_code", "mro", "os", "sys", "subprocess", "builtins", "popen", "system",
    "eval", "exec", "import_module", "spawn", "check_output", "format_map", "_module",
})  # fmt: skip
# Template globals whose internals lead to module globals (``cycler.__init__.__globals__``).
_GLOBALS = frozenset({
    "cycler", "joiner", "namespace", "lipsum", "range", "dict", "raise_exception", "strftime_now",
})  # fmt: skip
# Web-framework globals (Flask's ``request``, ``config``...): absent from every chat-template
# renderer, so only a server-side template injection payload copied from the web reaches for them.
_WEB_GLOBALS = frozenset({
    "request", "config", "url_for", "get_flashed_messages", "current_app", "session",
})  # fmt: skip
_STR_FILTERS = frozenset({"reverse", "join", "replace", "lower", "upper", "string", "trim"})
# Filters that build text at render time (``'%c%c'|format(95, 95)`` spells ``__``).
_BUILD_FILTERS = _STR_FILTERS | {"format", "first", "last", "batch", "slice", "list"}
_STR_METHODS = frozenset({"join", "replace", "format", "lower", "upper", "strip"})
# Names that no honest chat template uses as a name or in a format field.
_BAD_TEXT = re.compile(
    r"__(?:class|mro|subclasses|globals|builtins|init|import|getattribute|base|bases|dict|code"
    r"|func|self|reduce|reduce_ex|loader|spec|getitem|call|module|closure|defaults|new|getattr"
    r"|setattr|file)__|_TemplateReference__context|func_globals|gi_frame|f_back|f_globals"
    r"|f_locals|tb_frame|cr_frame|ag_frame|co_code|import_module|popen"
)
_MANGLED = re.compile(r"_[A-Za-z0-9]+__\w")
MAX_TEMPLATE = 4 << 20
MAX_NODES = 200_000

Problem = tuple[Severity, str, int, str]
"""(severity, why, line, token)"""


def _bad_name(name: str) -> bool:
    dunder = name.startswith("__") and name.endswith("__") and len(name) > 4
    return dunder or _MANGLED.match(name) is not None or name in _ESCAPE_NAMES


def check_template(ctx: FileScan, body: str, member: str | None, offset: int) -> None:
    """Judge a Jinja2 chat template from its syntax tree; parsing runs none of it.

    A renderer without a sandbox runs whatever the template reaches through attributes, so a
    walk to dunders, frames, module handles, a template global's internals, an attribute
    name computed at render time, or another template (import/include/extends) is flagged.
    """
    try:
        found = _template_problems(body)
    except ImportError:  # jinja2 is optional: only names spelled out in full can be seen
        hits = [m.group() for m in _BAD_TEXT.finditer(body)]
        found = [(Severity.CRITICAL, "names an escape route", 1, h) for h in hits]
        if not found:
            missing_extra(ctx, "jinja2", member, "chat template")
    if found is None:
        msg = "chat template cannot be parsed (or is too large), so it was not judged"
        ev = {"length": len(body), "head": body[:200]}
        ctx.add(Rule.TEMPLATE_INJECTION, Severity.MEDIUM, msg, member, offset, ev)
        return
    lines = body.splitlines() or [""]
    for sev, why, lineno, token in found[:10]:
        line = lines[min(max(lineno, 1), len(lines)) - 1]
        at = max(line.find(token), 0) if token else 0
        ev = {"expression": line[max(at - 80, 0) : at + 120].strip(), "line": lineno}
        ev["access"] = token[:200]
        ctx.add(Rule.TEMPLATE_INJECTION, sev, f"chat template {why}", member, offset, ev)


def _template_problems(body: str) -> list[Problem] | None:
    """Problems found, or None when the source cannot be judged (ImportError: no jinja2)."""
    from jinja2 import TemplateSyntaxError

    if len(body) > MAX_TEMPLATE:
        return None
    try:
        return _Judge(_environment().parse(body)).problems
    except (TemplateSyntaxError, RecursionError, ValueError, MemoryError):
        return None


def _environment() -> Any:
    """A parse-only environment with the extensions transformers' renderer enables."""
    from jinja2 import Environment, nodes
    from jinja2.ext import Extension

    class Generation(Extension):
        """transformers' ``{% generation %}...{% endgeneration %}`` marker."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return Environment(extensions=["jinja2.ext.loopcontrols", "jinja2.ext.do", Generation])


class _Judge:
    """One walk over the tree. ``{% set %}`` values are remembered so that names built from
    pieces (``'__cla' ~ 'ss__'``, ``'__ssalc__'|reverse``) are folded before being judged."""

    def __init__(self, tree: Any) -> None:
        from jinja2 import nodes

        self.n = nodes
        self.problems: list[Problem] = []
        self.sets: dict[str, list[Any]] = {}
        self.names_computed: dict[str, bool] = {}
        self.bound = {x.name for x in tree.find_all(nodes.Name) if x.ctx != "load"}
        self._bindings(tree)
        stack, seen = [tree], 0
        while stack and seen < MAX_NODES:
            node = stack.pop()
            seen += 1
            self.visit(node)
            stack.extend(reversed(list(node.iter_child_nodes())))
        if stack:
            self.flag(Severity.MEDIUM, f"has over {MAX_NODES} nodes: not judged", tree, "")

    def _bindings(self, tree: Any) -> None:
        """Values that names are given: ``{% set %}`` (also as a block), ``{% with %}`` and
        ``{% for %}`` over a literal list; a name set by a block that renders anything but
        plain text counts as computed."""
        n = self.n
        for a in tree.find_all(n.Assign):
            if isinstance(a.target, n.Name):
                self.sets.setdefault(a.target.name, []).append(a.node)
        for w in tree.find_all(n.With):
            for target, value in zip(w.targets, w.values, strict=False):
                if isinstance(target, n.Name):
                    self.sets.setdefault(target.name, []).append(value)
        for f in tree.find_all(n.For):
            if isinstance(f.target, n.Name) and isinstance(f.iter, n.List | n.Tuple):
                self.sets.setdefault(f.target.name, []).extend(f.iter.items)
        for b in tree.find_all(n.AssignBlock):
            if not isinstance(b.target, n.Name):
                continue
            parts = [x for out in b.body if isinstance(out, n.Output) for x in out.nodes]
            plain = b.filter is None and len(parts) == len(b.body) == 1
            if plain and isinstance(parts[0], n.TemplateData):
                self.sets.setdefault(b.target.name, []).append(n.Const(parts[0].data))
            else:
                self.names_computed[b.target.name] = True

    def flag(self, sev: Severity, why: str, node: Any, token: str) -> None:
        if len(self.problems) < 50 and all(p[3] != token or not token for p in self.problems):
            self.problems.append((sev, why, getattr(node, "lineno", 1) or 1, token))

    def fold(self, node: Any, depth: int = 0) -> str | None:
        """The string an expression always evaluates to, when it is built from constants."""
        n = self.n
        if depth > 20:
            return None
        if isinstance(node, n.Const):
            return node.value[:4096] if isinstance(node.value, str) else None
        if isinstance(node, n.Name):
            vals = self.sets.get(node.name, [])
            return self.fold(vals[0], depth + 1) if len(vals) == 1 else None
        if isinstance(node, n.Concat | n.Add):
            items = node.nodes if isinstance(node, n.Concat) else [node.left, node.right]
            return self._join("", items, depth)
        if isinstance(node, n.Getitem) and isinstance(node.arg, n.Slice):
            return self._slice(node, depth)
        if not (isinstance(node, n.Filter) and node.node is not None):
            return None
        if node.name == "join" and isinstance(node.node, n.List | n.Tuple):
            sep = self.fold(node.args[0], depth + 1) if node.args else ""
            return None if sep is None else self._join(sep, node.node.items, depth)
        base = self.fold(node.node, depth + 1)
        if base is None or node.name not in _STR_FILTERS:
            return None
        if node.name == "replace" and len(node.args) == 2:
            old, new = (self.fold(a, depth + 1) for a in node.args)
            if not old or new is None or base.count(old) * len(new) > 1 << 16:
                return None
            return base.replace(old, new)[:4096]
        simple = {"reverse": base[::-1], "lower": base.lower(), "upper": base.upper()}
        return simple.get(node.name, base.strip() if node.name == "trim" else base)

    def _slice(self, node: Any, depth: int) -> str | None:
        base = self.fold(node.node, depth + 1)
        bounds = [node.arg.start, node.arg.stop, node.arg.step]
        if base is None or not all(b is None or isinstance(b, self.n.Const) for b in bounds):
            return None
        values = [None if b is None else b.value for b in bounds]
        if not all(v is None or isinstance(v, int) for v in values) or values[2] == 0:
            return None
        return base[slice(*values)]

    def _join(self, sep: str, items: list[Any], depth: int) -> str | None:
        parts = [self.fold(x, depth + 1) for x in items]
        if any(p is None for p in parts):
            return None
        return sep.join(p for p in parts if p is not None)[:4096]

    def computed(self, node: Any) -> bool:
        """Whether an expression builds a string at render time (how names are hidden)."""
        n = self.n
        if isinstance(node, n.Add | n.Mod):
            sides = (node.left, node.right)
            return any(isinstance(x, n.Const) and isinstance(x.value, str) for x in sides)
        if isinstance(node, n.Name):  # once per name: assignments may refer to each other
            if node.name not in self.names_computed:
                self.names_computed[node.name] = False
                vals = self.sets.get(node.name, [])
                self.names_computed[node.name] = any(self.computed(v) for v in vals)
            return self.names_computed[node.name]
        if isinstance(node, n.Call) and isinstance(node.node, n.Getattr):
            return node.node.attr in _STR_METHODS
        if isinstance(node, n.Getitem) and isinstance(node.arg, n.Slice):
            return self.fold(node.node) is not None or self.computed(node.node)
        return isinstance(node, n.Concat) or (
            isinstance(node, n.Filter) and node.name in _BUILD_FILTERS
        )

    def name_arg(self, node: Any, arg: Any, via: str, strict: bool) -> None:
        """An attribute or item name given as an expression (``|attr(x)``, ``obj[x]``)."""
        value = self.fold(arg)
        if value is None:
            if strict or self.computed(arg):
                self.flag(Severity.HIGH, f"computes the name for {via} at render time", node, via)
        elif any(map(_bad_name, value.split("."))) if strict else _BAD_TEXT.search(value):
            self.flag(Severity.CRITICAL, f"reaches {value[:60]!r} through {via}", node, value)

    def attribute_args(self, node: Any) -> None:
        """Filters that read attributes by name: ``attr``, ``map(attribute=...)``, ..."""
        args, via = list(node.args), f"|{node.name}"
        if node.name in ("attr", "selectattr", "rejectattr", "groupby") and args:
            self.name_arg(node, args[0], via, strict=True)
        elif node.name in ("map", "select", "reject") and args and self.fold(args[0]) == "attr":
            self.name_arg(node, args[-1], f"{via}('attr')", strict=True)
        for kw in node.kwargs:
            if kw.key == "attribute":
                self.name_arg(node, kw.value, f"{via}(attribute=)", strict=True)

    def visit(self, node: Any) -> None:
        n = self.n
        if isinstance(node, n.Getattr):
            owner = node.node.name if isinstance(node.node, n.Name) else None
            if _bad_name(node.attr):
                self.flag(Severity.CRITICAL, f"reads attribute {node.attr!r}", node, node.attr)
            elif owner in _GLOBALS or (owner == "self" and node.attr.startswith("_")):
                why = f"reads {owner}.{node.attr}, a template global's internals"
                self.flag(Severity.CRITICAL, why, node, node.attr)
            else:
                self.web_global(node, owner, node.attr)
        elif isinstance(node, n.Getitem):
            owner = node.node.name if isinstance(node.node, n.Name) else None
            self.web_global(node, owner, self.fold(node.arg) or "[...]")
            self.name_arg(node, node.arg, "a subscript", strict=False)
        elif isinstance(node, n.Filter | n.Test):
            self.attribute_args(node)
        elif isinstance(node, n.Import | n.FromImport | n.Include | n.Extends):
            what = type(node).__name__.lower()
            self.flag(Severity.CRITICAL, f"loads another template ({what})", node, what)
        elif isinstance(node, n.Name | n.NSRef | n.Keyword):
            name = getattr(node, {n.Name: "name", n.NSRef: "attr", n.Keyword: "key"}[type(node)])
            if name.startswith("_") and _bad_name(name):
                self.flag(Severity.CRITICAL, f"uses the name {name!r}", node, name)
        elif (
            isinstance(node, n.Call)
            and isinstance(node.node, n.Getattr)
            and node.node.attr == "format"
            and self.fold(node.node.node) is None
        ):
            why = "formats text not written in the template (str.format reads attributes)"
            self.flag(Severity.HIGH, why, node, "format")
        if self.char_codes(node):
            why = "builds text from character codes ('%c'), as payloads hide names"
            self.flag(Severity.HIGH, why, node, "%c")
        if isinstance(node, n.Const | n.Concat | n.Add | n.Filter):
            # a string that is such a name, or a format string (``'{0.__class__}'``) naming
            # one; prose that merely mentions ``__init__`` is left alone
            value = self.fold(node) or ""
            hit = _BAD_TEXT.search(value)
            if hit and (hit.group() == value.strip() or "{" in value):
                self.flag(Severity.CRITICAL, f"spells {hit.group()!r}", node, hit.group())

    def web_global(self, node: Any, owner: str | None, what: str) -> None:
        if owner in _WEB_GLOBALS and owner not in self.bound:
            why = f"reads {owner}.{what[:40]}: a web framework's global, absent from chat renderers"
            self.flag(Severity.HIGH, why, node, owner)

    def char_codes(self, node: Any) -> bool:
        """``'%c' % 95`` or ``'%c'|format(95)``: characters from numbers, never needed to
        lay out a chat."""
        n = self.n
        if isinstance(node, n.Mod):
            fmt = self.fold(node.left)
        elif isinstance(node, n.Filter) and node.name == "format" and node.node is not None:
            fmt = self.fold(node.node)
        else:
            return False
        return fmt is not None and re.search(r"%[-#0 +]*\d*(?:\.\d+)?c", fmt) is not None
