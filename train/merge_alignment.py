"""I-GPT's starting folder from the two alignment runs of the official recipe.

    python -m train merge --creation runs/alignment-creation --comprehension runs/alignment-comprehension \
        --output runs/alignment-merged

The official stage I is two independent runs from the same start, creation-only (dream queries and condition
projector train) and comprehension-only (the visual projector trains); stage II then loads `dream_embedding.bin`
and `stable_diffusion_head.bin` (dream queries; condition projector and the frozen decoder) from the creation run
and `clip_vision_embedding.bin` (the frozen CLIP and the visual projector) from the comprehension run. This does the
same with DreamLLM folders: the creation run's folder, with the comprehension run's visual projector.

The LLM is frozen in both runs, so both hold the assembled LLM unchanged: every tensor outside the three trained
modules must be equal in the two folders (so must the decoders), or they did not start from the same folder and the
merge is refused. Officially stage II reloads Vicuna and draws the new tokens' embedding rows afresh; here I-GPT
keeps the rows the stage-I queries were trained with (docs/differences.md).
"""

from __future__ import annotations

import argparse
import filecmp
import json
from pathlib import Path

import torch
from safetensors import safe_open

from modeling_dreamllm import DreamLLMForConditionalGeneration
from train.assemble import decoder_subfolders, register_auto_classes, staged_folder
from train.checkpoints import check_model_folder
from train.errors import InputError
from train.stages import load_processor
from train.trainer import complete_folder

FROM_COMPREHENSION = ("model.vision_projector.",)
FROM_CREATION = ("model.dream_queries.", "model.condition_projector.", "model.pooled_projector.")


def weight_files(folder: Path) -> list[Path]:
    """The model's safetensors files (one file, or the shards its index names)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / name for name in shards]
    single = folder / "model.safetensors"
    if not single.is_file():
        raise InputError(f"{folder} has no model.safetensors (is it a DreamLLM folder written by python -m train?)")
    return [single]


def _same_decoder(first: Path, second: Path) -> None:
    for name in decoder_subfolders(first):
        comparison = filecmp.dircmp(first / name, second / name)
        different = comparison.left_only + comparison.right_only
        different += [file for file in comparison.common_files if not filecmp.cmp(first / name / file,
                                                                                  second / name / file, shallow=False)]
        if different:
            raise InputError(f"{first} and {second} hold different decoders ({name}/: {different}); the two "
                             "alignment runs must start from the same folder")


@torch.no_grad()
def merge_alignment(creation: str | Path, comprehension: str | Path, output: str | Path) -> Path:
    """Write `output`: the `creation` folder with the `comprehension` folder's visual projector (see the module
    docstring). An `InputError` when the folders did not start from the same model; `output` must not exist."""
    creation, comprehension, output = Path(creation), Path(comprehension), Path(output)
    if output.exists():
        raise InputError(f"{output} exists; choose a new output folder")
    for folder in (creation, comprehension):
        if not (folder / "config.json").is_file():
            raise InputError(f"{folder} is not a DreamLLM folder (no config.json)")
        check_model_folder(folder)
    _same_decoder(creation, comprehension)
    model = DreamLLMForConditionalGeneration.from_pretrained(creation, dtype="auto")
    register_auto_classes(model.config)
    state = model.state_dict()
    taken = set()
    for file in weight_files(comprehension):
        with safe_open(str(file), framework="pt") as weights:
            for key in weights.keys():
                if key not in state:
                    raise InputError(f"{comprehension} holds {key}, which {creation}'s model does not have")
                tensor = weights.get_tensor(key)
                if key.startswith(FROM_COMPREHENSION):
                    state[key].copy_(tensor.to(state[key].dtype))
                    taken.add(key)
                elif not key.startswith(FROM_CREATION) and not torch.equal(tensor.to(state[key].dtype), state[key]):
                    raise InputError(
                        f"{key} differs between {creation} and {comprehension}: the two alignment runs did not "
                        "start from the same folder (or one of them trained the language model)"
                    )
    expected = {key for key in state if key.startswith(FROM_COMPREHENSION)}
    if taken != expected:
        raise InputError(f"{comprehension} lacks {sorted(expected - taken)}")
    processor = load_processor(creation)
    with staged_folder(output) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        complete_folder(staging, creation)
    return output


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(prog="python -m train merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creation", required=True, help="output folder of the --alignment creation run")
    parser.add_argument("--comprehension", required=True, help="output folder of the --alignment comprehension run")
    parser.add_argument("--output", required=True, help="new folder: I-GPT's --model_name_or_path")
    args = parser.parse_args(argv)
    folder = merge_alignment(args.creation, args.comprehension, args.output)
    print(f"I-GPT's starting folder written to {folder}")
    return folder


__all__ = ["merge_alignment", "main"]
