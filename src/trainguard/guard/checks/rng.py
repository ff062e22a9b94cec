"""``runtime.rng_reseed``: the random number generators keep the seed the run started with.

Reseeding mid-run is a quiet way to steer training (dropout masks, data order, noise) or
to make a run unreproducible on purpose. Two independent signals, so that bypassing one
does not bypass both:

- ``torch.initial_seed()`` (and each CUDA generator's) is compared before every optimizer
  step. It changes with any reseed of the default generator, however it was done:
  ``torch.manual_seed``, ``torch.default_generator.manual_seed``, ``set_state``. The
  comparison costs a microsecond.
- The seeding functions (``torch.manual_seed``, ``torch.seed``, ``torch.cuda.manual_seed``
  and ``_all``, ``random.seed``, ``numpy.random.seed``) are wrapped to record every call
  with its caller's stack, so the alert says who did it; Python's and NumPy's generators
  have no ``initial_seed`` to compare at all.

Not alarms: seeding before the guard starts, calls inside ``guard.authorized()`` (recorded
as events), reseeds made by the job's own entry script (``torch.manual_seed(seed + epoch)``
at each epoch; the calling frame must be code of ``__main__``'s file, see ``rng_state``:
an event, unless the seed repeats and replays a state, which ``rng_state``'s cycle rule
reports), reseeds inside ``torch.random.fork_rng`` (the check wraps ``fork_rng`` to know)
or undone by putting a state back (``torch.set_rng_state`` and the CUDA ones are wrapped to
notice; that is how ``fork_rng`` exits, including a ``fork_rng`` bound before the guard
started, and how Lightning's ``isolate_rng`` works), and DataLoader workers seeding
themselves (another process: the wrappers pass straight through there). The generators' states
are watched for cycles (a state put back) by ``rng_state``. Wrappers register
with the code check's registry and are removed on ``close``, restoring the exact originals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._codehash import register_own_wrapper, unregister_own_wrapper
from trainguard.guard.checks.base import Check, GuardContext
from trainguard.guard.checks.rng_state import RngState, caller, main_script_frame

__all__ = ["RngCheck"]

_CUDA_SEEDERS = ("manual_seed", "manual_seed_all", "seed", "seed_all")
_CUDA_RESTORERS = ("set_rng_state", "set_rng_state_all")
# (module, name, kind): "torch" is the CPU default generator (torch.manual_seed seeds CUDA
# too, which the CUDA seed comparison covers), "cuda" the CUDA generators.
_SEEDERS: tuple[tuple[str, str, str], ...] = (
    ("torch", "manual_seed", "torch"),
    ("torch", "seed", "torch"),
    ("torch.random", "manual_seed", "torch"),
    ("torch.random", "seed", "torch"),
    *(("torch.cuda", name, "cuda") for name in _CUDA_SEEDERS),
    *(("torch.cuda.random", name, "cuda") for name in _CUDA_SEEDERS),
    ("random", "seed", "python"),
    ("numpy.random", "seed", "numpy"),
)
_RESTORERS: tuple[tuple[str, str, str], ...] = (
    ("torch", "set_rng_state", "torch"),
    ("torch.random", "set_rng_state", "torch"),
    *(("torch.cuda", name, "cuda") for name in _CUDA_RESTORERS),
    *(("torch.cuda.random", name, "cuda") for name in _CUDA_RESTORERS),
)
_FORK = ("torch.random", "fork_rng", "fork")
_UINT64 = 1 << 64
_MAX_EVENTS = 100  # "rng.reseed" events per run: a dataset seeding per sample must not
_MAX_PENDING = 64  # flood the ledger or memory (the alert is one per function anyway)


@dataclasses.dataclass(frozen=True, slots=True)
class _Reseed:
    """A seeding call made outside ``guard.authorized()`` and outside ``fork_rng``.
    ``restored``: a state was put back afterwards (``fork_rng``'s exit does exactly that,
    even when it was bound before the guard started and so is not our wrapper)."""

    function: str
    kind: str
    value: Any
    stack: str
    after_step: int
    restored: bool = False


class RngCheck(Check):
    """Alert when the RNGs are reseeded during training (see the module docstring)."""

    name = "rng"

    def __init__(self) -> None:
        self._installed: list[tuple[Any, str, Any, Any]] = []  # module, name, original, wrapper
        self._pending: list[_Reseed] = []
        self._lock = threading.Lock()
        self._local = _Local()
        self._pid = os.getpid()
        self._ctx: GuardContext | None = None
        self._seed: int | None = None
        self._cuda: dict[int, int] = {}
        self._events_left = _MAX_EVENTS
        self._unrecorded = 0
        self._states = RngState()  # state continuity: rng_state
        self._own: dict[str, Any] = {}  # kind -> value of the entry script's last reseed

    # -- hooks -------------------------------------------------------------------------

    def attach(self, ctx: GuardContext) -> None:
        import torch

        self._ctx = ctx
        self._pid = os.getpid()
        self._seed = int(torch.initial_seed())
        self._cuda = _cuda_seeds()
        expected = getattr(ctx, "seed", None)
        if expected is not None:
            want = int(expected) % _UINT64
            seen = {"torch.initial_seed": self._seed}
            seen.update({f"torch.cuda.initial_seed[{i}]": s for i, s in self._cuda.items()})
            for where, actual in seen.items():
                if actual != want:
                    ctx.emit(
                        Rule.RNG_RESEED,
                        Severity.HIGH,
                        f"{where}() is {actual} but the run was declared with seed={expected}",
                        where=where,
                        evidence={"old": want, "new": actual, "declared_seed": expected},
                    )
        self._install()
        ctx.event(
            "rng.baseline",
            {
                "initial_seed": self._seed,
                "cuda_initial_seeds": dict(self._cuda),
                "wrapped": [f"{getattr(m, '__name__', m)}.{n}" for m, n, _, _ in self._installed],
            },
        )
        self._states.attach(ctx)

    def before_step(self, ctx: GuardContext) -> None:
        import torch

        with self._lock:
            pending, self._pending = self._pending, []
            own, self._own = self._own, {}
        seed, cuda = int(torch.initial_seed()), _cuda_seeds()
        old, old_cuda = self._seed, dict(self._cuda)
        undone = {
            "torch": seed == old,
            "cuda": all(old_cuda.get(d, s) == s for d, s in cuda.items()),
        }
        alarmed: set[str] = set()
        for call in pending:
            if call.restored and undone.get(call.kind, False):
                ctx.event("rng.reseed_undone", {"function": call.function, "value": call.value})
                continue
            alarmed.add(call.kind)
            ctx.emit(
                Rule.RNG_RESEED,
                Severity.HIGH,
                f"{call.function}({call.value!r}) reseeded the random number generator during "
                "training (outside guard.authorized())",
                where=call.function,
                evidence={
                    "old": old,
                    "new": seed,
                    "value": call.value,
                    "after_step": call.after_step,
                    "stack": call.stack,
                },
            )
        if "torch" in own and _as_seed(own["torch"]) == seed:
            alarmed |= {"torch", "cuda"}  # the entry script's own reseed (rng_state)
        quiet = ctx.is_authorized
        if seed != old and "torch" not in alarmed and not quiet:
            ctx.emit(
                Rule.RNG_RESEED,
                Severity.HIGH,
                f"torch.initial_seed() changed from {old} to {seed} with no seeding call the "
                "guard saw (a generator reseeded or its state replaced directly)",
                where="torch.initial_seed",
                evidence={"old": old, "new": seed, "stack": ""},
            )
        self._seed = seed
        for device, now in cuda.items():
            before = old_cuda.get(device)
            if before is None or now == before or quiet or alarmed & {"torch", "cuda"}:
                continue
            where = f"torch.cuda.initial_seed[{device}]"
            ctx.emit(
                Rule.RNG_RESEED,
                Severity.HIGH,
                f"{where}() changed from {before} to {now} with no seeding call the guard saw",
                where=where,
                evidence={"old": before, "new": now, "stack": ""},
            )
        self._cuda.update(cuda)
        self._states.observe(ctx, ctx.current_step)

    def rebaseline(self, ctx: GuardContext) -> None:
        import torch

        seed, cuda = int(torch.initial_seed()), _cuda_seeds()
        if seed != self._seed or any(self._cuda.get(d) != s for d, s in cuda.items()):
            ctx.event(
                "rng.rebaselined",
                {"old": self._seed, "new": seed, "cuda_old": dict(self._cuda), "cuda_new": cuda},
            )
        self._seed = seed
        self._cuda.update(cuda)
        self._states.rebaseline(ctx)

    def close(self, ctx: GuardContext) -> None:
        self._states.close(ctx)
        if self._unrecorded:
            ctx.event("rng.reseed_unrecorded", {"calls": self._unrecorded})
        for module, name, original, wrapper in reversed(self._installed):
            if module.__dict__.get(name) is wrapper:
                setattr(module, name, original)
            else:  # someone replaced our wrapper: restoring would undo their patch too
                ctx.event(
                    "rng.restore_skipped",
                    {"name": f"{getattr(module, '__name__', module)}.{name}"},
                )
        for _, _, _, wrapper in self._installed:
            unregister_own_wrapper(wrapper)
        self._installed.clear()
        self._ctx = None

    # -- the wrappers ------------------------------------------------------------------

    def _install(self) -> None:
        wrappers: dict[int, Any] = {}
        for modname, name, kind in (*_SEEDERS, *_RESTORERS, _FORK):
            module = sys.modules.get(modname)
            original = getattr(module, "__dict__", {}).get(name)
            if module is None or not callable(original):
                continue
            wrapper = wrappers.get(id(original))
            if wrapper is None:
                if kind == "fork":
                    wrapper = self._wrap_fork(original)
                elif (modname, name, kind) in _RESTORERS:
                    wrapper = self._wrap_restore(original, kind)
                else:
                    wrapper = self._wrap_seed(original, f"{modname}.{name}", kind)
                wrappers[id(original)] = wrapper
                register_own_wrapper(original, wrapper)
            setattr(module, name, wrapper)
            self._installed.append((module, name, original, wrapper))

    def _wrap_seed(self, original: Callable[..., Any], where: str, kind: str) -> Callable[..., Any]:
        check = self

        @functools.wraps(original)
        def reseed_recorder(*args: Any, **kwargs: Any) -> Any:
            return check._call(original, where, kind, args, kwargs)

        return reseed_recorder

    def _wrap_restore(self, original: Callable[..., Any], kind: str) -> Callable[..., Any]:
        check = self

        @functools.wraps(original)
        def rng_state_recorder(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            if check._pending:  # nothing to do, and nothing spent, on the common path
                check._restored(kind)
            return result

        return rng_state_recorder

    def _wrap_fork(self, original: Callable[..., Any]) -> Callable[..., Any]:
        local = self._local

        @functools.wraps(original)
        def fork_rng_recorder(*args: Any, **kwargs: Any) -> Any:
            enabled = kwargs.get("enabled", args[1] if len(args) > 1 else True)
            return _Forked(original(*args, **kwargs), local if enabled else None)

        return fork_rng_recorder

    def _restored(self, kind: str) -> None:
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._pending = [
                dataclasses.replace(r, restored=True) if r.kind == kind else r
                for r in self._pending
            ]

    def _call(
        self,
        original: Callable[..., Any],
        where: str,
        kind: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        local = self._local
        ctx = self._ctx
        # Not ours to judge: a closed guard, a forked DataLoader worker seeding itself,
        # or torch.manual_seed calling torch.cuda.manual_seed_all inside.
        if ctx is None or os.getpid() != self._pid or local.depth:
            return original(*args, **kwargs)
        local.depth = 1
        try:
            result = original(*args, **kwargs)
        finally:
            local.depth = 0
        value = args[0] if args else next(iter(kwargs.values()), result)
        value = value if isinstance(value, int | float | str | type(None)) else repr(value)[:200]
        stack = _caller_stack()
        forked = local.forked > 0
        authorized = ctx.is_authorized
        own = main_script_frame(caller(__file__))
        with self._lock:
            record = self._events_left > 0
            self._events_left -= int(record)
            self._unrecorded += int(not record)
            if own and not authorized and not forked:
                self._own[kind] = value
                self._states.main_reseed(ctx.current_step, kind, value)
            elif not authorized and not forked:
                call = _Reseed(where, kind, value, stack, ctx.current_step)
                if len(self._pending) < _MAX_PENDING:
                    self._pending.append(call)
                else:  # the newest stands for the dropped: none of them was restored yet
                    self._pending[-1] = call
        if record:
            ctx.event(
                "rng.reseed",
                {
                    "function": where,
                    "value": value,
                    "authorized": authorized,
                    "inside_fork_rng": forked,
                    "from_main_script": own,
                    "stack": stack,
                },
            )
        return result


class _Local(threading.local):
    """Per thread: inside one of our wrappers (``depth``), inside ``fork_rng`` blocks."""

    depth: int = 0
    forked: int = 0


class _Forked(contextlib.ContextDecorator):
    """``fork_rng``'s context manager, counting how deep this thread is inside one."""

    def __init__(self, inner: Any, local: _Local | None) -> None:
        self._inner = inner
        self._local = local

    def _recreate_cm(self) -> _Forked:
        recreate = getattr(self._inner, "_recreate_cm", None)
        return _Forked(recreate() if recreate is not None else self._inner, self._local)

    def __enter__(self) -> Any:
        result = self._inner.__enter__()
        if self._local is not None:
            self._local.forked += 1
        return result

    def __exit__(self, *exc: Any) -> Any:
        try:
            return self._inner.__exit__(*exc)
        finally:
            if self._local is not None:
                self._local.forked -= 1


def _as_seed(value: Any) -> int | None:
    return value % _UINT64 if isinstance(value, int) and not isinstance(value, bool) else None


def _cuda_seeds() -> dict[int, int]:
    """Each CUDA generator's initial seed, only once CUDA is up (asking must not start it)."""
    cuda = sys.modules.get("torch.cuda")
    if cuda is None or not cuda.is_initialized():
        return {}
    return {i: int(g.initial_seed()) for i, g in enumerate(cuda.default_generators)}


def _caller_stack(limit: int = 8) -> str:
    """The caller's stack, without this module's own frames."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return ""
    return "".join(traceback.format_stack(frame, limit=limit))
