"""Which parameters the guard watches: the optimizer's, re-read when its groups change.

Progressive unfreezing and similar recipes call ``optimizer.add_param_group`` mid-run. The
guard compares the identity of every parameter in ``optimizer.param_groups`` at each
optimizer pre-step hook (one pass over the parameter list, no tensor access) and, when it
changed, re-reads the list and lets each check extend its coverage
(``Check.params_changed``). Adding groups is an honest, common operation and is recorded
as a ``guard.params_changed`` event; whether a change is acceptable is the hyper check's
call (parameters removed or swapped outside ``guard.authorized()`` are tampering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Coverage", "ParamsChange", "trainable"]


@dataclass(frozen=True, slots=True)
class ParamsChange:
    """Names of the parameters that joined and left the optimizer since the last look."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    groups_before: int
    groups_now: int

    def evidence(self) -> dict[str, Any]:
        return {
            "added": list(self.added[:50]),
            "removed": list(self.removed[:50]),
            "added_count": len(self.added),
            "removed_count": len(self.removed),
            "groups_before": self.groups_before,
            "groups_now": self.groups_now,
        }


class Coverage:
    """The trainable parameters of ``optimizer``, named by ``model`` where it can."""

    def __init__(self, model: Any, optimizer: Any) -> None:
        self._model = model
        self._optimizer = optimizer
        self.named: list[tuple[str, Any]] = trainable(model, optimizer)
        self._ids = _ids(optimizer)

    def refresh(self) -> ParamsChange | None:
        """Re-read the parameter list when the optimizer's groups changed; say how."""
        ids = _ids(self._optimizer)
        if ids == self._ids:
            return None
        before = self.named
        groups_before = len(self._ids)
        self._ids = ids
        self.named = trainable(self._model, self._optimizer)
        old = {id(p) for _, p in before}
        new = {id(p) for _, p in self.named}
        return ParamsChange(
            added=tuple(n for n, p in self.named if id(p) not in old),
            removed=tuple(n for n, p in before if id(p) not in new),
            groups_before=groups_before,
            groups_now=len(ids),
        )


def trainable(model: Any, optimizer: Any) -> list[tuple[str, Any]]:
    """Parameters the optimizer updates, named by the model where it can."""
    names = {}
    if model is not None and hasattr(model, "named_parameters"):
        names = {id(p): n for n, p in model.named_parameters()}
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()
    for gi, group in enumerate(optimizer.param_groups):
        for pi, p in enumerate(group["params"]):
            if id(p) in seen:
                continue
            seen.add(id(p))
            out.append((names.get(id(p), f"param_groups[{gi}].params[{pi}]"), p))
    return out


def _ids(optimizer: Any) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(map(id, group["params"])) for group in optimizer.param_groups)
