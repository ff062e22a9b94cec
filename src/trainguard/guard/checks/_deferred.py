"""Small verdict tensors on their way to the host without stalling the training stream.

On CUDA a verdict (a handful of int64 counts) is copied into pinned memory asynchronously
and read once its event has completed, at a later hook; on the CPU it is read at once.
The same pattern as the weights check's flags and the update check's samples, for the
modules that judge declared writes (``renorm``, ``trainguard.guard.writes``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["Verdicts"]


class Verdicts:
    """A queue of ``(label, int64 vector)`` pairs, read in order."""

    def __init__(self) -> None:
        self._queue: list[tuple[Any, Any, Any]] = []

    def push(self, label: Any, verdict: Any) -> None:
        """Queue ``verdict`` (a 1-d int64 tensor); CUDA tensors start their copy now."""
        event = None
        if getattr(verdict, "is_cuda", False):
            import torch

            host = torch.empty(verdict.shape, dtype=verdict.dtype, pin_memory=True)
            host.copy_(verdict, non_blocking=True)
            event = torch.cuda.Event()  # type: ignore[no-untyped-call]
            event.record()
            verdict = host
        self._queue.append((label, verdict, event))

    def ready(self, *, wait: bool = False) -> Iterator[tuple[Any, list[int]]]:
        """The verdicts that have reached the host (all of them with ``wait``)."""
        while self._queue:
            label, verdict, event = self._queue[0]
            if event is not None:
                if not wait and not event.query():
                    return
                event.synchronize()
            self._queue.pop(0)
            yield label, [int(v) for v in verdict.tolist()]
