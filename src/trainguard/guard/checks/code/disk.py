"""What was there before the guard started: torch names judged at attach, and every
watched function compared with its source on disk (on a background thread).

A snapshot cannot see a patch made before the guard started: it is simply "what is
there". Two things can:

* a name torch defines must run torch's own verified code (or the standard library's,
  ``typing_extensions``' or trainguard's wrappers): ``origin.Origins`` decides where code
  comes from by what was loaded from which file, never by the path the code claims. At
  attach the quick part (module, file, globals) runs for every torch name; for every
  function reachable from a name an optimizer step looks up (``Fn.step``: ``torch``,
  ``torch.nn.functional``, ``torch.nn.utils``, the optimizer's and the model's classes)
  the function's *current* ``__code__`` is also compared with what its file compiles to
  (``SourceIndex.verify``; about 55 files, a third of a second once per process on a
  loaded 2-core host, then memoized): a ``__code__`` swapped before the guard started,
  keeping the function object and its torch file name, is an alert at attach. Each
  builtin bound to a torch name is compared with torch's own table
  (``torch._C._VariableFunctions`` is read-only, ``torch._C._nn`` names its functions);
* the background thread compiles the remaining source files and compares every watched
  function's code object (``SourceIndex``), and repeats the origin check with that
  comparison: a patched ``.pyc``, a ``__code__`` swapped early, or code compiled under a
  borrowed torch file name all fail it. The check waits for it at the third optimizer
  step after attach at the latest (``check.VERIFY_BY``), so its alerts come by then
  however loaded the host is.

*What it trusts:* torch's read-only ``_VariableFunctions`` table and the names torch's
source files spell (a name no torch file mentions is an addition, not a replacement), and
``origin.Origins``.
"""

from __future__ import annotations

import os
import sys
import types
from dataclasses import dataclass
from typing import Any

from trainguard.guard.checks._codehash import SourceIndex, code_digest, describe, is_library
from trainguard.guard.checks.code.origin import LIBRARY, OWN, STDLIB, TORCH, Origin, Origins
from trainguard.guard.checks.code.snapshot import Fn, Snapshot

__all__ = ["Finding", "torch_builtins", "torch_names", "verify_source"]


@dataclass(frozen=True, slots=True)
class Finding:
    where: str
    message: str
    evidence: dict[str, Any]


def torch_code(origin: Origin, st: Fn | None = None, origins: Origins | None = None) -> bool:
    """Code a torch name may honestly run: torch's, the standard library's, trainguard's,
    ``typing_extensions``', or an installed library's wrapper around torch's own function
    of that very name (lightning wraps ``torch.compile`` to capture its arguments)."""
    if not origin.verified:
        return False
    if origin.kind in (TORCH, STDLIB, OWN):
        return True
    if origin.kind != LIBRARY:
        return False
    if os.path.basename(origin.file) == "typing_extensions.py":
        return True
    return st is not None and origins is not None and _wraps_torch_own(st, origins)


def _wraps_torch_own(st: Fn, origins: Origins) -> bool:
    if st.torch_name is None:
        return False
    name = st.torch_name[1]
    inner = [c for _, c in st.cells]
    wrapped = st.fn.__dict__.get("__wrapped__")
    if wrapped is not None:
        inner.append(wrapped)
    return any(
        isinstance(f, types.FunctionType)
        and f.__name__ == name
        and origins.of(f).kind == TORCH
        and origins.of(f).verified
        for f in inner
    )


def _torch_names_of(index: SourceIndex, torch_name: tuple[str | None, str]) -> bool:
    """``name`` is one torch defines (its source spells it, or torch's C tables hold it),
    not one a library added."""
    source, name = torch_name
    if source is None:
        return True
    torch = sys.modules.get("torch")
    if source == getattr(torch, "__file__", None) and hasattr(
        getattr(getattr(torch, "_C", None), "_VariableFunctions", None), name
    ):
        return True
    return name in index.names(source)


def _foreign(st: Fn, origin: Origin) -> Finding:
    code = st.code
    why = origin.problem or f"it is {origin.kind} code"
    return Finding(
        st.where,
        f"{st.where} runs code from outside torch's own verified code: {code.co_qualname} at "
        f"{code.co_filename}:{code.co_firstlineno} ({why}; patched before the guard started)",
        {"new": describe(st.fn), **origin.evidence()},
    )


def torch_names(snap: Snapshot, origins: Origins, *, compile_step: bool = True) -> list[Finding]:
    """At attach: every function a torch name runs must come from torch's (or the
    standard library's) module of that file; one an optimizer step reaches must also be
    what that file compiles to (the other files are compiled on the background thread)."""
    out = []
    for st in snap.fns:
        if st.step and compile_step:
            differs = _differs(st, snap.index)
            if differs is not None:
                out.append(differs)
                continue
        if st.torch_name is None:
            continue
        origin = origins.of(st.fn, st.owner, code=False)
        if not torch_code(origin, st, origins) and _torch_names_of(snap.index, st.torch_name):
            out.append(_foreign(st, origin))
    return out


def _differs(st: Fn, index: SourceIndex) -> Finding | None:
    """The function's current code is not what its library file compiles to."""
    code = st.fn.__code__
    status = index.verify(code)
    if status not in ("mismatch", "missing") or not is_library(code.co_filename):
        return None
    evidence = {
        "qualname": code.co_qualname,
        "file": f"{code.co_filename}:{code.co_firstlineno}",
        "sha256": code_digest(code),
        "status": status,
    }
    message = (
        f"the code running as {st.where} ({code.co_qualname}) does not match its "
        f"source file {code.co_filename} (a patched .pyc, or a patch made before "
        "the guard started)"
    )
    return Finding(st.where, message, evidence)


def torch_builtins(snap: Snapshot) -> list[Finding]:
    """A C function bound to a torch name must be torch's function of that name:
    ``torch.softmax = torch.relu`` runs torch code under the wrong name."""
    torch = sys.modules.get("torch")
    if torch is None:
        return []
    table = torch._C._VariableFunctions
    nn = torch._C._nn
    functional = sys.modules.get("torch.nn.functional")
    out = []
    for slot in snap.slots:
        value, name, mapping = slot.value, slot.name, slot.mapping
        if not isinstance(value, types.BuiltinFunctionType):
            continue
        if mapping is vars(torch):
            ref = getattr(table, name, None)
            bad = isinstance(ref, types.BuiltinFunctionType) and ref is not value
        elif mapping is vars(nn):
            bad = value.__name__ != name
        elif functional is not None and mapping is vars(functional):
            refs = [getattr(table, name, None)]
            own = getattr(nn, name, None)  # the C table's own, unless that was replaced too
            if isinstance(own, types.BuiltinFunctionType) and own.__name__ == name:
                refs.append(own)
            refs = [r for r in refs if r is not None]
            bad = bool(refs) and not any(r is value for r in refs)
        else:
            continue
        if bad:
            out.append(
                Finding(
                    slot.where,
                    f"{slot.where} is torch's {value.__name__}, not its {name}",
                    {"new": describe(value)},
                )
            )
    return out


def verify_source(
    snap: Snapshot, origins: Origins, index: SourceIndex, stopped: Any
) -> tuple[list[Finding], dict[str, int]]:
    """Compare every watched function with its file on disk (slow: runs on a thread)."""
    findings: list[Finding] = []
    counts = dict.fromkeys(("ok", "mismatch", "missing", "unverifiable", "foreign", "added"), 0)
    for st in list(snap.fns):
        if stopped():
            break
        status = index.verify(st.code)
        counts[status] += 1
        differs = _differs(st, index) if status in ("mismatch", "missing") else None
        if differs is not None:
            findings.append(differs)
        elif st.torch_name is not None:
            origin = origins.of(st.fn, st.owner)
            if torch_code(origin, st, origins):
                continue
            if not _torch_names_of(index, st.torch_name):
                counts["added"] += 1
                continue
            counts["foreign"] += 1
            findings.append(_foreign(st, origin))
    return findings, counts
