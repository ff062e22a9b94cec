"""Hugging Face training metadata (``training_args.bin`` and friends): dataclasses and enums."""

from __future__ import annotations

from trainguard.scan.allowlists._base import ALL, REF_NEW, add

__all__: list[str] = []

add(
    "transformers.training_args.* transformers.trainer_utils.* transformers.utils.generic.* "
    "transformers.trainer_pt_utils.* transformers.debug_utils.* "
    "accelerate.utils.dataclasses.* accelerate.state.*",
    REF_NEW,
    "Hugging Face training-arguments dataclass or enum",
)
add(
    "transformers.training_args.OptimizerNames transformers.trainer_utils.IntervalStrategy "
    "transformers.trainer_utils.SaveStrategy transformers.trainer_utils.HubStrategy "
    "transformers.trainer_utils.SchedulerType transformers.trainer_utils.FSDPOption "
    "transformers.utils.generic.ExplicitEnum transformers.utils.generic.PaddingStrategy "
    "transformers.debug_utils.DebugOption accelerate.utils.dataclasses.DistributedType "
    "transformers.trainer_pt_utils.AcceleratorConfig transformers.training_args.ParallelMode",
    ALL,
    "Hugging Face enum looked up by value",
)
