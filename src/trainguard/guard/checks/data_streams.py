"""The streams a recorder yields in place of the sampler's: compared as they are drawn.

Why a module of its own: these generators run inside the loader (on its thread, at its
pace) and hold the comparison's position between pulls; ``DataCheck`` is their host and
owns the state they report into.

What they trust: the expected order (``sampler_order``, ``accelerate_sampler``) and the
wrappers' replay (``accelerate_batches``); what the sampler yields passes through
unchanged, whatever it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import islice
from typing import Any, Protocol

from trainguard.guard.checks.accelerate_batches import BatchPass
from trainguard.guard.checks.sampler_order import Plan, equal

__all__ = ["Host", "order_stream", "wrapped_stream"]


class Host(Protocol):
    """What the streams use of ``DataCheck``."""

    _closed: bool
    _group: int
    _drop_tail: bool
    _tap: BatchPass | None

    def _new_pass(self) -> int: ...

    def _take(self, group: list[Any] | None, batches: bool) -> None: ...

    def _record(self, group: list[Any], batches: bool) -> None: ...

    def _internal_error(self, what: str, exc: Exception) -> None: ...

    def _alert_order(
        self, plan: Plan, name: str, epoch: int, start: int, got: list[Any], want: list[Any]
    ) -> None: ...

    def _alert_batch(
        self, replay: BatchPass, name: str, epoch: int, pos: int, got: Any, kind: str, want: Any
    ) -> None: ...


def order_stream(
    host: Host, it: Iterator[Any], plan: Plan | None, name: str, *, batches: bool
) -> Iterator[Any]:
    """Yield what the inner iterator yields, unchanged, comparing and recording.

    A batch sampler pulls a batch's indices back to back, so they are pulled here a
    batch at a time (``islice``: no Python work per index) and compared when the
    batch is complete, still while the loader draws it. Pulls stop at each point
    where more of the expected order is needed, which is fetched right before the
    next pull: when the real sampler consumes its RNG for a new permutation."""
    if host._closed:
        yield from it
        return
    epoch = host._new_pass()
    whole = plan
    size = 1 if batches else host._group
    group: list[Any] = []
    pos = base = 0  # base: the position of exp[0]
    exp: list[Any] = []
    fetch_at = 0 if plan is not None else -1
    while True:
        if pos == fetch_at and plan is not None:
            plan, exp, base, fetch_at = _extend(host, plan, exp, base, pos - len(group))
        want = size - len(group)
        if fetch_at > pos and plan is not None:
            want = min(want, fetch_at - pos)
        got = list(islice(it, want))
        pos += len(got)
        group += got
        if len(group) >= size:
            if plan is not None:
                start = pos - len(group)
                if not equal(group, exp[start - base : pos - base]):
                    host._alert_order(plan, name, epoch, start, group, exp[start - base :])
                    plan = None  # one alert per epoch
            host._take(group, batches)
            group = []
        if len(got) < want:
            break
        yield from got
        if host._closed:
            yield from it
            return
    if plan is not None:  # the sampler ended: the open batch, then the count
        if pos == fetch_at:
            plan, exp, base, fetch_at = _extend(host, plan, exp, base, pos - len(group))
        start = pos - len(group)
        rest = exp[start - base :]
        if plan is not None and (not equal(group, rest[: len(group)]) or len(rest) > len(group)):
            host._alert_order(plan, name, epoch, start, group, rest)
    if whole is not None:
        whole.finish()  # the sampler ran to its end
    if group and not host._drop_tail and not host._closed:
        host._take(group, batches)
    if not batches and not host._closed:
        host._take(None, batches)  # the end, for the wrappers' replay
    yield from got


def _extend(
    host: Host, plan: Plan, exp: list[Any], base: int, keep: int
) -> tuple[Plan | None, list[Any], int, int]:
    """The next chunk of expectations, keeping those from ``keep`` on (the open
    batch). Returns the plan (None after a failure), the list, its base, and the
    position of the next fetch (-1: the expected order has ended)."""
    pos = base + len(exp)
    try:
        more = plan.chunk(pos)
    except Exception as exc:  # noqa: BLE001 - report, let the loader go on
        host._internal_error("recompute", exc)
        return None, exp, base, -1
    if not more:
        return plan, exp, base, -1
    exp = exp[keep - base :] + more
    return plan, exp, keep, keep + len(exp)


def wrapped_stream(
    host: Host, it: Iterator[Any], replay: BatchPass, name: str, epoch: int
) -> Iterator[Any]:
    """The batches accelerate's wrappers hand this process, each compared with the
    replay of the wrappers over the stock batch sampler's batches (``_take`` feeds
    it while the wrappers pull them) and recorded; one alert per pass."""
    host._tap = replay
    alive, count = True, 0
    for batch in it:
        if not host._closed:
            if alive:
                found = _replayed(host, replay, "check", batch)
                if found is not None:
                    alive = False
                    host._alert_batch(replay, name, epoch, count, batch, *found)
            host._record([batch], True)
        count += 1
        yield batch
    if alive and not host._closed:
        found = _replayed(host, replay, "leftover", None)
        if found is not None:
            host._alert_batch(replay, name, epoch, count, None, *found)
    if host._tap is replay:
        host._tap = None


def _replayed(host: Host, replay: BatchPass, what: str, batch: Any) -> tuple[str, Any] | None:
    try:
        return replay.check(batch) if what == "check" else replay.leftover()
    except Exception as exc:  # noqa: BLE001 - report, let the loader go on
        host._internal_error("replay", exc)
        return None
