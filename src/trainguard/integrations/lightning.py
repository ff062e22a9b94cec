"""``TrainguardCallback``: the runtime guard inside a Lightning ``Trainer``.

::

    trainer = L.Trainer(..., callbacks=[TrainguardCallback(ledger="runs/ledger")])
    trainer.fit(model)         # GuardStopped propagates out when ``stop_on`` is reached

Built on ``lightning.pytorch.Callback``; where only the standalone ``pytorch_lightning``
distribution is installed, on its ``Callback`` instead (Lightning calls callbacks by
their hook names, so the class also works in the other package's ``Trainer``).

The callback is an adapter, no check logic lives here. The framework facts it relies on:

* ``on_train_start`` runs after ``fit(ckpt_path=...)`` restored the weights, optimizer and
  scheduler (Lightning restores no RNG state), so the guard baselines the loaded state.
* Lightning calls ``on_train_batch_end`` for every micro-batch, after the optimizer and
  ``interval="step"`` scheduler step of that batch. With gradient accumulation only some
  batches end with an optimizer step; ``trainer.global_step`` counts optimizer steps, so
  the guard is stepped exactly when it moved (the guard counts the optimizer's steps
  itself through its hooks, so a step Lightning skips is never mistaken for one).
* In automatic optimization ``outputs["loss"]`` is the batch loss divided by
  ``accumulate_grad_batches``: the sum over the batches of one optimizer step is that
  step's mean loss. The sum stays a tensor until the step, one ``float()`` per step.
* A failed ``fit()`` calls ``on_exception`` and not ``on_train_end``: both close the guard.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from trainguard.errors import ConfigError
from trainguard.findings import Severity
from trainguard.guard import DEFAULT_EVERY, Guard
from trainguard.guard.wrapped import unwrap_optimizer

if TYPE_CHECKING:
    from lightning.pytorch import Callback as _Callback
else:

    def _callback_base() -> type:
        for package in ("lightning.pytorch", "pytorch_lightning"):
            try:
                return importlib.import_module(package).Callback  # type: ignore[no-any-return]
            except ImportError:
                continue
        raise ImportError(
            "trainguard.integrations.lightning needs Lightning: pip install 'trainguard[lightning]'"
        )

    _Callback = _callback_base()

__all__ = ["TrainguardCallback"]


class TrainguardCallback(_Callback):
    """Start a ``Guard`` when training starts and step it after every optimizer step.

    ``ledger`` (a folder, existing or new, or an open ``Ledger``), ``every``, ``key`` and
    ``stop_on`` go to ``Guard`` as they are, and so does every other keyword
    (``checks=``, ``on_alert=``, ``process=``...). ``guard`` is the running guard (``None``
    before training starts); it stays readable after training ends, for its ``alerts``.
    With several optimizers (manual optimization) the first one is guarded and the
    others are recorded in the ledger as unguarded.
    """

    def __init__(
        self,
        ledger: str | os.PathLike[str] | Any = None,
        every: int = DEFAULT_EVERY,
        key: bytes | None = None,
        stop_on: Severity | str | None = None,
        **guard_kwargs: Any,
    ) -> None:
        super().__init__()
        if every < 1:
            raise ConfigError(f"every must be at least 1, got {every}")
        self.ledger = ledger
        self.every = every
        self.key = key
        self.stop_on = stop_on
        self.guard_kwargs = guard_kwargs
        self.guard: Guard | None = None
        self._global_step = 0
        self._loss: Any = None
        self._batches = 0

    # -- Lightning hooks ---------------------------------------------------------------

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.close()  # a previous fit() that never reached on_train_end
        optimizers = list(trainer.optimizers)
        if not optimizers:
            raise ConfigError("trainguard: the LightningModule configured no optimizer to guard")
        self.guard = Guard(
            pl_module,
            optimizers[0],  # a LightningOptimizer or the torch one: Guard unwraps it
            scheduler=_schedulers_of(trainer, optimizers[0]),
            dataloader=_dataloader_of(trainer),
            ledger=self.ledger,
            every=self.every,
            key=self.key,
            stop_on=self.stop_on,
            **{"start_step": int(trainer.global_step), **self.guard_kwargs},
        )
        self._global_step = int(trainer.global_step)
        self._loss, self._batches = None, 0
        self.guard.event(
            "integration.lightning",
            {
                "global_step": self._global_step,
                "accumulate_grad_batches": int(getattr(trainer, "accumulate_grad_batches", 1)),
                "automatic_optimization": bool(getattr(pl_module, "automatic_optimization", True)),
                "unguarded_optimizers": [type(o).__name__ for o in optimizers[1:]],
            },
        )

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.guard is None:
            return
        loss = _loss_of(outputs)
        if loss is not None:
            self._loss = loss if self._loss is None else self._loss + loss
            self._batches += 1
        step = int(trainer.global_step)
        if step == self._global_step:
            return  # accumulating: no optimizer step on this batch
        self._global_step = step
        total, batches = self._loss, self._batches
        self._loss, self._batches = None, 0
        if total is not None and not getattr(pl_module, "automatic_optimization", True):
            total = total / batches  # manual optimization: losses are not pre-divided
        self.guard.step(loss=total)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.close()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self.close()

    # -- ours --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the guard (idempotent)."""
        if self.guard is not None:
            self.guard.close()


def _schedulers_of(trainer: Any, optimizer: Any) -> Any:
    """The schedulers configured for the guarded optimizer: one, a tuple of several (the
    guard follows their composed learning rate), or ``None``. Lightning steps each per its
    ``interval``/``frequency``; the checks follow the schedulers' own ``step`` calls."""
    inner = unwrap_optimizer(optimizer).value
    found = [
        config.scheduler
        for config in getattr(trainer, "lr_scheduler_configs", None) or ()
        if getattr(getattr(config, "scheduler", None), "optimizer", None) in (optimizer, inner)
    ]
    return found[0] if len(found) == 1 else tuple(found) or None


def _dataloader_of(trainer: Any) -> Any:
    """The training DataLoader when there is exactly one (a dict or list of loaders is a
    combined stream whose order the data check cannot predict: it then sees none)."""
    loader = getattr(trainer, "train_dataloader", None)
    return loader if hasattr(loader, "batch_sampler") or hasattr(loader, "sampler") else None


def _loss_of(outputs: Any) -> Any:
    value = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
    if value is None or not hasattr(value, "detach"):
        return None
    value = value.detach()
    return value if value.numel() == 1 else None
