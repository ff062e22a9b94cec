"""``CodeCheck``: the check's life cycle (attach, per-step watch, keyed full comparison,
authorized changes, the background source comparison) over the package's pieces.

Two things here are its own: the background source comparison is waited for at the
``VERIFY_BY``-th optimizer step after attach at the latest (its alerts come by then, on
any host), and a function's ``__code__``, ``__defaults__`` or ``__kwdefaults__``
assigned while the guard runs is seen when it happens. The identity watch cannot see that
(the function object stays the same), and reading ``__code__`` of the ~1,100 functions a
step reaches costs more than the whole watch (each read is an audit event: 1.4 ms against
0.4 ms, measured); CPython raises ``object.__setattr__`` for those assignments, so an
audit recording of it marks the check dirty and the next optimizer step compares
everything (the step the swap is made at). A function of the snapshot assigned and put
back before that step is an alert too.

*What it trusts:* see the package docstring; for the assignment watch, that the new code
is set through the function's attribute (the audited setter), not by writing the
function object's memory natively.
"""

from __future__ import annotations

import logging
import threading
import time
import types
from collections.abc import Callable
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._codehash import SourceIndex, describe
from trainguard.guard.checks.base import Check, GuardContext, StepInfo
from trainguard.guard.checks.code.compare import OWN_HOOK, Change, compare
from trainguard.guard.checks.code.disk import torch_builtins, torch_names, verify_source
from trainguard.guard.checks.code.hooks import UNENUMERABLE, judge_hook
from trainguard.guard.checks.code.origin import Origins
from trainguard.guard.checks.code.snapshot import Snapshot
from trainguard.guard.checks.code.watch import StepWatch, due
from trainguard.load import audithook

__all__ = ["VERIFY_BY", "CodeCheck"]

VERIFY_BY = 3
"""At this optimizer step after attach the check waits for the source comparison."""
_FN_STATE = frozenset({"__code__", "__defaults__", "__kwdefaults__"})

log = logging.getLogger("trainguard.guard")


class CodeCheck(Check):
    """Watch torch's training code, the model's classes and all hooks for replacement.

    ``verify_source=False`` skips the comparison with the source files on disk (the
    background thread), for hosts where compiling the library once is unwelcome.
    """

    name = "code"

    def __init__(self, *, verify_source: bool = True) -> None:
        self._verify_source = verify_source
        self._snapshot: Snapshot | None = None
        self._watch: StepWatch | None = None
        self._checked_first = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.verified = threading.Event()
        self._index = SourceIndex()  # the main thread's, for vouching torch's rewrapping
        self._origins = Origins(self._index)
        self._attached_at = 0
        self._reported: set[str] = set()  # where attach reported: the thread skips them
        self._assigned: list[tuple[Any, str, str, str]] = []  # (fn, attr, site, stack)
        self._assignments: audithook.Recording | None = None

    def attach(self, ctx: GuardContext) -> None:
        started = time.perf_counter()
        self._origins, problem = Origins.from_env(self._index)
        if problem is not None:
            ctx.emit(Rule.GUARD_ERROR, Severity.MEDIUM, problem, where="check:code")
        snap = self._snapshot = Snapshot(ctx, self._index)
        self._watch = StepWatch(snap)
        self._hooked_step(ctx)
        self._judge_existing(ctx, snap)
        self._attached_at = int(ctx.current_step)
        self._assigned = []
        if self._assignments is None:
            self._assignments = audithook.record(
                self._on_assign, events=frozenset({"object.__setattr__"}), filtered=False
            )
        found = torch_builtins(snap) + torch_names(
            snap, self._origins, compile_step=self._verify_source
        )
        self._reported = {finding.where for finding in found}
        for finding in found:
            ctx.emit(
                Rule.MONKEYPATCH,
                Severity.CRITICAL,
                finding.message,
                where=finding.where,
                evidence=finding.evidence,
            )
        ctx.event("code.unenumerable", {"what": UNENUMERABLE})
        ctx.event(
            "code.snapshot",
            {
                "names": len(snap.slots),
                "functions": len(snap.fns),
                "hooks": len(snap.hooks),
                "watched_per_step": self._watch.size,
                "sealed": self._origins.sealed,
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        self.verified.clear()
        if self._verify_source:
            self._thread = threading.Thread(
                target=self._verify, args=(ctx, snap), name="trainguard-code-verify", daemon=True
            )
            self._thread.start()
        else:
            self.verified.set()

    def _hooked_step(self, ctx: GuardContext) -> None:
        opt = ctx.optimizer
        step = getattr(type(opt), "step", None)
        if hasattr(opt, "register_step_pre_hook") and not getattr(step, "hooked", False):
            ctx.emit(
                Rule.MONKEYPATCH,
                Severity.HIGH,
                f"{type(opt).__qualname__}.step is not torch's hooked step: optimizer step "
                "hooks (and the guard's exact checks) will not run",
                where=f"{type(opt).__module__}.{type(opt).__qualname__}.step",
                evidence={"step": describe(step)},
            )

    def _judge_existing(self, ctx: GuardContext, snap: Snapshot) -> None:
        """Hooks and instance overrides present at attach are judged, not adopted."""
        found: list[tuple[str, Any, str]] = [
            (hs.where, hook, "hook") for hs in snap.hooks for _, hook in hs.items
        ]
        found += [
            (s.where, s.value, "override") for s in snap.slots if id(s.mapping) in snap.owners
        ]
        for where, value, kind in found:
            verdict = judge_hook(ctx, value, snap, self._origins, existing=True)
            if verdict.kind == "alert":
                info = verdict.evidence["hook"]
                what = "a hook on" if kind == "hook" else "the instance attribute"
                ctx.emit(
                    Rule.MONKEYPATCH,
                    Severity.HIGH,
                    f"{what} {where}, there before the guard started, runs code that is not "
                    f"verified library code: {info.get('qualname')} "
                    f"({info.get('file', info.get('module'))}): {verdict.reason}",
                    where=where,
                    evidence=verdict.evidence,
                )
            elif verdict.kind == "adopted":
                ctx.event(
                    f"code.{kind}_adopted",
                    {"where": where, "reason": verdict.reason, **verdict.evidence},
                )

    def before_step(self, ctx: GuardContext) -> None:
        thread = self._thread
        if thread is not None and int(ctx.current_step) - self._attached_at >= VERIFY_BY:
            if thread.is_alive():
                thread.join()  # once: the source comparison's alerts come by this step
            self._thread = None
        if not self._checked_first or due(ctx.key, ctx.current_step, ctx.every):
            self._checked_first = True
            self.check_now(ctx)
        elif self._assigned or (self._watch is not None and self._watch.changed()):
            self.check_now(ctx)

    def end_step(self, ctx: GuardContext, info: StepInfo) -> None:
        if self._assigned or (self._watch is not None and self._watch.changed()):
            self.check_now(ctx)

    def _on_assign(self, call: audithook.CallEvent) -> None:
        """In the audit hook (any thread): a function of the snapshot got new code,
        defaults or keyword defaults; ``check_now`` at the next step says which."""
        target, snap = call.target, self._snapshot
        if not isinstance(target, tuple) or len(target) != 2 or snap is None:
            return
        fn, attr = target
        if attr in _FN_STATE and isinstance(fn, types.FunctionType) and id(fn) in snap.known_fns:
            self._assigned.append((fn, str(attr), call.site, call.stack))

    def params_changed(self, ctx: GuardContext) -> None:
        if self._snapshot is not None and not ctx.is_authorized:
            self._snapshot = Snapshot(ctx, self._index)
            self._watch = StepWatch(self._snapshot)

    def rebaseline(self, ctx: GuardContext) -> None:
        self._assigned = []  # made inside the authorized block: taken with the rest
        if self._snapshot is None:
            return
        for change in compare(self._snapshot, ctx, self._origins):
            if change.accepted != OWN_HOOK:
                self._accepted(ctx, change, change.accepted or "authorized")
        self._snapshot = Snapshot(ctx, self._index)
        self._watch = StepWatch(self._snapshot)

    def close(self, ctx: GuardContext) -> None:
        if self._assignments is not None:
            self._assignments.stop()
            self._assignments = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def check_now(self, ctx: GuardContext) -> None:
        """Compare with the snapshot now; report, then take the changes as the baseline."""
        if self._snapshot is None or ctx.is_authorized:
            self._assigned = []  # inside an authorized block: the job's own doing
            return
        assigned, self._assigned = self._assigned, []
        changes = compare(self._snapshot, ctx, self._origins)
        self._watch = StepWatch(self._snapshot)
        self._put_back(ctx, assigned, {c.where for c in changes})
        for change in changes:
            if change.accepted == OWN_HOOK:
                continue
            if change.accepted is not None:
                self._accepted(ctx, change, change.accepted)
            else:
                ctx.emit(
                    Rule.MONKEYPATCH,
                    change.severity,
                    change.message,
                    where=change.where,
                    evidence=change.evidence,
                )

    def _put_back(
        self, ctx: GuardContext, assigned: list[tuple[Any, str, str, str]], seen: set[str]
    ) -> None:
        """A function's state assigned since the last look and found as it was: put back
        in between (a swap for part of a step). Still an alert, naming who assigned it."""
        snap = self._snapshot
        if snap is None:
            return
        states = {id(st.fn): st for st in snap.fns}
        for fn, attr, site, stack in assigned:
            st = states.get(id(fn))
            if st is None:
                continue
            where = (
                st.where if st.where.endswith(fn.__name__) else f"{st.where} ({fn.__qualname__})"
            )
            if where in seen:
                continue  # compare reported (or accepted) what it is now
            seen.add(where)
            ctx.emit(
                Rule.MONKEYPATCH,
                Severity.HIGH,
                f"{where} had its {attr} assigned at {site} and put back before the guard"
                " looked: it ran other code in between",
                where=where,
                evidence={"attr": attr, "site": site, "stack": stack, **describe(fn)},
            )

    @staticmethod
    def _accepted(ctx: GuardContext, change: Change, reason: str) -> None:
        ctx.event("code.accepted", {"where": change.where, "reason": reason, **change.evidence})

    def wait_verified(self, timeout: float | None = None) -> bool:
        """Block until the comparison with the source on disk has finished."""
        return self.verified.wait(timeout)

    # -- the comparison with the source on disk (background thread) --------------------

    def _verify(self, ctx: GuardContext, snap: Snapshot) -> None:
        try:
            started = time.perf_counter()
            index = SourceIndex()
            origins = self._origins.with_index(index)
            findings, counts = verify_source(snap, origins, index, self._stop.is_set)
            for finding in [f for f in findings if f.where not in self._reported]:
                _safe(
                    ctx.emit,
                    Rule.MONKEYPATCH,
                    Severity.CRITICAL,
                    finding.message,
                    where=finding.where,
                    evidence=finding.evidence,
                )
            ctx.event(
                "code.verified",
                {
                    **counts,
                    "functions": sum(counts.values()) - counts["foreign"] - counts["added"],
                    "files": index.compiled,
                    "seconds": round(time.perf_counter() - started, 3),
                },
            )
        except Exception as exc:  # the thread must report, never die silently
            log.exception("trainguard: verifying the source of the watched code failed")
            _safe(
                ctx.emit,
                Rule.GUARD_ERROR,
                Severity.MEDIUM,
                f"check code failed verifying source: {type(exc).__name__}: {exc}",
                where="check:code",
            )
        finally:
            self.verified.set()


def _safe(emit: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Emit from the thread. A guard closed meanwhile may have closed its ledger; the
    thread must not die with a traceback on stderr for that."""
    try:
        emit(*args, **kwargs)
    except Exception:
        log.error("trainguard: the code check could not report from its thread", exc_info=True)
