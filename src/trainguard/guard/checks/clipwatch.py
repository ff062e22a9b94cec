"""The gradient norm before clipping, and the clip threshold, as training computed them.

The guard sees the gradients at the optimizer's pre-step hook, after
``clip_grad_norm_`` has scaled them: with clipping on, that norm sits at the threshold
step after step and says nothing (a spike the clip absorbed is exactly what should be
seen). ``clip_grad_norm_`` itself returns the total norm it measured before scaling, so
the guard wraps it (``torch.nn.utils.clip_grad_norm_`` and its home
``torch.nn.utils.clip_grad.clip_grad_norm_``, looked up by callers at call time as torch,
Lightning, accelerate and the HF Trainer do) and keeps what the last call returned with
the ``max_norm`` it was given. The wrapper passes everything through unchanged and is
registered as trainguard's own (``_codehash.register_own_wrapper``), so the code check
accepts exactly it; ``close`` restores the original unless someone replaced the wrapper.

What it trusts: nothing it reports is used to judge: the norms are evidence for the
report and the loss/norm anomaly statistics. A caller that bound ``clip_grad_norm_``
before the guard started bypasses the wrapper; the series then holds the norm measured
at the pre-step hook and says the clip was not seen (``clip: None``).
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

from trainguard.guard.checks._codehash import register_own_wrapper, unregister_own_wrapper

__all__ = ["ClipWatch"]

_NAMES = (("torch.nn.utils", "clip_grad_norm_"), ("torch.nn.utils.clip_grad", "clip_grad_norm_"))


class ClipWatch:
    """Install with ``install()``; ``take()`` returns ``(pre-clip norm tensor, max_norm)``
    of the last call since the previous ``take()``, or None."""

    def __init__(self) -> None:
        self._installed: list[tuple[Any, str, Any, Any]] = []
        self._last: tuple[Any, float] | None = None
        self._lock = threading.Lock()

    def install(self) -> None:
        wrappers: dict[int, Any] = {}
        for modname, name in _NAMES:
            module = sys.modules.get(modname)
            original = getattr(module, "__dict__", {}).get(name)
            if module is None or not callable(original):
                continue
            wrapper = wrappers.get(id(original))
            if wrapper is None:
                wrapper = wrappers[id(original)] = self._wrap(original)
                register_own_wrapper(original, wrapper)
            setattr(module, name, wrapper)
            self._installed.append((module, name, original, wrapper))

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        watch = self

        @functools.wraps(original)
        def clip_norm_recorder(*args: Any, **kwargs: Any) -> Any:
            total = original(*args, **kwargs)
            max_norm = kwargs.get("max_norm", args[1] if len(args) > 1 else None)
            try:
                limit = float(max_norm)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                limit = float("nan")
            with watch._lock:
                watch._last = (total.detach() if hasattr(total, "detach") else total, limit)
            return total

        return clip_norm_recorder

    def take(self) -> tuple[Any, float] | None:
        with self._lock:
            last, self._last = self._last, None
        return last

    def close(self) -> list[str]:
        """Restore the originals; returns the names left alone because someone else's
        function stands there now (restoring would undo their patch too)."""
        skipped: list[str] = []
        for module, name, original, wrapper in reversed(self._installed):
            if module.__dict__.get(name) is wrapper:
                setattr(module, name, original)
            else:
                skipped.append(f"{module.__name__}.{name}")
        for _, _, _, wrapper in self._installed:
            unregister_own_wrapper(wrapper)
        self._installed.clear()
        return skipped
