"""Keras model configs: JSON that names the code a loader will run.

``load_model`` rebuilds every object from its ``class_name``/``config``. A ``Lambda`` layer
(and Keras 3's ``__lambda__`` objects) carries marshalled Python bytecode that the loader
unmarshals and calls (CVE-2024-3660 when ``safe_mode`` is off or bypassed), and a
``module``/``class_name`` pair makes Keras 3 import that module (CVE-2025-1550). The config
is walked as data: bytecode is reported, never decoded. ``.keras`` zips call
``scan_config`` from ``zipped.py``; legacy ``.h5`` files pass their ``model_config``
attribute to ``check_json`` from ``hdf5.py``.
"""

from __future__ import annotations

import json
import zipfile
from typing import TYPE_CHECKING, Any

from trainguard.errors import LimitExceeded, ScanError
from trainguard.findings import Rule, Severity

if TYPE_CHECKING:
    from trainguard.scan.engine import FileScan
    from trainguard.scan.window import Window

__all__ = ["FORMATS", "check_config", "check_json", "scan", "scan_config", "sniff"]

FORMATS: tuple[str, ...] = ()
"""None of its own: a ``.keras`` file is a zip, a legacy model an HDF5 file."""

MAX_FINDINGS = 50
_KERAS_ROOTS = frozenset({"keras", "tf_keras", "keras_hub", "keras_nlp", "keras_cv", "tensorflow"})
# Modules whose functions run commands, load code or touch files: naming one is execution.
_DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "shutil", "importlib", "runpy", "pty", "socket",
    "ctypes", "pickle", "marshal", "code", "codeop", "pdb", "webbrowser", "commands",
    "multiprocessing", "pathlib", "io", "tempfile", "urllib", "requests", "http",
})  # fmt: skip
_DANGEROUS_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "__import__", "getattr", "setattr", "delattr",
    "globals", "locals", "vars", "input", "breakpoint", "exit", "quit",
})  # fmt: skip
# Keras functions that turn protections off or fetch files (safe_mode bypasses of 2025).
_DANGEROUS_KERAS = {"enable_unsafe_deserialization": Severity.CRITICAL, "get_file": Severity.HIGH}
# TensorFlow ops a TFOpLambda may name that read or write files or call back into Python.
_TF_SIDE_EFFECTS = ("io.", "raw_ops.", "write_file", "read_file", "py_func", "numpy_function")


def sniff(head: bytes, win: Window) -> str | None:
    return None


def scan(ctx: FileScan, win: Window, member: str | None, depth: int, top: bool) -> None:
    raise ScanError("a Keras config is read inside its .keras zip or .h5 file", member=member)


def scan_config(
    ctx: FileScan, zf: zipfile.ZipFile, win: Window, member: str | None, depth: int
) -> None:
    """Judge ``config.json`` of a ``.keras`` zip; problems are recorded, never raised."""
    from trainguard.scan.containers.zipped import open_member

    where = f"{member}!config.json" if member else "config.json"
    try:
        info = zf.getinfo("config.json")
    except KeyError:
        return
    cap = ctx.limits.max_header
    try:
        if info.file_size > cap:
            raise LimitExceeded(f"config.json declares {info.file_size} bytes (limit {cap})")
        raw = open_member(ctx, win, info).peek_at(0, cap + 1)
        if len(raw) > cap:
            raise LimitExceeded(f"config.json is over {cap} bytes")
        check_json(ctx, raw, where, "config.json")
    except ScanError as exc:
        ctx.fail(exc, where)


def check_json(ctx: FileScan, raw: bytes | str, member: str | None, source: str) -> None:
    """Parse a model config and walk it; JSON that does not parse cannot be judged."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ScanError(f"{source} is not JSON: {exc}"[:300], member=member) from None
    check_config(ctx, data, member, source)


def check_config(ctx: FileScan, data: Any, member: str | None, source: str) -> None:
    """Walk a parsed config iteratively (no recursion limit to hit) and judge every object."""
    worst: list[tuple[Rule, Severity, str, dict[str, Any]]] = []
    found: list[tuple[Rule, Severity, str, dict[str, Any]]] = []
    stack: list[tuple[Any, str, str | None]] = [(data, "$", None)]
    seen = 0
    while stack:
        obj, path, layer = stack.pop()
        seen += 1
        if not seen & 0xFFFF:
            ctx.budget.check_time()
        if isinstance(obj, list):
            items = [(v, f"{path}[{i}]", layer) for i, v in enumerate(obj) if _nested(v)]
            stack.extend(reversed(items))
            continue
        if not isinstance(obj, dict):
            continue
        config = obj.get("config")
        if isinstance(config, dict) and isinstance(config.get("name"), str):
            layer = config["name"]
        for rule, sev, msg in _judge(obj, config):
            ev = {"layer": _short(layer), "class_name": _short(obj.get("class_name"))}
            ev.update(module=_short(obj.get("module")), path=path[:300], source=source)
            bucket = worst if sev >= Severity.HIGH else found
            if len(bucket) < MAX_FINDINGS:
                bucket.append((rule, sev, msg, ev))
        items = [(v, f"{path}.{k}", layer) for k, v in obj.items() if _nested(v)]
        stack.extend(reversed(items))  # popped in document order
    for rule, sev, msg, ev in (worst + found)[:MAX_FINDINGS]:
        where = f" (layer {ev['layer']!r})" if ev["layer"] else ""
        ctx.add(rule, sev, msg + where, member, None, ev)


def _short(value: Any) -> str | None:
    return None if value is None else str(value)[:200]


def _nested(value: Any) -> bool:
    return isinstance(value, dict | list)


def _judge(obj: dict[str, Any], config: Any) -> list[tuple[Rule, Severity, str]]:
    cls, module = obj.get("class_name"), obj.get("module")
    config = config if isinstance(config, dict) else {}
    if cls == "__lambda__":
        msg = "lambda stored as marshalled Python bytecode that load_model runs"
        return [(Rule.CODE_EXECUTION, Severity.CRITICAL, msg)]
    out: list[tuple[Rule, Severity, str]] = []
    if cls == "Lambda":
        fn, ftype = config.get("function"), config.get("function_type")
        if (isinstance(fn, list) and fn and isinstance(fn[0], str)) or (
            isinstance(fn, str) and ftype == "lambda"
        ):
            msg = "Lambda layer carries marshalled Python bytecode that load_model runs"
            out.append((Rule.CODE_EXECUTION, Severity.CRITICAL, msg))
        elif isinstance(fn, str) and ftype == "function":
            out += _reference(config.get("module"), fn, "Lambda layer calls")
    elif cls == "TFOpLambda" and isinstance(config.get("function"), str):
        fn = config["function"]
        if any(s in fn for s in _TF_SIDE_EFFECTS):
            msg = f"TFOpLambda runs tf.{fn[:80]}, an op with side effects"
            out.append((Rule.CODE_EXECUTION, Severity.HIGH, msg))
    if isinstance(module, str) and isinstance(cls, str):
        name = obj["config"] if cls == "function" and isinstance(obj.get("config"), str) else cls
        out += _reference(module, name, "config imports")
    return out


def _reference(module: Any, name: str, how: str) -> list[tuple[Rule, Severity, str]]:
    """A ``module``/``name`` pair that the loader imports and looks up."""
    module = module if isinstance(module, str) else ""
    root = module.split(".", 1)[0]
    what = f"{how} {module}.{name}"[:200] if module else f"{how} {name}"[:200]
    if root in _KERAS_ROOTS or not module:
        sev = _DANGEROUS_KERAS.get(name)
        return [(Rule.CODE_EXECUTION, sev, f"{what}: a loader protection bypass")] if sev else []
    if root in ("builtins", "__builtin__"):
        if name in _DANGEROUS_BUILTINS:
            return [(Rule.CODE_EXECUTION, Severity.CRITICAL, f"{what}: a builtin that runs code")]
        return [(Rule.UNKNOWN_GLOBAL, Severity.MEDIUM, f"{what}: a Python builtin")]
    if root in _DANGEROUS_MODULES:
        return [(Rule.CODE_EXECUTION, Severity.CRITICAL, f"{what}: a module that runs commands")]
    return [(Rule.UNKNOWN_GLOBAL, Severity.MEDIUM, f"{what}: a custom object outside Keras")]
