"""Checks of saved folders before training reads them: a model folder's weights complete and readable, and a
checkpoint holding everything an exact resume needs. Each problem is an `InputError` naming the file and what is
wrong with it, instead of a library error, a silently re-initialised tensor or a resumed run that diverges.

    names = check_model_folder("runs/igpt")                      # tensor names of its weights
    check_resumable("runs/sft/checkpoint-400", expected=names)   # InputError: ... optimizer.pt is missing ...

Only headers are read: safetensors headers (which also tell a cut-short file) and the zip directory at the end of
`torch.save` files (gone when the file is truncated).
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers.trainer import OPTIMIZER_NAME, SCHEDULER_NAME, TRAINER_STATE_NAME
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME

from train.errors import InputError


def safetensors_names(path: str | Path) -> set[str]:
    """The tensor names of one safetensors file (header only); a missing, cut-short or damaged file is an error."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return set(handle.keys())
    except FileNotFoundError as error:
        raise InputError(f"{path} is missing") from error
    except (SafetensorError, OSError) as error:
        raise InputError(f"{path} is damaged or truncated ({error}); save or copy it again") from error


def weight_names(folder: str | Path) -> set[str]:
    """The tensor names of a folder's weights: `model.safetensors`, or the shards its index names (each a file of
    the folder itself)."""
    folder = Path(folder)
    index = folder / SAFE_WEIGHTS_INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise InputError(f"{index} is not a valid safetensors index ({error!r})") from error
        outside = [name for name in files if not isinstance(name, str) or os.path.basename(name) != name]
        if outside:
            raise InputError(f"{index} names shards outside {folder}: {outside[:3]}")
        return set().union(*(safetensors_names(folder / name) for name in files))
    if not (folder / SAFE_WEIGHTS_NAME).is_file():
        raise InputError(
            f"{folder} has no {SAFE_WEIGHTS_NAME} (nor {SAFE_WEIGHTS_INDEX_NAME}): not a complete DreamLLM folder"
        )
    return safetensors_names(folder / SAFE_WEIGHTS_NAME)


def check_model_folder(folder: str | Path, option: str = "--model_name_or_path") -> set[str]:
    """A DreamLLM folder to start from: a folder with a readable `config.json` and whole weights; returns their
    tensor names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{option} {folder}: no such folder; build one with `python -m train.assemble` or convert a "
                         "release with `python -m train.convert`")
    try:
        json.loads((folder / "config.json").read_text())
    except FileNotFoundError as error:
        raise InputError(f"{option} {folder}: not a DreamLLM folder (no config.json)") from error
    except (ValueError, OSError) as error:
        raise InputError(f"{option} {folder}: config.json is not valid JSON ({error})") from error
    return weight_names(folder)


def _torch_file_problem(path: Path) -> str | None:
    """Why a `torch.save` file cannot be loaded as a whole, or None: missing, or without its zip directory."""
    if not path.is_file():
        return f"{path.name} is missing"
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError) as error:
        return f"{path.name} is damaged or truncated ({error})"


def check_resumable(
    checkpoint: str | Path,
    expected: set[str] | None = None,
    *,
    rng_file: str = "rng_state.pth",
    optimizer_files: bool = True,
    adapter: bool = False,
) -> None:
    """Everything an exact resume from `checkpoint` reads is there and whole: the trainer state, the weights (with
    every tensor of `expected`), the optimizer and scheduler state (`optimizer_files`; DeepSpeed and FSDP keep
    their own), this process's RNG state and, for LoRA runs, the adapter (the checkpoint itself, or its `adapter/`
    beside merged weights). All problems are named at once."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise InputError(f"--resume_from_checkpoint {checkpoint}: no such checkpoint folder")
    problems = []
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except FileNotFoundError:
        problems.append(f"{TRAINER_STATE_NAME} is missing")
    except (ValueError, OSError) as error:
        problems.append(f"{TRAINER_STATE_NAME} is damaged ({error})")
    adapter_only = adapter and (checkpoint / "adapter_config.json").is_file()
    try:
        missing = [] if adapter_only else sorted((expected or set()) - weight_names(checkpoint))
        if missing:
            problems.append(f"its weights lack {len(missing)} tensors ({', '.join(missing[:3])}, ...)")
    except InputError as error:
        problems.append(str(error))
    if adapter:
        try:
            safetensors_names(checkpoint / ("" if adapter_only else "adapter") / "adapter_model.safetensors")
        except InputError as error:
            problems.append(str(error))
    names = [OPTIMIZER_NAME, SCHEDULER_NAME] if optimizer_files else []
    problems += [problem for name in names + [rng_file] if (problem := _torch_file_problem(checkpoint / name))]
    if problems:
        raise InputError(
            f"cannot resume exactly from {checkpoint}: {'; '.join(problems)}. Resume from an earlier checkpoint, "
            "or start a new run from a complete model folder"
        )


__all__ = ["check_model_folder", "check_resumable", "safetensors_names", "weight_names"]
