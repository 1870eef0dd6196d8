"""Write a state dict as size-capped safetensors shards, one shard in memory at a time; the split is
`huggingface_hub.split_torch_state_dict_into_shards`, the one transformers and diffusers use.

Shards follow the transformers/diffusers naming: one file `<name>.safetensors` when everything fits, otherwise
`<name>-00001-of-0000N.safetensors` plus `<name>.safetensors.index.json`.

    >>> write_safetensors_shards(folder, planned_tensors, torch.bfloat16, "model", max_shard_size="2GB")
    ['model-00001-of-00007.safetensors', ...]
"""

import json
import os
from pathlib import Path

import torch
from huggingface_hub import StateDictSplit, split_torch_state_dict_into_shards
from safetensors.torch import save_file

from train.convert.keys import PlannedTensor


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def plan_shards(
    tensors: list[PlannedTensor], dtype: torch.dtype, name: str, max_shard_size: int | str
) -> StateDictSplit:
    """huggingface_hub's own split (order-preserving; a tensor over the cap gets a shard of its own), computed on meta
    tensors of the output shapes, so nothing is loaded to plan it."""
    shapes = {planned.key: torch.empty(planned.shape, dtype=dtype, device="meta") for planned in tensors}
    return split_torch_state_dict_into_shards(
        shapes, filename_pattern=name + "{suffix}.safetensors", max_shard_size=max_shard_size
    )


def write_safetensors_shards(
    folder: Path, tensors: list[PlannedTensor], dtype: torch.dtype, name: str, max_shard_size: int | str
) -> list[str]:
    """Write `tensors` (in this order) under `folder`; returns the file names written. `max_shard_size`: bytes or
    "2GB" / "500MB" (decimal units, as transformers' and huggingface_hub's)."""
    split = plan_shards(tensors, dtype, name, max_shard_size)
    planned_by_key = {planned.key: planned for planned in tensors}
    total_size = 0
    for file_name, keys in split.filename_to_tensors.items():
        state, storages = {}, set()
        for key in keys:
            tensor = planned_by_key[key].load(dtype)
            # safetensors refuses tensors sharing memory (tied or viewed storage in a pickle): give each its own.
            pointer = tensor.untyped_storage().data_ptr()
            if pointer in storages:
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
            state[key] = tensor
            total_size += tensor.numel() * tensor.element_size()
        save_file(state, str(folder / file_name), metadata={"format": "pt"})
        os.chmod(folder / file_name, 0o666 & ~_umask())  # safetensors creates 0600 files; match the other files
        del state  # drop this shard's converted copies before the next one
    if split.is_sharded:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (folder / f"{name}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return list(split.filename_to_tensors)


__all__ = ["plan_shards", "write_safetensors_shards"]
