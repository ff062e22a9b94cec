"""Is each ``.pyc`` the compiled form of the source next to it?

RECORD carries no hash for ``.pyc`` files and Python loads a ``__pycache__`` file whenever
its header matches the source's mtime and size (or, for hash-based pycs, the source hash,
or always when unchecked), so an edited ``.pyc`` with its header left alone runs instead
of a pristine source. The only independent check is to compile the source again and
compare the code objects, which compare by content (bytecode, constants, names, line
table), not by identity. The unmarshalling happens here, in the isolated interpreter.

Compiling holds the GIL, so batches go to forked worker processes. An "ok" verdict comes
back with ``verdict_key`` of what it depended on, for the parent's verdict cache
(``trainguard/env/verdicts.py``): a later run that finds the same key skips the compile.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import struct
import types
from typing import Any

# Results of one check.
OK = "ok"
MISMATCH = "mismatch"
STALE = "stale"  # the header no longer matches the source: Python will not use this file
BAD_MAGIC = "bad_magic"  # another Python version: ignored by this interpreter
GONE = "gone"  # removed while we looked: nothing left to load
ERROR = "error"
MAGIC = importlib.util.MAGIC_NUMBER
_CACHE_DIR = os.sep + "__pycache__"


def source_for(pyc: str, cache_tag: str) -> tuple[str | None, int, bool]:
    """Map ``pkg/__pycache__/mod.TAG[.opt-N].pyc`` to ``pkg/mod.py``.

    Returns (source path or None when the name is not this interpreter's, optimisation
    level, whether the pyc sits in ``__pycache__``). Plain string work: it runs once per
    ``.pyc`` of the environment.
    """
    head, _, name = pyc.rpartition(os.sep)
    if not (head.endswith(_CACHE_DIR) or head == "__pycache__"):
        return None, 0, False
    parts = name.split(".")
    if len(parts) < 3 or parts[1] != cache_tag:
        return None, 0, True
    opt = 0
    if len(parts) == 4 and parts[2].startswith("opt-") and parts[2][4:].isdigit():
        opt = int(parts[2][4:])
    elif len(parts) != 3:
        return None, 0, True
    return head[: -len("__pycache__")] + parts[0] + ".py", opt, True


def cached_for(source: str) -> list[str]:
    """The existing ``__pycache__`` files this interpreter would use for ``source``."""
    out = []
    for opt in ("", 1, 2):
        path = importlib.util.cache_from_source(source, optimization=opt)
        if os.path.exists(path):
            out.append(path)
    return out


def verdict_key(
    pyc: str,
    pyc_st: os.stat_result,
    pyc_sha: str,
    source: str,
    src_st: os.stat_result,
    src_sha: str,
    opt: int,
) -> str:
    """What one "ok" verdict depends on, hashed (hex): this interpreter's magic number and
    the optimisation level, and each file's path, identity and content hash. The parent
    keeps these in its verdict cache (``trainguard/env/verdicts.py``)."""

    def ident(path: str, st: os.stat_result, sha: str) -> str:
        return f"{path}\0{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}\0{sha}"

    text = "\0".join(
        (MAGIC.hex(), str(opt), ident(pyc, pyc_st, pyc_sha), ident(source, src_st, src_sha))
    )
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def _read(path: str) -> tuple[bytes, os.stat_result]:
    with open(path, "rb") as f:
        return f.read(), os.fstat(f.fileno())


def check_one(pyc: str, source: str, opt: int) -> tuple[str, str, str]:
    """(status, detail, verdict key): the key (for "ok" only) is made from the very bytes
    and ``fstat`` this check compiled and compared, never from an earlier look."""
    try:
        data, pyc_st = _read(pyc)
        src, st = _read(source)
    except FileNotFoundError:
        return GONE, "", ""
    except OSError as exc:
        return ERROR, f"{type(exc).__name__}: {exc.strerror or exc}", ""
    if len(data) < 16 or data[:4] != MAGIC:
        return BAD_MAGIC, "", ""
    flags = int.from_bytes(data[4:8], "little")
    if flags & 0b1:
        if flags & 0b10 and importlib.util.source_hash(src) != data[8:16]:
            return STALE, "source hash differs", ""
    elif flags == 0:
        mtime = int.from_bytes(data[8:12], "little")
        size = int.from_bytes(data[12:16], "little")
        if mtime != (int(st.st_mtime) & 0xFFFFFFFF) or size != (st.st_size & 0xFFFFFFFF):
            return STALE, "header does not match the source's mtime and size", ""
    else:
        return STALE, f"unknown flags {flags}", ""  # importlib rejects the file
    try:
        code = marshal.loads(memoryview(data)[16:])
    except Exception as exc:  # noqa: BLE001 - hostile bytes may raise anything
        return MISMATCH, f"does not unmarshal: {type(exc).__name__}: {exc}", ""
    try:
        fresh = compile(src, source, "exec", dont_inherit=True, optimize=opt)
    except (SyntaxError, ValueError) as exc:
        return MISMATCH, f"the source does not compile ({exc}), yet a pyc exists for it", ""
    if code != fresh and _normalised(code) != _normalised(fresh):
        return MISMATCH, "code object differs from compile(source)", ""
    key = verdict_key(
        pyc, pyc_st, hashlib.sha256(data).hexdigest(), source, st,
        hashlib.sha256(src).hexdigest(), opt,
    )  # fmt: skip
    return OK, "", key


def _const(value: Any) -> Any:
    """A constant in a form that compares by content (NaN != NaN would fail honest files)."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if isinstance(value, complex):
        return ("complex", struct.pack("<dd", value.real, value.imag))
    if isinstance(value, tuple):
        return tuple(_const(v) for v in value)
    if isinstance(value, frozenset):
        return ("frozenset", frozenset(_const(v) for v in value))
    if isinstance(value, types.CodeType):
        return _normalised(value)
    return value


def _normalised(code: types.CodeType) -> types.CodeType:
    return code.replace(co_consts=tuple(_const(c) for c in code.co_consts))


def check_batch(batch: list[tuple[str, str, int]]) -> list[tuple[str, str, str, str]]:
    return [(pyc, *check_one(pyc, source, opt)) for pyc, source, opt in batch]


def finding_for(pyc: str, source: str, status: str, detail: str) -> dict[str, Any] | None:
    from . import emit

    if status == MISMATCH:
        return emit.finding(
            emit.FILE_MODIFIED,
            emit.CRITICAL,
            f"compiled file does not match its source: {detail}",
            pyc,
            source=source,
            check="compile",
        )
    if status == ERROR:
        return emit.finding(emit.ERROR, emit.HIGH, f"cannot check .pyc: {detail}", pyc)
    return None
