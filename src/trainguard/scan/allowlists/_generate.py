"""Regenerate the class table (``_classes_*.py``) from the libraries installed here.

    python -m trainguard.scan.allowlists._generate            # merge into the shipped table
    python -m trainguard.scan.allowlists._generate --fresh    # only what is installed now

This imports every module under each root of ``_classes.ROOTS`` (skipping tests and modules
on the dangerous list), so run it where those libraries are trusted; the scanner itself never
imports anything. Merging keeps names from earlier releases (pickles written by them still
name them) but drops any that the dangerous rules flag today. Review the diff like code.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.metadata
import json
import os
import pkgutil
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from trainguard.scan.allowlists import _classes
from trainguard.scan.policy import danger

__all__ = ["main"]

_SKIP_PARTS = {
    "tests", "testing", "_testing", "conftest", "benchmarks", "__main__", "externals",
    "_build_utils", "_vendor", "_vendored",
}  # fmt: skip
"""Test suites, and third-party code vendored inside a package (not what it defines)."""
_WIDTH = 96
_HERE = Path(__file__).parent


def _under(module: str, prefixes: Any) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _modules(root: str) -> Iterator[ModuleType]:
    top = importlib.import_module(root)
    yield top
    for info in pkgutil.walk_packages(getattr(top, "__path__", []), root + ".", lambda _: None):
        name = info.name
        if _SKIP_PARTS & set(name.split(".")):
            continue
        try:
            yield importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - optional dependencies; the module is skipped
            print(f"skipped {name}: {type(exc).__name__}: {exc}", file=sys.stderr)


def _file_index() -> dict[str, str]:
    """Source path without its suffixes -> module name, for every module imported so far."""
    files = {}
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if isinstance(path, str):
            files[_stem(path)] = mod.__name__
    return files


def _stem(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, tail.split(".", 1)[0])


def _file_module(cls: type, files: dict[str, str]) -> str | None:
    """The module a class's own methods were compiled in (``__module__`` may be rewritten)."""
    for value in vars(cls).values():
        fn = getattr(value, "__func__", value)
        fn = fn.fget if isinstance(fn, property) else fn
        code = getattr(fn, "__code__", None)
        qualname = getattr(fn, "__qualname__", "")
        if code is None or not qualname.startswith(cls.__qualname__ + "."):
            continue
        if code.co_name != getattr(fn, "__name__", None):
            continue  # a decorator's wrapper (functools.wraps copies names, not code)
        stem = _stem(code.co_filename)
        if os.path.isabs(stem):
            if stem in files:
                return files[stem]
        elif not stem.startswith("<"):
            return stem.replace("/", ".").replace("\\", ".")
    return None


def _has_finaliser(cls: type) -> bool:
    return any("__del__" in vars(k) for k in cls.__mro__ if k is not object)


def _declared(mod: ModuleType) -> set[str]:
    """Names of the classes a module's source declares at top level (``class X:``)."""
    path = getattr(mod, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return set()
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return set()
    return {node.name for node in tree.body if isinstance(node, ast.ClassDef)}


def _bindings(mod: ModuleType) -> Iterator[tuple[str, Any, bool]]:
    """(name, object, lazy) for a module's namespace, plus the names a deprecation shim
    hands out through a module ``__getattr__`` (``scipy.sparse.csr.csr_matrix``)."""
    for name, obj in list(vars(mod).items()):
        yield name, obj, False
    if "__getattr__" in vars(mod):
        for name in getattr(mod, "__all__", ()):
            if isinstance(name, str) and name not in vars(mod):
                try:
                    yield name, getattr(mod, name), True
                except Exception:  # noqa: BLE001 - a shim that refuses: nothing to list
                    continue


def scan_root(root: str) -> dict[str, set[str]]:
    """module -> class names, for one root, from what is installed.

    A class is listed where it lives: its ``__module__``, the module whose source declares
    it, the module its methods were compiled in; and where a compatibility shim hands it out
    (a root whose homes lie outside it, a module ``__getattr__``). Not where other modules
    merely import it.
    """
    homes = _classes.ROOTS[root]
    found: dict[str, set[str]] = {}
    modules = list(_modules(root))
    files = _file_index()
    declared_in: dict[int, set[str]] = {}
    for mod in modules:
        for name in _declared(mod):
            obj = vars(mod).get(name)
            if isinstance(obj, type) and obj.__qualname__ == name:
                declared_in.setdefault(id(obj), set()).add(mod.__name__)
    for mod in modules:
        for name, obj, lazy in _bindings(mod):
            if not isinstance(obj, type) or name.startswith("__"):
                continue
            home = getattr(obj, "__module__", None)
            if not isinstance(home, str) or not _under(home, homes):
                continue
            code_homes = declared_in.get(id(obj), set())
            method_home = _file_module(obj, files)
            if method_home is not None:
                code_homes = code_homes | {method_home}
            if not all(_under(h, homes) for h in code_homes):
                continue
            places = {(mod.__name__, name), (home, obj.__qualname__)}
            places |= {(h, obj.__qualname__) for h in code_homes}
            if any(danger(m, n) for m, n in places) or _has_finaliser(obj):
                continue
            shim = lazy or not _under(home, (root,))
            if shim or mod.__name__ == home or mod.__name__ in code_homes:
                found.setdefault(mod.__name__, set()).add(name)
    return found


def render(roots: list[str], table: dict[str, set[str]], sources: list[str]) -> str:
    """The data module's source, already as ``ruff format`` writes it."""
    lines: list[str] = []
    for module in sorted(table):
        line = module
        for name in sorted(table[module]):
            if len(line) + 1 + len(name) > _WIDTH and line != module:
                lines.append(line)
                line = module
            line += " " + name
        lines.append(line)
    quoted = [json.dumps(s) for s in sources]
    versions = f"({quoted[0]},)" if len(quoted) == 1 else f"({', '.join(quoted)})"
    about = textwrap.fill(
        f"Classes defined under {', '.join(roots)}: per line, a module and class names (a long "
        "module continues on a line that repeats it). See ``_classes``.",
        _WIDTH,
    )
    body = "\n".join(lines)
    return (
        '"""Generated by ``python -m trainguard.scan.allowlists._generate``: do not edit.\n\n'
        f'{about}\n"""\n\n'
        "from __future__ import annotations\n\n"
        f"SOURCES: tuple[str, ...] = {versions}\n"
        '"""The releases this table was generated from."""\n\n'
        f'TABLE = """\n{body}\n"""\n'
    )


def _version(root: str) -> str:
    top = root.split(".")[0]
    dist = {"sklearn": "scikit-learn"}.get(top, top)
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return f"{dist} ?"


def _existing(data_module: str) -> tuple[dict[str, set[str]], list[str]]:
    try:
        mod = importlib.import_module(f"trainguard.scan.allowlists.{data_module}")
    except ImportError:
        return {}, []
    table: dict[str, set[str]] = {}
    for line in str(mod.TABLE).splitlines():
        if line.strip():
            module, *names = line.split()
            table.setdefault(module, set()).update(names)
    return table, list(mod.SOURCES)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fresh", action="store_true", help="do not merge the shipped table")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    groups: dict[str, list[str]] = {}
    for root in _classes.ROOTS:
        groups.setdefault(_classes.DATA_MODULES[root.split(".")[0]], []).append(root)
    for data_module, roots in groups.items():
        table, sources = ({}, []) if args.fresh else _existing(data_module)
        table = {m: {n for n in names if not danger(m, n)} for m, names in table.items()}
        for root in roots:
            for module, names in scan_root(root).items():
                table.setdefault(module, set()).update(names)
            sources.append(_version(root))
        table = {m: names for m, names in table.items() if names}
        text = render(roots, table, sorted(set(sources)))
        (_HERE / f"{data_module}.py").write_text(text, encoding="utf-8")
        print(f"{data_module}: {sum(map(len, table.values()))} names", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
