"""Code that runs at start-up or at ``import torch`` without anyone importing it by name.

Routes: executable ``.pth`` lines, ``sitecustomize``/``usercustomize`` anywhere on the
path, entry points in groups that a library loads by itself (``torch.backends`` is loaded
by ``import torch``), and modules whose name is a standard-library name. None of them is
visible to a RECORD check when it comes with its own (fake) dist-info.
"""

from __future__ import annotations

import importlib.machinery
import os
import re
import sys
from typing import Any

from . import emit
from .layout import pth_lines
from .records import Dist

# Entry-point groups whose members are imported without the user asking for them.
AUTOLOAD_GROUPS = {
    "torch.backends": "torch imports every entry point of this group during `import torch`",
}

# Executable .pth lines shipped by setuptools, accepted by exact content only.
DISTUTILS_PTH = "distutils-precedence.pth"
DISTUTILS_LINES = frozenset(
    "import os; var = 'SETUPTOOLS_USE_DISTUTILS'; enabled = os.environ.get(var, "
    f"'{default}') == 'local'; enabled and __import__('_distutils_hack').add_shim();"
    for default in ("local", "stdlib")
)
EDITABLE_PTH = re.compile(r"__editable__\.[^/\\]+\.pth")
EDITABLE_LINE = re.compile(r"import (__editable___[A-Za-z0-9_]+_finder); \1\.install\(\)")

CUSTOMIZE = ("sitecustomize", "usercustomize")
_MODULE_SUFFIXES = sorted(
    set(importlib.machinery.SOURCE_SUFFIXES)
    | set(importlib.machinery.BYTECODE_SUFFIXES)
    | set(importlib.machinery.EXTENSION_SUFFIXES),
    key=len,
    reverse=True,
)


def module_name(entry: str, is_dir: bool) -> str | None:
    """The top-level module an entry of a path directory provides, if any."""
    if is_dir:
        return entry if entry.isidentifier() else None
    for suffix in _MODULE_SUFFIXES:
        if entry.endswith(suffix):
            stem = entry[: -len(suffix)]
            return stem if stem.isidentifier() else None
    return None


def allowed_exec_line(pth: str, line: str, owner: Dist | None, owned: dict[str, Dist]) -> bool:
    """A known-legitimate executable line: setuptools' shim by exact content, or an
    editable-install finder whose module belongs, with the ``.pth``, to one editable
    distribution's RECORD (which the RECORD check then verifies byte for byte)."""
    text = line.rstrip()
    name = os.path.basename(pth)
    if name == DISTUTILS_PTH and text in DISTUTILS_LINES:
        return True
    m = EDITABLE_LINE.fullmatch(text)
    if m is None or not EDITABLE_PTH.fullmatch(name) or owner is None:
        return False
    finder = os.path.join(os.path.dirname(pth), m.group(1) + ".py")
    return owner.editable and owned.get(finder) is owner


def check_pth(pth_files: list[str], owned: dict[str, Dist]) -> tuple[list[dict[str, Any]], int]:
    out: list[dict[str, Any]] = []
    for pth in pth_files:
        try:
            with open(pth, "rb") as f:
                lines = pth_lines(f.read())
        except OSError as exc:
            out.append(emit.finding(emit.ERROR, emit.HIGH, f"cannot read: {exc}", pth))
            continue
        owner = owned.get(pth)
        for line in lines:
            if not line.executes or allowed_exec_line(pth, line.text, owner, owned):
                continue
            out.append(
                emit.finding(
                    emit.STARTUP_HOOK,
                    emit.CRITICAL,
                    "a .pth line that Python executes at every start-up",
                    pth,
                    member=f"line {line.number}",
                    line=line.text[:500],
                    distribution=owner.label if owner else None,
                )
            )
    return out, len(pth_files)


def check_path_dirs(stdlib_dirs: list[str], dirs: list[tuple[str, bool]]) -> list[dict[str, Any]]:
    """``sitecustomize``/``usercustomize`` in any path directory, and stdlib shadowing.

    ``dirs`` pairs each directory with whether it comes before the standard library on
    ``sys.path`` (PYTHONPATH does; site and ``.pth`` directories do not).
    """
    out: list[dict[str, Any]] = []
    stdlib_has = _stdlib_modules(stdlib_dirs)
    names = getattr(sys, "stdlib_module_names", frozenset(stdlib_has))
    for directory, early in [(d, False) for d in stdlib_dirs] + dirs:
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            mod = module_name(entry.name, is_dir)
            if mod is None:
                continue
            if mod in CUSTOMIZE:
                out.append(
                    emit.finding(
                        emit.STARTUP_HOOK,
                        emit.CRITICAL,
                        f"{mod} is imported by the site module at every start-up",
                        entry.path,
                        module=mod,
                    )
                )
            elif mod in names and directory not in stdlib_dirs:
                effective = early or mod not in stdlib_has
                out.append(
                    emit.finding(
                        emit.STARTUP_HOOK,
                        emit.HIGH if effective else emit.MEDIUM,
                        f"module named like the standard library's {mod!r}"
                        + (
                            ": `import " + mod + "` loads it"
                            if effective
                            else " (found after the standard library on the path today)"
                        ),
                        entry.path,
                        module=mod,
                        before_stdlib=early,
                    )
                )
    return out


def _stdlib_modules(stdlib_dirs: list[str]) -> set[str]:
    have = set(sys.builtin_module_names)
    for d in stdlib_dirs:
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for entry in entries:
            try:
                mod = module_name(entry.name, entry.is_dir())
            except OSError:
                continue
            if mod:
                have.add(mod)
    return have


def check_entry_points(meta_dirs: list[tuple[str, Dist | None]]) -> list[dict[str, Any]]:
    """Entry points in auto-loaded groups, from every dist-info and egg-info that
    ``importlib.metadata`` would find (any path directory, RECORD or not)."""
    out: list[dict[str, Any]] = []
    for meta, owner in meta_dirs:
        path = os.path.join(meta, "entry_points.txt")
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8", "replace")
        except OSError:
            continue
        group = None
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("[") and line.endswith("]"):
                group = line[1:-1].strip()
                continue
            name, sep, target = line.partition("=")
            if not sep or group not in AUTOLOAD_GROUPS:
                continue
            label = owner.label if owner else os.path.basename(meta)
            out.append(
                emit.finding(
                    emit.STARTUP_HOOK,
                    emit.HIGH,
                    f"{label} registers {target.strip()!r} in the auto-loaded entry-point "
                    f"group {group!r} ({AUTOLOAD_GROUPS[group]})",
                    path,
                    member=f"[{group}] {name.strip()}",
                    distribution=label,
                    group=group,
                    name=name.strip(),
                    target=target.strip(),
                    has_record=bool(owner and owner.record),
                )
            )
    return out


def metadata_dirs(dirs: list[str]) -> list[str]:
    out: list[str] = []
    for d in dirs:
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        out += [
            os.path.join(d, n)
            for n in names
            if n.endswith((".dist-info", ".egg-info")) and os.path.isdir(os.path.join(d, n))
        ]
    return out
