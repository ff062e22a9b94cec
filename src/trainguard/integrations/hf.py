"""``TrainguardCallback``: the runtime guard inside a Hugging Face ``Trainer``.

::

    trainer = Trainer(..., callbacks=[TrainguardCallback(ledger="runs/ledger")])
    trainer.train()            # GuardStopped propagates out when ``stop_on`` is reached

The callback is an adapter, no check logic lives here. What it has to get right is the
framework's plumbing:

* accelerate wraps the optimizer and the scheduler (``AcceleratedOptimizer``,
  ``AcceleratedScheduler``). ``Guard`` unwraps them itself (``trainguard.guard.wrapped``)
  and hooks the real torch optimizer underneath, so a step that accelerate skips (an fp16
  overflow) is not seen as a step, and it predicts the learning rate from the real
  scheduler.
* ``Trainer.train(resume_from_checkpoint=...)`` loads the weights, the optimizer and the
  scheduler *before* ``on_train_begin`` (the guard baselines the loaded state), but the
  RNG state only *after* it, at the start of the first epoch it runs (``_load_rng_state``
  in ``Trainer._run_epoch``). On a resumed run the callback therefore keeps the guard in
  an ``authorized("resume")`` window from ``on_train_begin`` to the first
  ``on_step_begin``: the trainer's own restore is recorded as an event, never an alarm.
* The loss of a step is only known to callbacks through ``on_log``, which runs after
  ``on_step_end``; the guard gets the latest logged training loss (the mean over the
  logging window) with the step after it was logged, and ``None`` on other steps. It
  costs nothing, and the anomaly statistics need no more.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from trainguard.errors import ConfigError, GuardStopped
from trainguard.findings import Severity
from trainguard.guard import DEFAULT_EVERY, Guard

__all__ = ["TrainguardCallback"]


class TrainguardCallback(TrainerCallback):
    """Start a ``Guard`` when training begins and step it after every optimizer step.

    ``ledger`` (a folder, existing or new, or an open ``Ledger``), ``every``, ``key`` and
    ``stop_on`` go to ``Guard`` as they are, and so does every other keyword
    (``checks=``, ``on_alert=``, ``process=``...). ``guard`` is the running guard (``None``
    before training begins); it stays readable after training ends, for its ``alerts``.
    """

    def __init__(
        self,
        ledger: str | os.PathLike[str] | Any = None,
        every: int = DEFAULT_EVERY,
        key: bytes | None = None,
        stop_on: Severity | str | None = None,
        **guard_kwargs: Any,
    ) -> None:
        if every < 1:
            raise ConfigError(f"every must be at least 1, got {every}")
        self.ledger = ledger
        self.every = every
        self.key = key
        self.stop_on = stop_on
        self.guard_kwargs = guard_kwargs
        self.guard: Guard | None = None
        self._loss: float | None = None
        self._resume: contextlib.ExitStack | None = None

    # -- Trainer events ----------------------------------------------------------------

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self.close()  # a previous train() that ended in an exception left its guard open
        optimizer = kwargs.get("optimizer")
        if optimizer is None:
            raise ConfigError("trainguard: the Trainer passed no optimizer to guard")
        self._loss = None
        self.guard = Guard(
            kwargs.get("model"),
            optimizer,
            scheduler=kwargs.get("lr_scheduler"),
            dataloader=kwargs.get("train_dataloader"),
            ledger=self.ledger,
            every=self.every,
            key=self.key,
            stop_on=self.stop_on,
            **{"start_step": int(state.global_step), **self.guard_kwargs},
        )
        self.guard.event(
            "integration.hf",
            {"global_step": int(state.global_step), "max_steps": int(state.max_steps)},
        )
        if state.global_step > 0:
            # Resumed: the trainer restores the RNG state after this event (see above).
            self._resume = contextlib.ExitStack()
            self._resume.enter_context(
                self.guard.authorized(f"resume from checkpoint at step {state.global_step}")
            )

    def on_step_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self._end_resume()

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.guard is None:
            return
        self._end_resume()
        loss, self._loss = self._loss, None
        try:
            self.guard.step(loss=loss)
        except GuardStopped:
            self.close()
            raise

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if logs and "loss" in logs:
            try:
                self._loss = float(logs["loss"])
            except (TypeError, ValueError):
                self._loss = None

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self.close()

    # -- ours --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the guard (idempotent). Training that raised out of ``optimizer.step()``
        (``GuardStopped`` from a hook, or any error of the job) skips ``on_train_end``;
        call this then, or let the next ``train()`` do it."""
        self._end_resume()
        if self.guard is not None:
            self.guard.close()

    def _end_resume(self) -> None:
        if self._resume is not None:
            resume, self._resume = self._resume, None
            resume.close()
