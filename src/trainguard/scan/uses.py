"""How a pickle uses a global, from least to most power handed to it."""

from __future__ import annotations

import enum

__all__ = ["Use"]


class Use(enum.IntFlag):
    REF = 1
    """Looked up only (``find_class``): imports the module, hands out the object."""
    NEW = 2
    """Instantiated without arguments that matter (``NEWOBJ``/``copyreg._reconstructor``) and
    given state by ``BUILD``: the class's own ``__setstate__`` runs."""
    CALL = 4
    """Called with arguments (``REDUCE``, ``INST``, ``OBJ`` with args): the callable runs."""

    @property
    def worst(self) -> Use:
        for use in (Use.CALL, Use.NEW, Use.REF):
            if use in self:
                return use
        return Use.REF

    @property
    def label(self) -> str:
        return {Use.CALL: "call", Use.NEW: "new", Use.REF: "ref"}[self.worst]
