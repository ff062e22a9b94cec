"""``trainguard.load(f)``: ``torch.load`` that never hands an unscanned or unsafe file to a loader.

1. the file is scanned (``trainguard.scan``); ``unsafe`` or unscannable files raise
   ``LoadBlocked`` naming the file, member, global and rule, and a ``load.blocked`` finding
   is reported; ``suspicious`` ones too, unless ``trusted=True``;
2. it is read by torch with the restricted unpickler as ``pickle_module``: ``find_class``
   returns exactly the globals the scan allowed in this file (with ``trusted=True`` also the
   ones it judged unknown, never dangerous) and nothing else, inside the audit window
   (``trainguard.load.audithook``). As narrow as torch's weights-only unpickler, and faster
   (which is pure Python).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from trainguard.load._restricted import Allowed, FindingSink, Source, check, scan_source
from trainguard.scan import Limits, Policy

__all__ = ["load", "original_torch_load"]


def original_torch_load() -> Callable[..., Any]:
    """``torch.load`` as torch defines it, even while ``protect()`` has replaced it."""
    import torch

    from trainguard.load._protect import original

    real: Callable[..., Any] = original(torch.serialization, "load")
    return real


def load(
    f: Any,
    map_location: Any = None,
    *,
    policy: Policy | None = None,
    limits: Limits | None = None,
    trusted: bool = False,
    on_finding: FindingSink | None = None,
    **kwargs: Any,
) -> Any:
    """Scan, then load a torch checkpoint with the unpickler restricted to what it allowed."""
    kwargs.pop("weights_only", None)
    kwargs.pop("pickle_module", None)
    source = Source(f)
    result = scan_source(source, policy, limits)
    check(result, full_unpickler=True, trusted=trusted, sink=on_finding)
    allowed = Allowed(result, trusted=trusted, sink=on_finding)
    real_load = original_torch_load()
    module = allowed.pickle_module()
    return real_load(source.reopen(), map_location, module, weights_only=False, **kwargs)
