"""Sizes of the PEFT adapters `python -m train --lora_r R` and `python -m train dpo` save: measured by saving them on
a DreamLLM folder (checkpoints/toy), and computed for DreamLLM-7B (Vicuna-7B + CLIP ViT-L/14 + SD-2.1 condition
size, `DreamLLMConfig()`) from the same PEFT state dict built on the meta device (no weights, no memory).

    python benchmarks/adapter_sizes.py                       # markdown table (docs/training.md)
    python benchmarks/adapter_sizes.py --folder runs/igpt --ranks 8 16 64
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from peft import get_peft_model, get_peft_model_state_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_dreamllm import DreamLLMConfig  # noqa: E402
from modeling_dreamllm import DreamLLMForConditionalGeneration  # noqa: E402
from train.adapters import ADAPTER_WEIGHTS_NAME, save_adapter  # noqa: E402
from train.dpo import dpo_lora_config  # noqa: E402
from train.stages import PROJECTORS_AND_QUERIES, apply_lora, load_model  # noqa: E402

MB = 1e6


def sft_adapter(model, rank: int):
    """What a `--lora_r` run trains and saves (LoRA, projectors and queries, the new tokens' rows)."""
    model.requires_grad_(False)
    return apply_lora(model, rank, train_modules=PROJECTORS_AND_QUERIES)


def dpo_adapter(model, rank: int):
    """What `python -m train dpo` trains and saves (LoRA on the language model only)."""
    return get_peft_model(model, dpo_lora_config(rank))


def parameters(peft_model) -> int:
    return sum(tensor.numel() for tensor in get_peft_model_state_dict(peft_model).values())


def measured(folder: Path, build, rank: int) -> tuple[int, int]:
    """(parameters, bytes of adapter_model.safetensors) of the adapter saved on `folder`'s model."""
    peft_model = build(load_model(folder), rank)
    with tempfile.TemporaryDirectory() as scratch:
        save_adapter(peft_model, scratch, base_model=str(folder))
        return parameters(peft_model), (Path(scratch) / ADAPTER_WEIGHTS_NAME).stat().st_size


def computed_7b(build, rank: int) -> int:
    with torch.device("meta"):
        model = DreamLLMForConditionalGeneration(DreamLLMConfig())
    return parameters(build(model, rank))


def table(folder: Path, ranks: list[int]) -> str:
    lines = ["| adapter | rank | toy: parameters | toy: file (fp32) | 7B: parameters | 7B: fp32 | 7B: bf16 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, build in (("`--lora_r` (SFT)", sft_adapter), ("`dpo`", dpo_adapter)):
        for rank in ranks:
            toy_params, toy_bytes = measured(folder, build, rank)
            big = computed_7b(build, rank)
            lines.append(f"| {name} | {rank} | {toy_params / MB:.3f} M | {toy_bytes / MB:.2f} MB | {big / MB:.1f} M "
                         f"| {4 * big / MB:.0f} MB | {2 * big / MB:.0f} MB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path("checkpoints/toy"))
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args(argv)
    print(table(args.folder, args.ranks))


if __name__ == "__main__":
    main()
