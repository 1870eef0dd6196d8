"""Write a state dict as size-capped safetensors shards, one shard in memory at a time.

Shards follow the transformers/diffusers naming: one file `<name>.safetensors` when everything fits, otherwise
`<name>-00001-of-0000N.safetensors` plus `<name>.safetensors.index.json`.

    >>> write_safetensors_shards(folder, planned_tensors, torch.bfloat16, "model", max_shard_bytes=2 * 10**9)
    ['model-00001-of-00007.safetensors', ...]
"""

import json
import math
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from train.convert_original_keys import PlannedTensor


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def parse_size(text: str | int) -> int:
    """'2GB' / '500MB' / '2e9' / 2000000000 -> bytes (decimal units, as transformers' `max_shard_size`)."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            return int(float(upper[: -len(unit)]) * factor)
    return int(float(upper))


def group_into_shards(
    tensors: list[PlannedTensor], dtype: torch.dtype, max_shard_bytes: int
) -> list[list[PlannedTensor]]:
    """Greedy, order-preserving grouping by output size; a tensor larger than the cap gets a shard of its own."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards, current, current_bytes = [], [], 0
    for planned in tensors:
        size = math.prod(planned.shape) * itemsize
        if current and current_bytes + size > max_shard_bytes:
            shards.append(current)
            current, current_bytes = [], 0
        current.append(planned)
        current_bytes += size
    if current:
        shards.append(current)
    return shards


def write_safetensors_shards(
    folder: Path, tensors: list[PlannedTensor], dtype: torch.dtype, name: str, max_shard_bytes: int
) -> list[str]:
    """Write `tensors` (in this order) under `folder`; returns the file names written."""
    shards = group_into_shards(tensors, dtype, max_shard_bytes)
    if len(shards) == 1:
        file_names = [f"{name}.safetensors"]
    else:
        file_names = [f"{name}-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
    weight_map, total_size = {}, 0
    for file_name, shard in zip(file_names, shards, strict=True):
        state, storages = {}, set()
        for planned in shard:
            tensor = planned.load(dtype)
            # safetensors refuses tensors sharing memory (tied or viewed storage in a pickle): give each its own.
            pointer = tensor.untyped_storage().data_ptr()
            if pointer in storages:
                tensor = tensor.clone()
            storages.add(tensor.untyped_storage().data_ptr())
            state[planned.key] = tensor
            weight_map[planned.key] = file_name
            total_size += tensor.numel() * tensor.element_size()
        save_file(state, str(folder / file_name), metadata={"format": "pt"})
        os.chmod(folder / file_name, 0o666 & ~_umask())  # safetensors creates 0600 files; match the other files
        del state  # drop this shard's converted copies before the next one
    if len(shards) > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (folder / f"{name}.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return file_names


__all__ = ["parse_size", "group_into_shards", "write_safetensors_shards"]
