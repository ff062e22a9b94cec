"""The built-in allow table that every ecosystem module adds to, and the use sets it speaks.

An entry is ``module.qualname`` (exact) or ``package.*`` (a wildcard, matched only against the
generated class table of ``_classes``), mapped to the uses allowed and the reason a reviewer
accepted. An entry that allows ``CALL`` claims more than the others: the callable was read
and does nothing but build a value from its arguments, whatever those arguments are.
"""

from __future__ import annotations

from trainguard.scan.uses import Use

__all__ = ["ALL", "BUILTIN_ALLOW", "REF_CALL", "REF_NEW", "add"]

ALL = Use.REF | Use.NEW | Use.CALL
REF_NEW = Use.REF | Use.NEW
REF_CALL = Use.REF | Use.CALL
"""Looked up and called with arguments (a function, or a class built by REDUCE), never
allocated empty by NEWOBJ."""

BUILTIN_ALLOW: dict[str, tuple[Use, str]] = {}
"""module.qualname (or package.*) -> (uses allowed, why a reviewer accepted it)."""


def add(names: str | list[str], uses: Use, reason: str) -> None:
    for name in names.split() if isinstance(names, str) else names:
        BUILTIN_ALLOW[name] = (uses, reason)
