"""The sabotage drill: a tiny real training job, and the attacks run against it.

``trainguard.drill.job`` is the victim (an ordinary guarded training script),
``trainguard.drill.model`` its ``TinyGPT`` and ``trainguard.drill.data`` its generated
corpus. Importing this package imports nothing else, so the drill's command line can list
attacks without importing torch; the job's names resolve on first use.
"""

from __future__ import annotations

import importlib
import typing as _typing

__all__ = ["GPTConfig", "JobArgs", "JobHooks", "JobResult", "JobState", "TinyGPT", "train"]

_LAZY = {
    "GPTConfig": "trainguard.drill.model",
    "TinyGPT": "trainguard.drill.model",
    "JobArgs": "trainguard.drill.job",
    "JobHooks": "trainguard.drill.job",
    "JobResult": "trainguard.drill.job",
    "JobState": "trainguard.drill.job",
    "train": "trainguard.drill.job",
}

if _typing.TYPE_CHECKING:
    from trainguard.drill.job import JobArgs, JobHooks, JobResult, JobState, train
    from trainguard.drill.model import GPTConfig, TinyGPT


def __getattr__(name: str) -> _typing.Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainguard.drill' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
