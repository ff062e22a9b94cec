"""RNG state continuity for the rng check: a generator's state never comes back.

The seed comparison of ``rng`` cannot see ``torch.set_rng_state(saved)``,
``torch.default_generator.set_state(saved)`` or a loader generator's ``set_state``
rolling the state back: the seed is unchanged, yet dropout masks and data order repeat
every epoch. ``torch.Generator`` is a C type whose ``set_state`` cannot be wrapped, so the
states themselves are watched. At every optimizer step (the pre-hook), and at the start of
every pass over the guarded ``DataLoader`` (its class's ``__iter__`` is wrapped, only that
loader is looked at), each generator's state is reduced to a keyed digest (BLAKE2b with
the run key, 8 bytes; the CPU state is 5056 bytes, about 10 µs a generator). The
generators: torch's default CPU generator, each CUDA generator once CUDA is up, and the
loader's ``generator`` and its sampler's ``generator``.

A state equal to the previous observation is a generator that did not move (a model with
no randomness, ``fork_rng`` around an evaluation, a loader between passes): fine. A state
equal to an *earlier* one, after it had moved on since, is a cycle:
``runtime.rng_reseed`` HIGH naming the generator and both steps. When the job's own entry
script reseeded the generator in between (``torch.manual_seed(0)`` at each epoch: the same
seed every time, so every epoch replays the same stream and shuffling is gone) the cycle
is that honest but degenerate pattern: MEDIUM, with that explanation.

``main_script_frame``: a reseed is the job's own when the calling frame's code is code of
the ``__main__`` script: its file is ``__main__.__file__`` (real path) *and* the code
object is one the file compiles to (compiled once, nested code objects included), so a
function compiled elsewhere under the script's file name does not pass.

What this trusts: the run key is secret (a state cannot be chosen to dodge the sampled
history), ``guard.authorized()`` blocks (a checkpoint's RNG state restored inside one: the
history starts afresh when the block ends), and ``__main__``'s file on disk being the
script that runs. History: the last ``_RECENT`` digests per generator and, beyond them,
the ones whose keyed digest falls in a 1/``_SAMPLE`` sample, at most ``_KEPT``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sys
import types
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainguard.findings import Rule, Severity
from trainguard.guard.checks._codehash import register_own_wrapper, unregister_own_wrapper
from trainguard.guard.checks.base import GuardContext

__all__ = ["RngState", "caller", "main_script_frame"]

_RECENT = 1 << 16
_SAMPLE = 64
_KEPT = 1 << 16
_MAIN_CODES: dict[tuple[str, float], frozenset[types.CodeType]] = {}


@dataclass(slots=True)
class _History:
    """One generator's digests: the last one, recent ones and a keyed sample of older."""

    last: int | None = None
    recent: OrderedDict[int, int] = field(default_factory=OrderedDict)  # digest -> step
    kept: dict[int, int] = field(default_factory=dict)
    moves: int = 0

    def seen(self, digest: int) -> int | None:
        step = self.recent.get(digest)
        return step if step is not None else self.kept.get(digest)

    def add(self, digest: int, step: int) -> None:
        self.last = digest
        self.recent.setdefault(digest, step)
        if len(self.recent) > _RECENT:
            old, at = self.recent.popitem(last=False)
            if old % _SAMPLE == 0 and len(self.kept) < _KEPT:
                self.kept.setdefault(old, at)


class RngState:
    """Watch the generators' states for cycles (module docstring)."""

    def __init__(self) -> None:
        self._ctx: GuardContext | None = None
        self._key = b""
        self._loader: Any = None
        self._hist: dict[str, _History] = {}
        self._reseeds: list[tuple[int, str, Any]] = []  # (step, kind, value) from __main__
        self._installed: list[tuple[type, Any, Any]] = []
        self._pid = os.getpid()

    def attach(self, ctx: GuardContext) -> None:
        self._ctx = ctx
        self._pid = os.getpid()
        self._key = hashlib.blake2b(bytes(ctx.key), digest_size=32).digest()
        self._loader = ctx.dataloader
        self.observe(ctx, ctx.current_step)
        self._install()

    def main_reseed(self, step: int, kind: str, value: Any) -> None:
        """The job's own script reseeded ``kind`` (``torch``/``cuda``...) at ``step``."""
        self._reseeds.append((step, kind, value))
        del self._reseeds[:-64]

    def observe(self, ctx: GuardContext, step: int, where: str = "optimizer step") -> None:
        for name, gen in self._generators():
            digest = self._digest(gen)
            if digest is None:
                continue
            hist = self._hist.setdefault(name, _History())
            if digest == hist.last:
                continue
            earlier = hist.seen(digest)
            hist.moves += 1
            if earlier is not None and not ctx.is_authorized:
                self._cycle(ctx, name, earlier, step, where)
            hist.add(digest, step)

    def rebaseline(self, ctx: GuardContext) -> None:
        """An authorized block ended (a checkpoint's RNG state restored): start afresh."""
        if self._hist:
            ctx.event("rng.state_history_reset", {"generators": sorted(self._hist)})
        self._hist.clear()
        self._reseeds.clear()
        self.observe(ctx, ctx.current_step)

    def close(self, ctx: GuardContext) -> None:
        for cls, original, wrapper in reversed(self._installed):
            if cls.__dict__.get("__iter__") is wrapper:
                type.__setattr__(cls, "__iter__", original)
            else:
                ctx.event("rng.restore_skipped", {"name": f"{cls.__qualname__}.__iter__"})
            unregister_own_wrapper(wrapper)
        self._installed.clear()
        self._ctx = None

    # -- judging ----------------------------------------------------------------------------

    def _cycle(self, ctx: GuardContext, name: str, earlier: int, step: int, where: str) -> None:
        kinds = {"cpu": ("torch",)}.get(name, ("torch", "cuda") if name[:5] == "cuda:" else ())
        seeds = [(s, v) for s, k, v in self._reseeds if k in kinds and s >= earlier]
        evidence = {"generator": name, "first_seen_step": earlier, "step": step,
                    "observed_at": where}  # fmt: skip
        if seeds:
            values = sorted({repr(v) for _, v in seeds})
            ctx.emit(
                Rule.RNG_RESEED,
                Severity.MEDIUM,
                f"the {name} generator is back in the state it had at step {earlier} (at "
                f"step {step}): the job's own script reseeds it with a seed it used before "
                f"({', '.join(values)}), so every epoch replays the same random stream "
                "(dropout masks, shuffling); seed with seed + epoch instead",
                where=f"rng_state.{name}",
                evidence={**evidence, "main_reseeds": [[s, repr(v)] for s, v in seeds]},
                step=step,
            )
            return
        ctx.emit(
            Rule.RNG_RESEED,
            Severity.HIGH,
            f"the {name} generator is back in the state it had at step {earlier} (at step "
            f"{step}, {where}): its state was put back, so random draws (dropout, data "
            "order) repeat; no seed changed",
            where=f"rng_state.{name}",
            evidence=evidence,
            step=step,
        )

    def _digest(self, gen: Any) -> int | None:
        try:
            state = gen.get_state()
        except (RuntimeError, AttributeError):
            return None
        raw = state.numpy().tobytes() if state.device.type == "cpu" else bytes(state.tolist())
        return int.from_bytes(hashlib.blake2b(raw, key=self._key, digest_size=8).digest(), "big")

    def _generators(self) -> list[tuple[str, Any]]:
        torch = sys.modules.get("torch")
        if torch is None:
            return []
        out: list[tuple[str, Any]] = [("cpu", torch.default_generator)]
        cuda = sys.modules.get("torch.cuda")
        if cuda is not None and cuda.is_initialized():
            out += [(f"cuda:{i}", g) for i, g in enumerate(cuda.default_generators)]
        seen = {id(g) for _, g in out}
        loader = self._loader
        sampler = getattr(loader, "sampler", None)
        inner = getattr(getattr(loader, "batch_sampler", None), "sampler", None)
        for name, owner in (("dataloader", loader), ("sampler", sampler), ("sampler", inner)):
            gen = getattr(owner, "generator", None) if owner is not None else None
            if isinstance(gen, torch.Generator) and id(gen) not in seen:
                seen.add(id(gen))
                out.append((f"{name}.generator", gen))
        return out

    # -- the loader's passes ----------------------------------------------------------------

    def _install(self) -> None:
        loader = self._loader
        if loader is None:
            return
        owner = next((c for c in type(loader).__mro__ if "__iter__" in c.__dict__), None)
        original = None if owner is None else owner.__dict__["__iter__"]
        if owner is None or not isinstance(original, types.FunctionType):
            return
        wrapper = self._wrap(original)
        register_own_wrapper(original, wrapper)
        type.__setattr__(owner, "__iter__", wrapper)
        self._installed.append((owner, original, wrapper))

    def _wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        state = self

        @functools.wraps(original)
        def loader_pass_recorder(loader: Any, *args: Any, **kwargs: Any) -> Any:
            ctx = state._ctx
            if ctx is not None and loader is state._loader and os.getpid() == state._pid:
                state.observe(ctx, ctx.last_step + 1, "the start of a pass over the data")
            return original(loader, *args, **kwargs)

        return loader_pass_recorder


def caller(skip: str) -> types.FrameType | None:
    """The first frame on the stack whose code is not in the file ``skip``."""
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename in (skip, __file__):
        frame = frame.f_back
    return frame


def main_script_frame(frame: types.FrameType | None) -> bool:
    """``frame`` runs code of the ``__main__`` script (module docstring)."""
    if frame is None:
        return False
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    if not path:
        return False
    real = os.path.realpath(path)
    if os.path.realpath(frame.f_code.co_filename) != real:
        return False
    try:
        stamp = os.stat(real).st_mtime
    except OSError:
        return False
    codes = _MAIN_CODES.get((real, stamp))
    if codes is None:
        try:
            with open(real, "rb") as fh:
                top = compile(fh.read(), frame.f_code.co_filename, "exec", dont_inherit=True)
        except (OSError, SyntaxError, ValueError):
            return False
        found: set[types.CodeType] = set()
        stack = [top]
        while stack:
            code = stack.pop()
            found.add(code)
            stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        codes = _MAIN_CODES[(real, stamp)] = frozenset(found)
    return frame.f_code in codes
