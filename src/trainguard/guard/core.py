"""``Guard``: the in-job runtime guard. It owns the checks, the step loop and reporting.

The guard hooks ``optimizer.step()`` (pre and post hooks), so the exact checks run at the
moment they are exact: the weights must not move between two optimizer steps, and an
optimizer step must be the formula. ``guard.step(loss=...)`` after each optimizer step
adds the loss, the batch and the scheduled checks; integrations call it for you.

Alerts go to the ledger first, then to ``on_alert`` callbacks and the ``trainguard``
logger (stderr). ``stop_on`` turns an alert of at least that severity into
``GuardStopped`` raised from the training loop, after it is recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from trainguard.errors import ConfigError, GuardStopped
from trainguard.findings import Alert, Finding, Location, Rule, Severity
from trainguard.guard import authority as _authority
from trainguard.guard.checks.base import Check, StepInfo
from trainguard.guard.constraints import Constraint
from trainguard.guard.coverage import Coverage
from trainguard.guard.heartbeat import Heartbeat
from trainguard.guard.wrapped import describe, unwrap_optimizer, unwrap_schedulers
from trainguard.guard.writes import Writes
from trainguard.ledger.sink import open_ledger

__all__ = ["DEFAULT_EVERY", "Guard"]

log = logging.getLogger("trainguard.guard")

DEFAULT_EVERY = 16
_KEY_ENV = "TRAINGUARD_RUN_KEY"
_NEVER_STOP = {Rule.TRAINING_ANOMALY}


class Guard:
    """Watch one training job from inside its process.

    ``model``/``optimizer`` are the objects being trained; ``scheduler`` and ``dataloader``
    let the guard predict the learning rate and the sample order independently.
    Framework wrappers (accelerate, Lightning, DeepSpeed) are unwrapped to the torch
    optimizer and schedulers underneath (``trainguard.guard.wrapped``); ``scheduler`` may
    be a list of schedulers stepped together on the optimizer.
    ``ledger`` is a folder (or an open ``trainguard.ledger.Ledger``); ``None`` uses
    ``$TRAINGUARD_LEDGER`` when set and otherwise keeps alerts in memory only
    (``guard.alerts``). ``every`` is the period, in optimizer steps, of the scheduled
    checks (code snapshot, replicas, full weight coverage). ``start_step`` numbers the
    steps of a resumed run as the trainer does (alerts then name step ``start_step + n``).
    ``key`` is the per-run secret
    of the fingerprints (random by default, shared by the ranks of a distributed job).
    ``checks`` replaces the default set (see ``trainguard.guard.checks.default_checks``).
    ``constraints`` (``Clamp``, ``NonNegative``, ``MaxNorm`` from
    ``trainguard.guard.constraints``) are applied by the guard after every optimizer step
    and verified; ``guard.after_step(fn)`` runs a write of your own there instead of in the
    loop; ``guard.swapped()`` evaluates with other weights (an EMA) and verifies they come
    back bit-identical (``trainguard.guard.writes``).
    """

    def __init__(
        self,
        model: Any,
        optimizer: Any,
        *,
        scheduler: Any = None,
        dataloader: Any = None,
        ledger: Any = None,
        every: int = DEFAULT_EVERY,
        key: bytes | None = None,
        seed: int | None = None,
        stop_on: Severity | str | None = None,
        on_alert: Callable[[Alert], None] | None = None,
        checks: Sequence[Check] | None = None,
        process: bool = True,
        start_step: int = 0,
        constraints: Sequence[Constraint] = (),
    ) -> None:
        if every < 1:
            raise ConfigError(f"every must be at least 1, got {every}")
        opt, sched = unwrap_optimizer(optimizer), unwrap_schedulers(scheduler)
        optimizer = opt.value
        self.model = model
        self.optimizer = optimizer
        self.scheduler = sched.value
        self.dataloader = dataloader
        self.every = every
        self.seed = seed
        self.rank, self.world_size = _dist_rank()
        self.stop_on = Severity.parse(stop_on) if isinstance(stop_on, str) else stop_on
        self.alerts: list[Alert] = []
        self.repeats: dict[tuple[str, str], int] = {}
        self._on_alert = [on_alert] if on_alert else []
        self._lock = threading.RLock()
        self._events: list[tuple[str, dict[str, Any], int]] = []
        self._pending_stop: GuardStopped | None = None
        self._authorized = 0
        self.start_step = start_step
        self._step = start_step
        self._completed = start_step
        self._stepped_since_end = False
        self._last_end = time.perf_counter()
        self._closed = False
        self._hooks: list[Any] = []
        self._hook_ids: tuple[int, int] = (-1, -1)
        self.step_call: tuple[Any, Any] | None = None
        self.busy_times: deque[float] = deque(maxlen=64)
        self._ledger, self._own_ledger = open_ledger(ledger, self.rank)
        self.key = self._agree_key(key)
        self._coverage = Coverage(model, optimizer)
        self._named = self._coverage.named
        self._heartbeat = Heartbeat.from_env(self.rank)
        if checks is None:
            from trainguard.guard.checks import default_checks

            checks = default_checks(process=process)
        self.checks = list(checks)
        self._writes = Writes(constraints)
        self.event(
            "guard.started",
            {
                "checks": [c.name for c in self.checks],
                "every": every,
                "parameters": len(self._named),
                "elements": sum(int(p.numel()) for _, p in self._named),
                "optimizer": type(optimizer).__name__,
                "scheduler": describe(self.scheduler),
                "unwrapped": {"optimizer": list(opt.wrappers), "scheduler": list(sched.wrappers)},
                "world_size": self.world_size,
            },
        )
        try:
            for check in self.checks:
                self._run(check, "attach")
            self._writes.attach(self)
            pre = optimizer.register_step_pre_hook(self._pre_hook)
            post = optimizer.register_step_post_hook(self._post_hook)
            self._hooks += [pre, post]
            self._hook_ids = (pre.id, post.id)
            self._order_hooks()
        except BaseException:
            self.close()
            raise
        self.flush()

    # -- what checks see ---------------------------------------------------------------

    @property
    def current_step(self) -> int:
        return self._step

    @property
    def steps(self) -> int:
        """Optimizer steps completed under the guard."""
        return self._completed - self.start_step

    @property
    def last_step(self) -> int:
        """The number of the last completed optimizer step (``start_step`` + ``steps``)."""
        return self._completed

    @property
    def is_authorized(self) -> bool:
        return self._authorized > 0

    @property
    def named_parameters(self) -> Sequence[tuple[str, Any]]:
        return self._named

    def emit(
        self,
        rule: Rule,
        severity: Severity,
        message: str,
        *,
        where: str,
        evidence: Mapping[str, Any] | None = None,
        step: int | None = None,
    ) -> Alert | None:
        with self._lock:
            seen = (rule.value, where)
            if seen in self.repeats:
                self.repeats[seen] += 1
                return None
            self.repeats[seen] = 1
            finding = Finding(rule, severity, message, Location(where), dict(evidence or {}))
            at = self._step if step is None else step
            alert = Alert(finding, at, self.rank, os.getpid(), time.time())
            self.alerts.append(alert)
            if self._ledger is not None:
                self._ledger.append_alert(finding, step=at, rank=self.rank)
        log.warning("[trainguard] %s at step %s (rank %s): %s", rule.value, at, self.rank, message)
        for callback in self._on_alert:
            try:
                callback(alert)
            except Exception:  # a broken callback must not hide the next alert
                log.exception("on_alert callback failed")
        if self._heartbeat is not None:
            self._heartbeat.alert(alert)
        if (
            self.stop_on is not None
            and severity >= self.stop_on
            and rule not in _NEVER_STOP
            and self._pending_stop is None
        ):
            self._pending_stop = GuardStopped(
                f"trainguard stopped the job: {rule.value} at step {at}: {message}", alert=alert
            )
        return alert

    def event(self, message: str, evidence: Mapping[str, Any]) -> None:
        with self._lock:
            self._events.append((message, dict(evidence), self._step))

    def on_alert(self, callback: Callable[[Alert], None]) -> None:
        """Also call ``callback`` with every new alert."""
        self._on_alert.append(callback)

    # -- the step loop -----------------------------------------------------------------

    def _order_hooks(self, *, pre: bool = True, post: bool = True) -> None:
        """The guard's step pre-hook runs first and its post-hook last among the
        optimizer's own hooks, so a hook registered before (or after) the guard can neither
        act before the checks saw the state nor become the baseline they compare against.
        (Global optimizer hooks run outside these; the code check judges them.)"""
        pre_id, post_id = self._hook_ids
        pres = self.optimizer._optimizer_step_pre_hooks
        posts = self.optimizer._optimizer_step_post_hooks
        if pre and pre_id in pres and next(iter(pres)) != pre_id:
            pres.move_to_end(pre_id, last=False)
        if post and post_id in posts and next(reversed(posts)) != post_id:
            posts.move_to_end(post_id)

    def _pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        # a hook added since the last step must not get in between (each dict is reordered
        # only while torch is not iterating it)
        self._order_hooks(pre=False)
        self.step_call = (args, kwargs)  # what optimizer.step() was called with (a closure)
        self._step = self._completed + 1
        for check in self.checks:
            self._run(check, "before_step")
        self._refresh_params()  # after the checks judged the old set, before the update
        self._raise_pending()

    def _post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._order_hooks(post=False)
        self._completed += 1
        self._step = self._completed
        self._stepped_since_end = True
        for check in self.checks:
            self._run(check, "after_step")
        self._writes.settle(self)  # declared writes: after the update check read the step
        self._raise_pending()

    def step(self, loss: Any = None, *, batch: Any = None) -> None:
        """Call after each optimizer step (integrations do). ``loss`` feeds the anomaly
        statistics; ``batch`` (tensors) is fingerprinted for replay."""
        if self._closed:
            raise ConfigError("this guard is closed")
        now = time.perf_counter()
        info = StepInfo(
            loss=_scalar(loss),
            batch=batch,
            step_time=now - self._last_end,
            optimizer_stepped=self._stepped_since_end,
        )
        self._last_end = now
        self._stepped_since_end = False
        self._step = self._completed
        for check in self.checks:
            self._run(check, "end_step", info)
        if self._completed % self.every == 0 and info.optimizer_stepped:
            self.flush()
        if self._heartbeat is not None:
            self._heartbeat.beat(self._completed, info.step_time, self.busy_times)
        self._raise_pending()

    def authorized(
        self, reason: str = "", *, token: str | None = None
    ) -> contextlib.AbstractContextManager[None]:
        """Changes made inside are the user's own (a hand-edited LR, a loaded checkpoint):
        recorded as an event, then accepted as the new baseline. Weights written in place
        before the block opens are judged when it opens, not absorbed; at its end only the
        weight ranges due for verification are hashed, and what changed is named
        (``weights.authorized`` event).

        Honoured only when the caller is the job's entry script, trainguard's own code, a
        module named in ``TRAINGUARD_AUTHORIZE``, or presents ``trainguard run``'s token
        (``trainguard.guard.authority``). Any other caller gets ``guard.authorization``
        (MEDIUM) and a window that is not one: what changes inside is judged as usual."""
        frame = sys._getframe(1)
        return self._window(reason, _authority.judge(frame, token), frame)

    @contextlib.contextmanager
    def _window(self, reason: str, verdict: _authority.Verdict, frame: Any) -> Iterator[None]:
        stack = "".join(traceback.format_stack(frame, limit=6))
        honoured = verdict.trusted
        self.event(
            "guard.authorized",
            {"reason": reason, "stack": stack, "by": verdict.by, "honoured": honoured},
        )
        if not honoured:
            self.emit(
                Rule.GUARD_AUTHORIZATION,
                Severity.MEDIUM,
                f"guard.authorized({reason!r}) opened by {verdict.module} "
                f"({verdict.file}:{verdict.line}): {verdict.reason}; the window is not "
                "honoured, changes inside are judged as usual",
                where=f"authorized:{verdict.file}:{verdict.line}",
                evidence={
                    "reason": reason,
                    "module": verdict.module,
                    "why": verdict.reason,
                    "stack": stack,
                    "honoured": False,
                },
            )
            yield
            return
        self._authorized += 1
        try:
            if self._authorized == 1:
                self._writes.opened(self)  # writes made before the block are judged now
            yield
        finally:
            if self._authorized == 1:
                self._refresh_params()  # still authorized: the checks may see it
            self._authorized -= 1
            if not self._authorized:
                for check in self.checks:
                    self._run(check, "rebaseline")

    def after_step(self, fn: Callable[[], object], *, params: Sequence[str] | None = None) -> None:
        """Run ``fn()`` after every optimizer step, in the guard's post-step hook under
        ``torch.no_grad()``, instead of writing weights in the training loop (where the
        weights check would see the write as tampering). ``params`` (name patterns; all by
        default) are the parameters it may write: they are re-baselined after it, any other
        write is still caught. ``fn``'s code is digested now and must not change."""
        self._writes.add(self, fn, params)

    @contextlib.contextmanager
    def swapped(self, shadow: Any = None, *, params: Any = None) -> Iterator[None]:
        """Evaluate with other weights, e.g. an EMA: with ``shadow`` (tensors aligned with
        ``params``, default ``model.parameters()``, or a name-to-tensor mapping) the guard
        copies them in and restores the model's own at the end; without, do the
        store/copy_to/restore yourself inside. At the end every weight must be
        bit-identical to its value when the block began, else ``runtime.weight_tamper``."""
        with self._writes.swapped(self, shadow, params):
            yield

    # -- plumbing ----------------------------------------------------------------------

    def _refresh_params(self) -> None:
        """``add_param_group`` and the like: watch the optimizer's parameters as they are
        now (``trainguard.guard.coverage``)."""
        change = self._coverage.refresh()
        if change is None:
            return
        self._named = self._coverage.named
        self.event("guard.params_changed", {**change.evidence(), "authorized": self.is_authorized})
        for check in self.checks:
            self._run(check, "params_changed")

    def _run(self, check: Check, hook: str, *args: Any) -> None:
        try:
            getattr(check, hook)(self, *args)
        except GuardStopped:
            raise
        except Exception as exc:  # noqa: BLE001 - a failing check is an alert, never a pass
            self.emit(
                Rule.GUARD_ERROR,
                Severity.MEDIUM,
                f"check {check.name} failed in {hook}: {type(exc).__name__}: {exc}",
                where=f"check:{check.name}",
                evidence={"traceback": traceback.format_exc(limit=8)},
            )

    def _raise_pending(self) -> None:
        if self._pending_stop is not None:
            stop, self._pending_stop = self._pending_stop, None
            self.flush()
            self.stop_on = None  # raise once; the job decides what happens next
            raise stop

    def _agree_key(self, key: bytes | None) -> bytes:
        if key is not None:
            return bytes(key)
        env = os.environ.get(_KEY_ENV)
        if env:
            return bytes.fromhex(env)
        fresh = secrets.token_bytes(32)
        if self.world_size > 1:
            import torch.distributed as dist

            box = [fresh if self.rank == 0 else None]
            dist.broadcast_object_list(box, src=0)
            return bytes(box[0])  # type: ignore[arg-type]
        return fresh

    def flush(self) -> None:
        """Write buffered evidence (metrics, fingerprints) to the ledger."""
        with self._lock:
            events, self._events = self._events, []
            if self._ledger is None:
                return
            for message, evidence, step in events:
                self._ledger.append_event(
                    message, step=step, rank=self.rank, evidence={"event": message, **evidence}
                )

    def close(self) -> None:
        """Stop watching: remove hooks, undo patches, flush and close an owned ledger."""
        if self._closed:
            return
        self._closed = True
        for handle in self._hooks:
            handle.remove()
        self._writes.close(self)
        for check in reversed(self.checks):
            self._run(check, "close")
        self.event(
            "guard.stopped",
            {"steps": self.steps, "last_step": self._completed, "alerts": len(self.alerts)},
        )
        self.flush()
        if self._heartbeat is not None:
            self._heartbeat.close(self._completed)
        if self._own_ledger and self._ledger is not None:
            self._ledger.close()

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dist_rank() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return int(os.environ.get("RANK", "0") or 0), 1


def _scalar(value: Any) -> float | None:
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach()
        if value.numel() != 1:
            return None
        return float(value.float().item())
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
