"""GGUF (llama.cpp): no pickle, but a header that can lie and a chat template that renders.

Two attacks live here. C loaders size buffers from declared counts and lengths (the 2024
heap-overflow CVEs in ggml's GGUF reader came from kv counts, string and array lengths and
``n_dims``), so every declared size is checked against the bytes that remain before it is
trusted; a size no file of this length could hold is ``scan.malformed`` (high) and the
header is not read further. And ``tokenizer.chat_template`` is Jinja source that
llama-cpp-python once rendered without a sandbox (CVE-2024-34359): ``check_template``
judges it from its syntax tree, never by rendering it.
"""

from __future__ import annotations

import math
import re
import struct
from typing import TYPE_CHECKING, Any

from trainguard.errors import ScanError
from trainguard.findings import Rule, Severity

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

__all__ = ["FORMATS", "check_template", "scan", "sniff"]

FORMATS = ("gguf",)
MAGIC = b"GGUF"
MAX_DIMS = 8
MAX_NESTING = 8
TEMPLATE_KEY = "tokenizer.chat_template"
_CHUNK = 1 << 16
_STRING, _ARRAY = 8, 9
_SCALARS = dict(zip((0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12), "BbHhIif?Qqd", strict=True))
# ggml type -> (block size, bytes per block), as in gguf-py's GGML_QUANT_SIZES
_GGML = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 31: (32, 18),
    32: (32, 18), 33: (32, 18), 34: (256, 54), 35: (256, 66), 36: (32, 18), 37: (32, 18),
    38: (32, 18), 39: (32, 17),
}  # fmt: skip


class _Hostile(Exception):
    """A declared size that no honest file of this length carries; ends the header read."""

    def __init__(self, message: str, offset: int, evidence: dict[str, Any]) -> None:
        super().__init__(message)
        self.message, self.offset, self.evidence = message, offset, evidence


def sniff(head: bytes, win: Window) -> str | None:
    return "gguf" if head[:4] == MAGIC else None


class _Reader:
    """Buffered, bounds-checked reads; big strings are skipped by moving the position."""

    def __init__(
        self, ctx: FileScan, win: Window, order: str, wide: bool, member: str | None
    ) -> None:
        self.win, self.order, self.member = win, order, member
        self.cap, self.budget = ctx.limits.max_header, ctx.budget
        self.size = len(win)
        self.pos = 8
        self.count_fmt = "Q" if wide else "I"
        self.count_len = 8 if wide else 4
        self._buf = b""
        self._at = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > self.size:
            raise ScanError("GGUF header truncated", member=self.member, offset=self.pos)
        rel = self.pos - self._at
        if rel < 0 or end > self._at + len(self._buf):
            if n > _CHUNK:
                data = self.win.peek_at(self.pos, n)
                self.pos = end
                return data
            self._buf, self._at, rel = self.win.peek_at(self.pos, _CHUNK), self.pos, 0
        self.pos = end
        return self._buf[rel : rel + n]

    def unpack(self, fmt: str) -> Any:
        st = struct.Struct(self.order + fmt)
        return st.unpack(self.take(st.size))[0]

    def count(self) -> int:
        value: int = self.unpack(self.count_fmt)
        return value

    def need(self, count: int, unit: int, what: str) -> None:
        """Declared ``count`` items of at least ``unit`` bytes must fit in what is left."""
        need = count * unit
        if need > self.size or self.pos + need > self.cap:
            raise _Hostile(
                f"{what} declares {count} items (at least {need} bytes) in a {self.size}-byte "
                f"file: header built to exhaust memory",
                self.pos,
                {"declared": count, "min_bytes": need, "file_size": self.size},
            )
        if self.pos + need > self.size:
            msg = f"GGUF {what} runs past the end of the file (truncated)"
            raise ScanError(msg, member=self.member, offset=self.pos)

    def skip(self, n: int) -> None:
        if self.pos + n > self.size:
            raise ScanError("GGUF header truncated", member=self.member, offset=self.pos)
        self.pos += n

    def string(self, keep: bool) -> bytes | None:
        n = self.count()
        self.need(n, 1, "string")
        if keep:
            return self.take(n)
        self.skip(n)
        return None


def _skip_value(r: _Reader, vtype: int, nesting: int) -> None:
    if vtype in _SCALARS:
        r.take(struct.calcsize(_SCALARS[vtype]))
    elif vtype == _STRING:
        r.string(keep=False)
    elif vtype == _ARRAY:
        if nesting >= MAX_NESTING:
            raise _Hostile(f"arrays nested deeper than {MAX_NESTING}", r.pos, {})
        itype = r.unpack("I")
        n = r.count()
        if itype in _SCALARS:
            unit = struct.calcsize(_SCALARS[itype])
            r.need(n, unit, "array")
            r.skip(n * unit)
            return
        r.need(n, r.count_len if itype == _STRING else 4 + r.count_len, "array")
        for i in range(n):
            if not i & 0xFFFF:
                r.budget.check_time()
            _skip_value(r, itype, nesting + 1)
    else:
        raise ScanError(f"unknown GGUF value type {vtype}", member=r.member, offset=r.pos - 4)


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    head = win.peek_at(0, 8)
    if len(head) < 8:
        raise ScanError("GGUF header truncated", member=member, offset=0)
    (version,) = struct.unpack("<I", head[4:8])
    order = "<"
    if version not in (1, 2, 3) and struct.unpack(">I", head[4:8])[0] in (2, 3):
        order, version = ">", struct.unpack(">I", head[4:8])[0]
    if version not in (1, 2, 3):
        raise ScanError(f"unknown GGUF version {version}", member=member, offset=4)
    r = _Reader(ctx, win, order, version >= 2, member)
    try:
        _read(ctx, r, member)
    except _Hostile as exc:
        ctx.add(Rule.MALFORMED, Severity.HIGH, exc.message, member, exc.offset, exc.evidence)


def _read(ctx: FileScan, r: _Reader, member: str | None) -> None:
    n_tensors, n_kv = r.count(), r.count()
    r.need(n_tensors, r.count_len + 4 + 4 + 8, "tensor count")
    r.need(n_kv, r.count_len + 4 + 1, "key/value count")
    alignment, dups = 32, 0
    seen: set[str] = set()
    for _ in range(n_kv):
        ctx.budget.check_time()
        key = (r.string(keep=True) or b"").decode("utf-8", "replace")
        if key in seen and dups < 20:
            dups += 1
            msg = f"duplicate key {key[:120]!r}: loaders disagree on which value counts"
            ctx.add(Rule.CONTAINER_ANOMALY, Severity.MEDIUM, msg, member, r.pos, {"key": key[:200]})
        seen.add(key)
        vtype = r.unpack("I")
        at = r.pos
        if vtype == _STRING and (key == TEMPLATE_KEY or key.startswith(TEMPLATE_KEY + ".")):
            raw = r.string(keep=True) or b""
            check_template(ctx, raw.decode("utf-8", "replace"), member, at)
        elif key == "general.alignment" and vtype == 4:
            alignment = r.unpack("I")
            if alignment == 0 or alignment & (alignment - 1):
                msg = f"alignment {alignment} is not a power of two"
                ctx.add(Rule.MALFORMED, Severity.MEDIUM, msg, member, at, {"alignment": alignment})
                alignment = 32
        else:
            _skip_value(r, vtype, 0)
    # Two passes over the tensor infos: the data section starts after the last of them.
    start = r.pos
    for i in range(n_tensors):
        _tensor_info(r, i)
    data_size = r.size - -(-r.pos // alignment) * alignment
    r.pos = start
    _check_tensors(ctx, r, n_tensors, data_size, member)


def _tensor_info(r: _Reader, i: int) -> tuple[str, list[int], int, int]:
    if not i & 0xFFFF:
        r.budget.check_time()
    name = (r.string(keep=True) or b"").decode("utf-8", "replace")
    n_dims = r.unpack("I")
    if n_dims > MAX_DIMS:
        msg = f"tensor {name[:80]!r} declares {n_dims} dimensions (ggml allows {MAX_DIMS})"
        raise _Hostile(msg, r.pos - 4, {"tensor": name[:200], "n_dims": n_dims})
    dims = [r.count() for _ in range(n_dims)]
    return name, dims, r.unpack("I"), r.unpack("Q")


def _check_tensors(
    ctx: FileScan, r: _Reader, n_tensors: int, data_size: int, member: str | None
) -> None:
    """Sizes from shape and type must lie in the data section; absurd ones are hostile."""
    names: set[str] = set()
    truncated: int | None = None
    reported = 0
    for i in range(n_tensors):
        at = r.pos
        name, dims, gtype, offset = _tensor_info(r, i)
        ev = {"tensor": name[:200], "dims": dims, "type": gtype, "offset": offset}
        if name in names and reported < 20:
            reported += 1
            msg = f"duplicate tensor name {name[:80]!r}"
            ctx.add(Rule.CONTAINER_ANOMALY, Severity.MEDIUM, msg, member, at, ev)
        names.add(name)
        elements = math.prod(dims)
        block, per_block = _GGML.get(gtype, (1, 0))
        nbytes = -(-elements // block) * per_block
        problem = None
        if any(d >= 1 << 63 for d in dims) or elements >= 1 << 63:
            problem = f"tensor {name[:80]!r}: shape {dims} overflows a 64-bit element count"
        elif nbytes > r.size or offset > r.size:
            problem = (
                f"tensor {name[:80]!r}: {nbytes} bytes at offset {offset} cannot lie in a "
                f"{r.size}-byte file: a loader that trusts it reads out of bounds"
            )
        elif gtype not in _GGML:
            msg = f"tensor {name[:80]!r}: unknown ggml type {gtype}, size not checked"
            ctx.add(Rule.MALFORMED, Severity.LOW, msg, member, at, ev)
        elif offset + nbytes > data_size and truncated is None:
            truncated = at
        if problem and reported < 20:
            reported += 1
            ctx.add(Rule.MALFORMED, Severity.HIGH, problem, member, at, ev)
    if truncated is not None:
        msg = "tensor data runs past the end of the file (truncated?)"
        raise ScanError(msg, member=member, offset=truncated)


# -- chat templates ------------------------------------------------------------------------
# Attribute names that only an escape attempt reads (besides every dunder and name-mangled
# private such as ``self._TemplateReference__context``): frame, code and function internals,
# module handles and the functions that run commands.
_ESCAPE_NAMES = frozenset({
    "func_globals", "func_code", "gi_frame", "gi_code", "f_back", "f_globals", "f_locals",
    "f_builtins", "f_code", "tb_frame", "tb_next", "cr_frame", "cr_code", "ag_frame",
    "ag_code", "co_code", "mro", "os", "sys", "subprocess", "builtins", "popen", "system",
    "eval", "exec", "import_module", "spawn", "check_output", "format_map",
})  # fmt: skip
# Template globals whose internals lead to module globals (``cycler.__init__.__globals__``).
_GLOBALS = frozenset({
    "cycler", "joiner", "namespace", "lipsum", "range", "dict", "raise_exception", "strftime_now",
})  # fmt: skip
_STR_FILTERS = frozenset({"reverse", "join", "replace", "lower", "upper", "string", "trim"})
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
            msg = "jinja2 is not installed: chat template not judged (pip install jinja2)"
            ctx.fail(ScanError(msg, member=member, offset=offset), member)
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
        for a in tree.find_all(nodes.Assign):
            if isinstance(a.target, nodes.Name):
                self.sets.setdefault(a.target.name, []).append(a.node)
        stack, seen = [tree], 0
        while stack and seen < MAX_NODES:
            node = stack.pop()
            seen += 1
            self.visit(node)
            stack.extend(reversed(list(node.iter_child_nodes())))
        if stack:
            self.flag(Severity.MEDIUM, f"has over {MAX_NODES} nodes: not judged", tree, "")

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
        return isinstance(node, n.Concat) or (
            isinstance(node, n.Filter) and node.name in _STR_FILTERS
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
        elif isinstance(node, n.Getitem):
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
        if isinstance(node, n.Const | n.Concat | n.Add | n.Filter):
            # a string that is such a name, or a format string (``'{0.__class__}'``) naming
            # one; prose that merely mentions ``__init__`` is left alone
            value = self.fold(node) or ""
            hit = _BAD_TEXT.search(value)
            if hit and (hit.group() == value.strip() or "{" in value):
                self.flag(Severity.CRITICAL, f"spells {hit.group()!r}", node, hit.group())
