"""The per-step identity watch, and the keyed schedule of the full comparison.

Every optimizer step (before it runs, and again when ``guard.step()`` reports it ended)
the watch reads every ``step`` entry of the snapshot again and compares identities:
the objects bound to the watched names, the sizes of the watched dicts (a name added
that shadows a method), the hook containers and the hooks in them, and the class of
every watched object. All of it is flattened into parallel tuples at build time and
compared with C-level ``map`` over ``operator.is_`` (and ``id()`` tuples), so a step costs
well under a millisecond, and any change is seen at the step it is made. The snapshot keeps every
old object alive, so an ``id`` cannot be reused by the replacement.

Identity is compared, never equality: a replacement whose ``__eq__`` answers True is
still another object.

The full comparison (function code objects, defaults and closure cells, and the names
outside the step's reach) runs on a schedule derived from the run key: HMAC(key, step)
decides, with an average period of ``every`` steps. Whoever does not hold the key cannot
tell which steps are compared, so a patch applied and restored between two snapshots is
caught with probability about 1 - (1 - 1/every)^k for a patch that lasts k steps.

What the watch cannot see: a patch made and undone entirely between two of its reads
(inside one forward and backward pass, after ``guard.step()`` and before the next
``optimizer.step()``); its effect on the gradients is left to the update checks.

*What it trusts:* the run key's secrecy (``ctx.key``) for the schedule, and that the
watched dicts are the live ones (a rebound ``__dict__`` is a changed identity too).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import operator
from collections.abc import Mapping
from typing import Any

from trainguard.guard.checks.code.snapshot import Snapshot

__all__ = ["StepWatch", "due"]


def due(key: bytes, step: int, every: int) -> bool:
    """Whether the full comparison runs at ``step``: one step in ``every`` on average,
    unpredictable without ``key``."""
    if every <= 1:
        return True
    mac = hmac.new(key, b"trainguard.code.schedule" + step.to_bytes(8, "big"), hashlib.sha256)
    return int.from_bytes(mac.digest()[:8], "big") % every == 0


def _contents(container: Any) -> Any:
    return container.values() if isinstance(container, Mapping) else container


class StepWatch:
    """Parallel tuples of what the step can reach, compared by identity."""

    def __init__(self, snap: Snapshot) -> None:
        slots = [s for s in snap.slots if s.step]
        self._maps = tuple(s.mapping for s in slots)
        self._names = tuple(s.name for s in slots)
        self._values = tuple(s.value for s in slots)
        keyed = [k.mapping for k in snap.keysets if k.step]
        self._keyed = tuple(keyed)
        self._lens = tuple(map(len, keyed))
        self._owners = tuple(h.owner for h in snap.hooks)
        self._attrs = tuple(h.attr for h in snap.hooks)
        self._nones = (None,) * len(snap.hooks)
        containers = tuple(map(getattr, self._owners, self._attrs, self._nones))
        self._container_ids = tuple(map(id, containers))
        self._hook_ids = self._hooks_now(containers)
        self._objs = tuple(obj for obj, _, _ in snap.types)
        self._type_ids = tuple(id(cls) for _, cls, _ in snap.types)
        self.size = len(self._values) + len(self._keyed) + len(self._owners) + len(self._objs)

    @staticmethod
    def _hooks_now(containers: tuple[Any, ...]) -> tuple[int, ...]:
        return tuple(
            map(id, itertools.chain.from_iterable(map(_contents, filter(None, containers))))
        )

    def changed(self) -> bool:
        """Something the step can reach is not what the snapshot holds."""
        try:
            now = map(operator.getitem, self._maps, self._names)
            if not all(map(operator.is_, now, self._values)):
                return True
        except (KeyError, TypeError):  # a watched name was deleted
            return True
        if tuple(map(len, self._keyed)) != self._lens:
            return True
        containers = tuple(map(getattr, self._owners, self._attrs, self._nones))
        if tuple(map(id, containers)) != self._container_ids:
            return True
        if self._hooks_now(containers) != self._hook_ids:
            return True
        return tuple(map(id, map(type, self._objs))) != self._type_ids
