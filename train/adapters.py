"""LoRA runs as PEFT adapters: saved on their own (a few MB to a few hundred MB instead of a whole DreamLLM folder),
loaded onto their base folder through PEFT's and transformers' own entry points, merged into a plain folder on
request, and uploaded with a model card naming the base model.

    python -m train --stage sft --model_name_or_path runs/igpt --output_dir runs/sft-lora --data chat.json --lora_r 16
    python -m train merge --adapter runs/sft-lora --output runs/sft-merged      # a plain DreamLLM folder
    python -m train push --adapter runs/sft-lora --repo_id me/dreamllm-lora --base_model me/dreamllm-7b

    from peft import PeftModel
    base = AutoModelForCausalLM.from_pretrained("runs/igpt", trust_remote_code=True)
    model = PeftModel.from_pretrained(base, "runs/sft-lora")       # or base.load_adapter("runs/sft-lora")

An adapter folder holds `adapter_config.json` and `adapter_model.safetensors`: the LoRA matrices of the language
model, the modules trained in full (`modules_to_save`: the projectors and dream queries) and the new tokens' rows of
the embeddings and LM head (PEFT's trainable tokens), plus `README.md` (the card) and the processor files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData
from peft import PeftModel
from peft.utils.constants import CONFIG_NAME as ADAPTER_CONFIG_NAME
from peft.utils.constants import SAFETENSORS_WEIGHTS_NAME as ADAPTER_WEIGHTS_NAME

from train.errors import InputError

ADAPTER_CARD_TAGS = ["dreamllm", "peft", "lora", "image-text-to-text", "text-to-image"]


def is_adapter_folder(folder: str | Path) -> bool:
    """Whether `folder` holds a PEFT adapter (rather than a whole model)."""
    return (Path(folder) / ADAPTER_CONFIG_NAME).is_file()


def base_model_of(folder: str | Path) -> str:
    """The base model an adapter folder names (`base_model_name_or_path` of its `adapter_config.json`)."""
    path = Path(folder) / ADAPTER_CONFIG_NAME
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path")
    except FileNotFoundError as error:
        raise InputError(f"--adapter {folder}: no {ADAPTER_CONFIG_NAME}; not a PEFT adapter folder") from error
    except (ValueError, OSError, AttributeError) as error:
        raise InputError(f"{path} is not a readable adapter config ({error})") from error
    if not base:
        raise InputError(f"{path} names no base model (base_model_name_or_path); pass --base DIR")
    return base


def adapter_card(base_model: str, adapter_folder_name: str = "ADAPTER") -> ModelCard:
    """The card of a DreamLLM adapter: `base_model` metadata (the Hub links the adapter to its base), PEFT as
    library, and how to load it onto the base model and the pipeline."""
    data = ModelCardData(
        base_model=base_model, library_name="peft", tags=ADAPTER_CARD_TAGS + [f"base_model:adapter:{base_model}"]
    )
    content = f"""---
{data.to_yaml()}
---

# DreamLLM LoRA adapter

A PEFT adapter for the DreamLLM model [`{base_model}`]({base_model}): LoRA on its language model, with the
projectors, the dream queries and the new tokens' embedding rows trained alongside.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{base_model}", trust_remote_code=True)
model = PeftModel.from_pretrained(base, "{adapter_folder_name}")   # or: base.load_adapter("{adapter_folder_name}")

from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{base_model}", trust_remote_code=True)
pipe.llm.load_adapter("{adapter_folder_name}")                    # text-to-image and interleaved with the adapter
```

`python -m train merge --adapter {adapter_folder_name} --output DIR` writes the merged plain DreamLLM folder.
"""
    return ModelCard(content)


def save_adapter(peft_model: PeftModel, folder: str | Path, base_model: str | None = None) -> None:
    """Write the active adapter of `peft_model` into `folder` (`PeftModel.save_pretrained`) with its card;
    `base_model` (a Hub id or a folder) is recorded as `base_model_name_or_path`."""
    folder = Path(folder)
    config = peft_model.peft_config[peft_model.active_adapter]
    if base_model is not None:
        config.base_model_name_or_path = base_model
    peft_model.save_pretrained(folder, selected_adapters=[peft_model.active_adapter])
    if config.base_model_name_or_path:
        adapter_card(config.base_model_name_or_path, folder.name).save(folder / "README.md")


def upload_folder_for(adapter: str | Path, staging: str | Path, base_model: str | None = None) -> Path:
    """Fill `staging` with what `push_adapter` uploads: the adapter folder's files, with `base_model` (when given)
    written into `adapter_config.json` and the card. Returns `staging`."""
    adapter, staging = Path(adapter), Path(staging)
    base = base_model or base_model_of(adapter)
    if not (adapter / ADAPTER_WEIGHTS_NAME).is_file():
        raise InputError(f"--adapter {adapter}: no {ADAPTER_WEIGHTS_NAME}")
    shutil.copytree(adapter, staging, dirs_exist_ok=True)
    config = json.loads((staging / ADAPTER_CONFIG_NAME).read_text())
    config["base_model_name_or_path"] = base
    (staging / ADAPTER_CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    adapter_card(base, adapter.name).save(staging / "README.md")
    return staging


def push_adapter(
    adapter: str | Path, repo_id: str, base_model: str | None = None, private: bool | None = None,
    token: str | None = None,
) -> str:
    """Upload an adapter folder to the Hub with its card (`base_model` metadata). `PeftModel.push_to_hub` would
    replace the card PEFT writes with the repository's generic one, so the folder is uploaded as it is saved."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as staging:
        upload_folder_for(adapter, staging, base_model)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message="DreamLLM LoRA adapter")
    return repo_id


def merge_adapter(adapter: str | Path, output: str | Path, base: str | Path | None = None) -> Path:
    """Merge an adapter into its base folder (`PeftModel.merge_and_unload`) and write the plain DreamLLM folder
    (model, processor, decoder, pipeline files) to `output`, published whole; an existing `output` is refused."""
    from dreamllm_common.folders import staged_folder
    from train.stages import load_model, load_processor
    from train.trainer import complete_folder

    adapter = Path(adapter)
    if not (adapter / ADAPTER_WEIGHTS_NAME).is_file():
        raise InputError(f"--adapter {adapter}: no {ADAPTER_WEIGHTS_NAME}; not a PEFT adapter folder")
    base = Path(base) if base is not None else Path(base_model_of(adapter))
    if Path(output).exists():
        raise InputError(f"--output {output} exists; choose a new folder")
    model = PeftModel.from_pretrained(load_model(base), adapter).merge_and_unload()
    with staged_folder(output) as staging:
        model.save_pretrained(staging)
        load_processor(adapter if (adapter / "processor_config.json").is_file() else base).save_pretrained(staging)
        complete_folder(staging, base)
    return Path(output)


def main(argv: list[str]) -> None:
    """`python -m train merge --adapter DIR --output DIR [--base DIR]` and
    `python -m train push --adapter DIR --repo_id ID [--base_model ID]`."""
    command, argv = argv[0], argv[1:]
    parser = argparse.ArgumentParser(prog=f"python -m train {command}")
    parser.add_argument("--adapter", required=True, help="a PEFT adapter folder (a --lora_r run's output)")
    if command == "merge":
        parser.add_argument("--output", required=True, help="the merged plain DreamLLM folder to write")
        parser.add_argument("--base", default=None, help="the base folder (default: the adapter config's)")
        args = parser.parse_args(argv)
        print(f"merged DreamLLM folder written to {merge_adapter(args.adapter, args.output, args.base)}")
    else:
        parser.add_argument("--repo_id", required=True)
        parser.add_argument("--base_model", default=None, help="the base model's Hub id (default: the config's)")
        parser.add_argument("--private", action="store_true")
        args = parser.parse_args(argv)
        print(f"uploaded to {push_adapter(args.adapter, args.repo_id, args.base_model, args.private or None)}")


__all__ = [
    "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "adapter_card", "base_model_of", "is_adapter_folder",
    "merge_adapter", "push_adapter", "save_adapter", "upload_folder_for",
]
