"""FSDP on CPU processes (gloo), for tests and debugging of sharded runs without GPUs.

`accelerate launch` with an FSDP config sets `ACCELERATE_USE_FSDP` and the `FSDP_*` variables, but accelerate (1.15)
turns them into FSDP only on accelerator devices: processes started with `--use_cpu true` silently become plain
data parallel (`MULTI_CPU`). torch's `fully_shard` itself runs on CPU tensors over gloo, so `DreamLLMTrainer` calls
`enable_fsdp_on_cpu` right after its accelerator is created, before anything is prepared:

    accelerate launch --config_file train/accelerate_configs/fsdp2.yaml --num_processes 2 --mixed_precision no \
        -m train --stage igpt --use_cpu true --bf16 false --activation_checkpointing false ...
"""

from __future__ import annotations

import os

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin


def fsdp_requested() -> bool:
    """Whether `accelerate launch` was given an FSDP config (it exports `ACCELERATE_USE_FSDP=true`)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def enable_fsdp_on_cpu(accelerator: Accelerator) -> bool:
    """Switch a multi-process CPU accelerator to the FSDP plugin of the launch config; returns whether it did.

    A no-op on GPUs (accelerate already uses FSDP there), in single processes, and without an FSDP launch config.
    """
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or not fsdp_requested():
        return False
    plugin = FullyShardedDataParallelPlugin()  # read from the FSDP_* variables, as accelerate does on GPUs
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


__all__ = ["enable_fsdp_on_cpu", "fsdp_requested"]
