"""Instance attributes that honest libraries put on an optimizer, recognised exactly.

The code check reports any method shadowed on the optimizer instance. Two such writes are
honest and common, and are accepted here only in their exact form:

* **the class's own method, bound to the object itself** (``opt.step = opt.step``):
  calling it is calling what the class provides. accelerate leaves exactly this behind
  after every GradScaler step.
* **accelerate's GradScaler patch** (``accelerate.optimizer.patch_optimizer_step``): while
  ``AcceleratedOptimizer.step`` runs ``scaler.step``, the inner optimizer's ``step`` is a
  function that sets a flag on the wrapper and calls the step the optimizer had (its
  class's, or the LR scheduler's wrapper torch put on the instance before). A snapshot
  taken while the patch is on sees it removed afterwards: the step it wrapped comes back.

What this trusts: accelerate's module as imported (its ``patch_optimizer_step``'s nested
code object is compared by identity, so a look-alike function elsewhere is not accepted),
and nothing about the function but its code and its two closure cells: the wrapper must
wrap this very optimizer and the method must be the class's step bound to it or exactly
what the instance held when the guard took its snapshot.
"""

from __future__ import annotations

import sys
import types
from typing import Any

__all__ = ["accepted"]


def _bound_to_itself(value: Any, owner: Any, inherited: tuple[Any, ...]) -> bool:
    return (
        isinstance(value, types.MethodType)
        and value.__self__ is owner
        and any(value.__func__ is fn for fn in inherited if fn is not None)
    )


def _accelerate_cells(value: Any) -> tuple[Any, Any] | None:
    """(wrapper, method) when ``value`` is accelerate's own ``patched_step``, else None."""
    factory = getattr(sys.modules.get("accelerate.optimizer"), "patch_optimizer_step", None)
    code = getattr(factory, "__code__", None)
    if not isinstance(value, types.FunctionType) or not isinstance(code, types.CodeType):
        return None
    if not any(const is value.__code__ for const in code.co_consts):
        return None
    cells = dict(zip(value.__code__.co_freevars, value.__closure__ or (), strict=True))
    try:
        return cells["accelerated_optimizer"].cell_contents, cells["method"].cell_contents
    except (KeyError, ValueError):  # ValueError: an empty cell
        return None


def _accelerate_patch(value: Any, owner: Any, inherited: tuple[Any, ...], before: Any) -> bool:
    cells = _accelerate_cells(value)
    if cells is None or getattr(cells[0], "optimizer", None) is not owner:
        return False
    method = cells[1]
    return method is before or _bound_to_itself(method, owner, inherited)


def _accelerate_unpatch(value: Any, owner: Any, before: Any) -> bool:
    """The snapshot was taken while the patch was on: ``value`` is what it wrapped."""
    cells = _accelerate_cells(before)
    return cells is not None and getattr(cells[0], "optimizer", None) is owner and cells[1] is value


def accepted(
    name: str, value: Any, owner: Any, inherited: tuple[Any, ...], before: Any = None
) -> str | None:
    """Why ``owner.<name> = value`` is honest, or None. ``inherited``: the class's function
    now and at the snapshot; ``before``: what the instance held at the snapshot (None: it
    held nothing)."""
    if _bound_to_itself(value, owner, inherited):
        return "the class's own method, bound to the object"
    if name == "step" and _accelerate_patch(value, owner, inherited, before):
        return "accelerate's GradScaler step patch"
    if name == "step" and _accelerate_unpatch(value, owner, before):
        return "accelerate's GradScaler step patch, removed"
    return None
