"""Loading without running code: every load scanned, then restricted to what the scan allowed.

Two layers, each trusting one stated thing (the modules' docstrings say exactly what):

1. the restricted unpickler (``_restricted``): ``find_class`` returns only the globals the
   scan of *that* file allowed; torch's own weights-only unpickler where a caller asked for
   ``weights_only=True``;
2. the audit window (``audithook``): while an unpickler runs, CPython audit events other than
   reading are refused, whoever raises them.

``trainguard.load(f)`` (this package is callable: it is ``load``), ``protect()`` /
``protected()`` / ``unprotect()`` (every loader of the process, ``_entrypoints``) and
``convert()`` (pickle to safetensors) are built on them. Importing this package never
imports torch.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from trainguard.load import audithook
from trainguard.load._convert import ConvertResult, Dropped, convert
from trainguard.load._protect import is_protected, original, protect, protected, unprotect
from trainguard.load._restricted import Allowed, GlobalRefused, Source, restricted_pickle_module
from trainguard.load._safe import load

__all__ = [
    "Allowed",
    "ConvertResult",
    "Dropped",
    "GlobalRefused",
    "Source",
    "audithook",
    "convert",
    "is_protected",
    "load",
    "original",
    "protect",
    "protected",
    "restricted_pickle_module",
    "unprotect",
]


class _CallablePackage(types.ModuleType):
    """``trainguard.load`` is both this package and the function ``trainguard.load(f)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return load(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
