"""Red-team attacks on state the update formula does not cover: module buffers and
attributes, a frozen parameter, optimizer and scheduler state, the data, the RNG, the
guard's authorization, and forged signals; plus the basic weight and LR edits.

Each is an ``Attack`` of ``sabotage_kit``. What they trust: that the kit's job keeps one
``Job`` for the whole run (its dataset, loader, optimizer and scheduler objects are the
ones the guard was given) and that its SIGUSR1 handler only counts signals, so a forged
signal is harmless. Noise comes from a private generator.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import sys
import textwrap
import types
from typing import Any

import torch
from sabotage_kit import Attack, Job
from torch.utils.data import default_collate

__all__ = ["ATTACKS"]

MONKEY = "runtime.monkeypatch"
WEIGHT = "runtime.weight_tamper"
UPDATE = "runtime.update_mismatch"
OPTIM = "runtime.optimizer_tamper"
RNG = "runtime.rng_reseed"
ORDER = "runtime.data_order"
CONTENT = "runtime.data_content"
AUTH = "guard.authorization"
SIGNAL = "process.signal"
STATE = (WEIGHT, MONKEY)
OPT_STATE = (OPTIM, UPDATE)
DATA = (CONTENT, ORDER, MONKEY)
_GEN = torch.Generator().manual_seed(777)
SYS_RT_SIGQUEUEINFO = 129  # x86_64
SI_USER, SI_QUEUE = 0, -1


# -- model state ----------------------------------------------------------------------


def mask_ones(job: Job) -> None:
    job.model.blocks[0].attn.mask.fill_(1.0)  # attention sees the future


def dropout_off(job: Job) -> None:
    job.model.drop.p = 0.0


def dropout_high(job: Job) -> None:
    job.model.blocks[1].mlp[3].p = 0.9


def dropout_eval(job: Job) -> None:
    job.model.blocks[0].attn.drop.eval()


def layernorm_eps(job: Job) -> None:
    job.model.blocks[0].ln1.eps = 1.0


def frozen_edited(job: Job) -> None:
    job.model.pos.data.add_(0.1)


def param_rebound(job: Job) -> None:
    """The module gets a new Parameter; the optimizer (and the guard) keep the old one."""
    old = job.model.ln_f.weight
    job.model.ln_f.weight = torch.nn.Parameter(old.detach() + 0.1)


# -- optimizer and scheduler state ----------------------------------------------------


def _state(job: Job) -> dict[str, Any]:
    state: dict[str, Any] = job.opt.state[job.model.blocks[0].mlp[0].weight]
    return state


def exp_avg(job: Job) -> None:
    _state(job)["exp_avg"].add_(0.01)


def exp_avg_sq(job: Job) -> None:
    _state(job)["exp_avg_sq"].mul_(0.01)


def step_count(job: Job) -> None:
    _state(job)["step"] += 100


def lr_edit(job: Job) -> None:
    job.opt.param_groups[0]["lr"] *= 3


def weight_decay_edit(job: Job) -> None:
    job.opt.param_groups[0]["weight_decay"] = 0.0


def _after_opt(fn: Any) -> Any:
    def install(job: Job) -> None:
        job.after_opt(job.step, fn)  # before this step's scheduler.step()

    return install


def base_lrs(job: Job) -> None:
    job.sched.base_lrs = [lr * 10 for lr in job.sched.base_lrs]


def lr_lambda(job: Job) -> None:
    job.sched.lr_lambdas[0] = lambda e: 5.0


def last_epoch(job: Job) -> None:
    job.sched.last_epoch += 100


# -- data -----------------------------------------------------------------------------


def collate_permuted(job: Job) -> None:
    """Takes effect when the next epoch's iterator is made (step 7)."""

    def collate(batch: Any) -> Any:
        x, y = default_collate(batch)
        return x, y[torch.randperm(len(y), generator=_GEN)]

    job.loader.collate_fn = collate


def tensors_edited(job: Job) -> None:
    labels = job.dataset.tensors[1]
    labels.copy_((labels + 1) % 32)


def tensors_rebound(job: Job) -> None:
    x, y = job.dataset.tensors
    job.dataset.tensors = (x, (y + 1) % 32)


def getitem_patched(job: Job) -> None:
    cls = torch.utils.data.TensorDataset
    original: Any = cls.__getitem__

    def getitem(self: Any, index: Any) -> Any:
        x, y = original(self, index)
        return x, (y + 1) % 32

    cls.__getitem__ = getitem  # type: ignore[method-assign]


# -- RNG ------------------------------------------------------------------------------


def rng_state_each_epoch(job: Job) -> None:
    saved = torch.get_rng_state()
    job.on_epoch(lambda j: torch.set_rng_state(saved))


def generator_state_each_epoch(job: Job) -> None:
    saved = torch.default_generator.get_state()
    job.on_epoch(lambda j: torch.default_generator.set_state(saved))


def loader_generator_each_epoch(job: Job) -> None:
    gen = job.loader_gen
    assert gen is not None
    saved = gen.get_state()
    job.on_epoch(lambda j: gen.set_state(saved))


def _library_module(name: str, src: str) -> types.ModuleType:
    """A module that looks installed: its code claims a site-packages file."""
    site = os.path.dirname(os.path.dirname(torch.__file__))
    module = types.ModuleType(name)
    module.__file__ = os.path.join(site, *name.split(".")) + ".py"
    exec(compile(textwrap.dedent(src), module.__file__, "exec"), module.__dict__)
    sys.modules[name] = module
    return module


def seed_from_library(job: Job) -> None:
    lib = _library_module(
        "fastdata.utils", "import torch\ndef seed_worker():\n    torch.manual_seed(0)\n"
    )
    lib.seed_worker()


def seed_as_entry_script(job: Job) -> None:
    """The reseed's code claims the entry script's file, as the script's own would."""
    main = sys.modules["__main__"]
    path = getattr(main, "__file__", None) or "<stdin>"
    scope: dict[str, Any] = {"torch": torch}
    exec(compile("def reseed():\n    torch.manual_seed(0)\n", path, "exec"), scope)
    scope["reseed"]()


def authorized_from_library(job: Job) -> None:
    lib = _library_module(
        "fastckpt.restore",
        """
        import torch
        def restore(guard, model):
            with guard.authorized("restore"):
                with torch.no_grad():
                    model.head.weight.add_(0.01)
        """,
    )
    lib.restore(job.guard, job.model)


# -- signals --------------------------------------------------------------------------


def _forged_sigusr1(code: int, pid: int = 1, uid: int = 0, *, quiet: bool = False) -> None:
    """rt_sigqueueinfo to ourselves: the kernel lets a process forge si_pid/si_uid (and
    any si_code) in signals it sends itself. ``quiet`` calls libc through the handle
    ctypes opened at import (``pythonapi``) instead of a new ``dlopen``."""
    info = ctypes.create_string_buffer(128)
    struct.pack_into("iii", info, 0, signal.SIGUSR1, 0, code)
    struct.pack_into("ii", info, 16, pid, uid)
    libc: Any = ctypes.pythonapi if quiet else ctypes.CDLL(None, use_errno=True)
    got = libc.syscall(SYS_RT_SIGQUEUEINFO, os.getpid(), signal.SIGUSR1, info)
    if got != 0:
        raise OSError(ctypes.get_errno(), "rt_sigqueueinfo failed")


def signal_forged_queue(job: Job) -> None:
    _forged_sigusr1(SI_QUEUE)


def signal_forged_user(job: Job) -> None:
    _forged_sigusr1(SI_USER)


def signal_forged_quiet(job: Job) -> None:
    _forged_sigusr1(SI_USER, quiet=True)


def weights_added(job: Job) -> None:
    with torch.no_grad():
        p = job.model.blocks[1].attn.proj.weight
        p.data.add_(torch.randn(p.shape, generator=_GEN) * 1e-4)


def _at5(name: str, cls: str, rules: tuple[str, ...], fn: Any, **kw: Any) -> Attack:
    return Attack(name, cls, rules, 5, fn, **kw)


_EACH_EPOCH: dict[str, Any] = {"at": 7, "before_guard": True}
_FORGED: dict[str, Any] = {"unverified_sender": True, "watch_early": True}

ATTACKS: list[Attack] = [
    _at5("causal mask buffer ones", "model", STATE, mask_ones),
    _at5("Dropout.p = 0.0", "model", STATE, dropout_off),
    _at5("Dropout.p = 0.9", "model", STATE, dropout_high),
    _at5("Dropout.eval() on one module", "model", STATE, dropout_eval),
    _at5("LayerNorm.eps = 1.0", "model", STATE, layernorm_eps),
    _at5("frozen pos embedding edited", "model", STATE, frozen_edited),
    _at5("module Parameter rebound", "model", STATE, param_rebound),
    _at5("exp_avg edited", "optim", OPT_STATE, exp_avg),
    _at5("exp_avg_sq edited", "optim", OPT_STATE, exp_avg_sq),
    _at5("state step += 100", "optim", OPT_STATE, step_count),
    _at5("lr edited in param_groups", "basic", OPT_STATE, lr_edit),
    _at5("weight_decay edited", "optim", OPT_STATE, weight_decay_edit),
    _at5("scheduler base_lrs x10", "sched", OPT_STATE, _after_opt(base_lrs)),
    _at5("scheduler lr_lambdas[0] replaced", "sched", OPT_STATE, _after_opt(lr_lambda)),
    _at5("scheduler last_epoch += 100", "sched", OPT_STATE, _after_opt(last_epoch)),
    Attack("collate_fn permutes labels", "data", DATA, 7, collate_permuted, install=5),
    _at5("dataset tensors edited in place", "data", DATA, tensors_edited),
    _at5("dataset tensors rebound", "data", DATA, tensors_rebound),
    Attack(
        "TensorDataset.__getitem__ patched", "data", DATA, 1, getitem_patched, before_guard=True
    ),
    Attack("set_rng_state each epoch", "rng", (RNG,), fn=rng_state_each_epoch, **_EACH_EPOCH),
    Attack(
        "default_generator.set_state", "rng", (RNG,), fn=generator_state_each_epoch, **_EACH_EPOCH
    ),
    Attack(
        "loader generator set_state",
        "rng",
        (RNG, ORDER),
        fn=loader_generator_each_epoch,
        **_EACH_EPOCH,
    ).with_recipe(loader_generator=True),
    _at5("manual_seed from library module", "basic", (RNG,), seed_from_library),
    _at5("manual_seed compiled as the entry script", "rng", (RNG,), seed_as_entry_script),
    _at5("authorized() from library module", "authority", (AUTH,), authorized_from_library),
    _at5("SIGUSR1 forged si_pid (SI_QUEUE)", "signal", (SIGNAL,), signal_forged_queue, **_FORGED),
    _at5("SIGUSR1 forged si_pid (SI_USER)", "signal", (SIGNAL,), signal_forged_user, **_FORGED),
    _at5("SIGUSR1 forged SI_USER, no dlopen", "signal", (SIGNAL,), signal_forged_quiet, **_FORGED),
    _at5(
        "SIGUSR1 forged, no early watch",
        "signal",
        (SIGNAL,),
        signal_forged_queue,
        unverified_sender=True,
    ),
    _at5("p.data.add_ between steps", "basic", (WEIGHT,), weights_added),
]
