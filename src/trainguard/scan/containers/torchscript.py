"""TorchScript archives (``torch.jit.save``): pickles for the C++ unpickler, code for the compiler.

``torch.load`` hands a zip to ``torch.jit.load`` when ``constants.pkl`` is among its records
(``torch.serialization._is_torchscript_zip``; ``zipped.py`` decides it on torch's own view of
the directory). ``torch.jit.load`` never uses Python's unpickler: its C++ unpickler resolves a
closed set of globals (``torch._utils._rebuild_*``, ``torch.jit._pickle.build_*``,
``collections.OrderedDict``, ``__torch__.*`` classes compiled from the archive's ``code/``) and
refuses any other. So in that context, and only there, the ``torch.jit._pickle`` builders and
``__torch__`` classes are allowed; everything else keeps the normal policy.

What runs is the code: ``code/__torch__/**.py`` is compiled and executed as TorchScript. It is
judged as text: operators that write or read files (``torch.save`` is ``aten::save``,
``torch.from_file``, ``ops.debugprims.load_tensor``), custom classes and operators from native
libraries (``torch.classes``, ``ops.<namespace>`` outside PyTorch's own), and Python that the
compiler would never emit (``open``, ``os``, ``subprocess``, ``eval``) are findings.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from trainguard.errors import LimitExceeded
from trainguard.findings import Rule, Severity
from trainguard.scan.policy import Judgement, Policy, Status
from trainguard.scan.uses import Use

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

__all__ = ["FORMATS", "TS_BUILDERS", "is_code", "judge_code", "policy", "scan", "sniff"]

FORMATS: tuple[str, ...] = ()
"""None of its own: a TorchScript archive is a zip (``zipped.py`` calls in here)."""

TS_BUILDERS = frozenset(
    {
        "build_intlist",
        "build_tensorlist",
        "build_doublelist",
        "build_boollist",
        "build_complexlist",
        "build_tensor_from_id",
        "restore_type_tag",
    }
)
"""``torch.jit._pickle`` functions the C++ unpickler maps to list/tag builders."""

_OPS_NAMESPACES = frozenset(
    {
        "aten", "prim", "quantized", "_quantized", "quantized_decomposed", "_caffe2",
        "profiler", "mkldnn", "mkldnn_prepacked", "prepacked", "xnnpack", "onednn",
        "_c10d_functional", "c10d_functional", "_c10d_functional_autograd", "c10d",
        "fbgemm", "sparse", "rngprims", "higher_order", "_prims", "prims",
    }
)  # fmt: skip
_CRITICAL = (
    (re.compile(r"\btorch\.save\s*\(|\bops\.aten\.save\b"), "aten::save writes a file"),
    (re.compile(r"\btorch\.from_file\s*\(|\bops\.aten\.from_file\b"), "aten::from_file maps files"),
    (re.compile(r"\bops\.debugprims\.load_tensor\b"), "debugprims::load_tensor reads a file"),
    (re.compile(r"\bload_library\b"), "loads a native library"),
    (
        re.compile(r"(?<![\w.])(?:open|eval|exec|compile|__import__|getattr|system)\s*\("),
        "Python call the TorchScript printer never emits (file or code access)",
    ),
    (
        re.compile(r"(?<![\w.])(?:os|subprocess|sys|builtins|ctypes|shutil|socket|pty)\."),
        "Python module the TorchScript printer never emits (files, processes)",
    ),
)
_CLASSES = re.compile(r"\btorch\.classes\.[\w.]+")
_OPS = re.compile(r"(?<![\w.])(?:torch\.)?ops\.(\w+)\.(\w+)")
MAX_FINDINGS = 50


def sniff(head: bytes, win: Window) -> str | None:
    return None


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    """Never dispatched to (no formats): code members are judged through ``judge_code``."""
    judge_code(ctx, win, member or "")


def is_code(rel: str) -> bool:
    """A record the TorchScript importer compiles: ``code/**.py`` under the archive folder."""
    return rel.startswith("code/") and rel.endswith(".py")


def judge_code(ctx: FileScan, win: Window, label: str) -> None:
    """Judge one TorchScript source member as text."""
    ctx.members.append(label)
    cap = ctx.limits.max_header
    if len(win) > cap:
        raise LimitExceeded(f"TorchScript code member over {cap} bytes", member=label)
    text = win.peek_at(0, len(win)).decode("utf-8", "replace")
    found = 0
    for lineno, line in enumerate(text.splitlines(), 1):
        for sev, why, match in _judge_line(line):
            ctx.add(
                Rule.CODE_EXECUTION,
                sev,
                f"TorchScript code calls {match[:80]!r}: {why}",
                label,
                None,
                {"line": lineno, "code": line.strip()[:300], "match": match[:200]},
            )
            found += 1
            if found >= MAX_FINDINGS:
                return


def _judge_line(line: str) -> Iterator[tuple[Severity, str, str]]:
    for pattern, why in _CRITICAL:
        for m in pattern.finditer(line):
            yield Severity.CRITICAL, why, m.group()
    for m in _CLASSES.finditer(line):
        yield Severity.HIGH, "custom class from a native library the loader must have", m.group()
    for m in _OPS.finditer(line):
        if m.group(1) not in _OPS_NAMESPACES:
            why = f"operator from the non-PyTorch namespace {m.group(1)!r}"
            yield Severity.HIGH, why, m.group()


class _TorchScriptPolicy(Policy):
    """The file's policy, plus what TorchScript's C++ unpickler resolves without Python."""

    def __init__(self, base: Policy) -> None:  # no super().__init__: everything delegates
        self._base = base

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def judge(self, module: str, name: str, use: Use, file_sha256: str | None = None) -> Judgement:
        if module == "torch.jit._pickle" and name in TS_BUILDERS:
            return Judgement(Status.SAFE, "TorchScript list builder (C++ unpickler)")
        if module == "__torch__" or module.startswith("__torch__."):
            return Judgement(Status.SAFE, "TorchScript class compiled from the archive's code/")
        return self._base.judge(module, name, use, file_sha256)


@contextlib.contextmanager
def policy(ctx: FileScan) -> Iterator[None]:
    """Judge the pickles of a TorchScript archive with the TorchScript allowances."""
    base = ctx.policy
    ctx.policy = _TorchScriptPolicy(base)
    try:
        yield
    finally:
        ctx.policy = base
