"""What was there before the guard started: torch names judged at attach, and every
watched function compared with its source on disk (on a background thread).

A snapshot cannot see a patch made before the guard started: it is simply "what is
there". Two things can:

* a name torch defines must run torch's own verified code (or the standard library's,
  ``typing_extensions``' or trainguard's wrappers): ``origin.Origins`` decides where code
  comes from by what was loaded from which file, never by the path the code claims. At
  attach the quick part (module, file, globals) runs for every torch name, and each
  builtin bound to a torch name is compared with torch's own table
  (``torch._C._VariableFunctions`` is read-only, ``torch._C._nn`` names its functions);
* the background thread compiles the source files and compares every watched function's
  code object (``SourceIndex``), and repeats the origin check with that comparison: a
  patched ``.pyc``, a ``__code__`` swapped early, or code compiled under a borrowed torch
  file name all fail it.

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


def torch_names(snap: Snapshot, origins: Origins) -> list[Finding]:
    """At attach, without compiling anything but the files of suspect code: every
    function a torch name runs must come from torch's (or the standard library's) module
    of that file."""
    out = []
    for st in snap.fns:
        if st.torch_name is None:
            continue
        origin = origins.of(st.fn, st.owner, code=False)
        if not torch_code(origin, st, origins) and _torch_names_of(snap.index, st.torch_name):
            out.append(_foreign(st, origin))
    return out


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
        code = st.code
        status = index.verify(code)
        counts[status] += 1
        if status in ("mismatch", "missing") and is_library(code.co_filename):
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
            findings.append(Finding(st.where, message, evidence))
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
