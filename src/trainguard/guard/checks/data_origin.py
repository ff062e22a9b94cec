"""Where a dataset's item-fetching code comes from, judged once when the guard attaches.

Why: patching ``MyDataset.__getitem__`` *before* ``Guard()`` leaves no change for the
per-step identity watch to see, yet every sample the model reads then passes through the
insider's function. What the code is cannot be judged, but where it was written can: the
method the class (or the base that defines it) answers with must be code that its own
source file holds.

What it trusts, per method (``__getitem__``, ``__getitems__``, ``__iter__``, ``__len__``):

- in installed code (standard library, site-packages, torch, trainguard): the function
  must be exactly what compiling its file gives (``SourceIndex.verify`` says ``ok``);
- in the project's or the entry script's own code: the code object's file must be the
  file of the module that defines the class, and that file must define a function with
  that qualified name at that line (``ok`` or ``mismatch``: import hooks such as pytest's
  assertion rewriting legitimately recompile project files); code compiled from a string
  (``<string>``), a function borrowed from another module, or one whose file no longer
  holds it is reported. ``functools.wraps`` copies ``__module__`` and ``__qualname__`` but
  not the code object's own file and name, which is what is read here;
- IPython cells (``__main__`` code whose file is the kernel's cell file) are the user's
  own script: accepted, with a ``data.unverified`` note;
- methods implemented in C (a builtin type's slot) are outside any Python check: accepted.
"""

from __future__ import annotations

import inspect
import os
import sys
import types
from dataclasses import dataclass

from trainguard.guard.checks._codehash import SourceIndex, functions_of, is_library

__all__ = ["METHODS", "Origin", "judge_methods"]

METHODS = ("__getitem__", "__getitems__", "__iter__", "__len__")


@dataclass(frozen=True, slots=True)
class Origin:
    """One method's verdict: ``problem`` is empty when its origin is trusted, ``note``
    when it is accepted without a source check."""

    method: str
    owner: str
    file: str
    qualname: str
    problem: str
    note: str

    def evidence(self) -> dict[str, str]:
        return {
            "method": self.method,
            "class": self.owner,
            "file": self.file,
            "qualname": self.qualname,
        }


def judge_methods(cls: type, index: SourceIndex) -> list[Origin]:
    """The verdicts for ``cls``'s fetching methods that are Python functions."""
    out = []
    for method in METHODS:
        owner = next((c for c in cls.__mro__ if method in c.__dict__), None)
        if owner is None or owner is object:
            continue
        fns = functions_of(inspect.getattr_static(owner, method))
        if not fns:
            continue  # a C slot, or None (__getitems__ = None disables it)
        out.append(_judge(method, owner, fns[0], index))
    return out


def _judge(method: str, owner: type, fn: types.FunctionType, index: SourceIndex) -> Origin:
    code = fn.__code__
    file = code.co_filename
    owner_name = f"{owner.__module__}.{owner.__qualname__}"

    def origin(problem: str = "", note: str = "") -> Origin:
        return Origin(method, owner_name, file, code.co_qualname, problem, note)

    if is_library(file):
        verdict = index.verify(code)
        if verdict == "ok":
            return origin()
        return origin(f"installed code that is not what its source file holds ({verdict})")
    module = sys.modules.get(owner.__module__)
    module_file = getattr(module, "__file__", None)
    if owner.__module__ == "__main__" and _ipython_cell(file):
        return origin(note="defined in an interactive cell: its source is not on disk")
    if not isinstance(module_file, str):
        return origin(f"the class's module {owner.__module__} has no source file")
    if not _same_file(file, module_file):
        return origin(f"defined in {file}, not in the class's module {module_file}")
    verdict = index.verify(code)
    if verdict in ("ok", "mismatch"):
        return origin()
    return origin(f"the class's source file does not define {code.co_qualname} ({verdict})")


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _ipython_cell(file: str) -> bool:
    return file.startswith("<ipython-input-") or f"{os.sep}ipykernel_" in file
