"""Preference tuning of DreamLLM's replies with TRL's `DPOTrainer` and a LoRA adapter on the language model.

    python -m train.toy preferences --output runs/toy/preferences --num 2000    # or any dataset in TRL's format
    python -m train dpo --model_name_or_path checkpoints/toy --output_dir runs/toy-dpo \
        --data runs/toy/preferences --lora_r 8 --learning_rate 5e-4 --max_steps 200 --beta 0.1
    python -m train merge --adapter runs/toy-dpo --output runs/toy-dpo-merged   # a plain folder, if wanted

`--data` is a saved `datasets` folder or a `.jsonl` file whose rows are TRL's vision preference format: `images`
(a list of pictures; in `.jsonl`, paths relative to the file), `prompt` (the user turn, with `{"type": "image"}`
where the picture goes), `chosen` and `rejected` (one assistant turn each). The model and processor load with the
project's classes (no code from the folder runs); the reference model is the base itself (the adapter disabled).
The output folder is a PEFT adapter (`train.adapters`) with the processor, published whole, as are checkpoints.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig
from transformers.data.data_collator import DataCollatorMixin
from transformers.trainer import TRAINING_ARGS_NAME
from trl import DPOConfig, DPOTrainer, TrlParser
from trl.data_utils import apply_chat_template, prepare_multimodal_messages
from trl.trainer.utils import flush_left, pad

from dreamllm_common.folders import clear_staging, publish_folder, staging_path
from train.adapters import save_adapter
from train.errors import InputError
from train.trainer import DreamLLMTrainer, carried_into_adapter

PREFERENCE_COLUMNS = ("images", "prompt", "chosen", "rejected")


@dataclass
class DPOArguments:
    """DreamLLM-specific options of `python -m train dpo` (the rest are `DPOConfig` options)."""

    model_name_or_path: str = field(default=None, metadata={"help": "a DreamLLM folder"})
    data: str = field(default=None, metadata={"help": "preference pairs: a saved datasets folder or a .jsonl file"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank on the language model"})
    lora_alpha: int | None = field(default=None, metadata={"help": "default: 2 * lora_r"})
    lora_dropout: float = field(default=0.0)
    base_model_id: str | None = field(
        default=None, metadata={"help": "the base model the adapter names (default: the absolute model folder)"}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "replace an --output_dir holding a run"})


DPO_DEFAULTS = {
    "bf16": torch.cuda.is_available(),
    "gradient_checkpointing": False,
    "report_to": "none",
    "save_steps": 500,
    "logging_steps": 10,
    "max_length": None,  # truncation would cut image blocks
    "dataloader_pin_memory": torch.cuda.is_available(),
}


@dataclass
class DreamLLMPreferenceCollator(DataCollatorMixin):
    """TRL's vision preference batch for DreamLLM: rows `[chosen..., rejected...]` of prompt + completion, flushed
    left, with `completion_mask` on the reply tokens and `pixel_values` for each row's pictures.

    TRL's `DataCollatorForVisionPreference` encodes the completion with the processor, which starts every document
    with `<s>`; here the prompt is encoded by the processor (`<s>`, image blocks) and the completion by its tokenizer
    without special tokens, so a row reads as the chat template renders the whole conversation.
    """

    processor: object
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict]) -> dict:
        rendered, images = [], []
        for example in examples:
            pictures = list(example.get("images") or ([example["image"]] if example.get("image") is not None else []))
            messages = {
                "prompt": prepare_multimodal_messages(example["prompt"], images=pictures),
                "chosen": prepare_multimodal_messages(example["chosen"]),
                "rejected": prepare_multimodal_messages(example["rejected"]),
            }
            rendered.append(apply_chat_template(messages, self.processor))
            images.append(pictures)
        prompts = self.processor(
            text=[row["prompt"] for row in rendered] * 2,
            images=(images * 2) if any(images) else None,
            padding=True,
            padding_side="left",
            truncation=False,
            return_tensors="pt",
        )
        tokenizer = self.processor.tokenizer
        completions = [
            torch.tensor(tokenizer(row[key], add_special_tokens=False)["input_ids"])
            for key in ("chosen", "rejected")
            for row in rendered
        ]
        completion_ids = pad(completions, padding_value=tokenizer.pad_token_id)
        completion_mask = pad([torch.ones_like(ids) for ids in completions], padding_value=0)
        attention_mask = torch.cat((prompts["attention_mask"], completion_mask), dim=1)
        input_ids = torch.cat((prompts["input_ids"], completion_ids), dim=1)
        completion_mask = torch.cat((torch.zeros_like(prompts["attention_mask"]), completion_mask), dim=1)
        attention_mask, input_ids, completion_mask = flush_left(attention_mask, input_ids, completion_mask)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
        if "pixel_values" in prompts:
            batch["pixel_values"] = prompts["pixel_values"]
        return batch


class DreamLLMDPOTrainer(DPOTrainer):
    """`DPOTrainer` whose checkpoints are written aside and renamed into place, as `DreamLLMTrainer`'s are."""

    _save_checkpoint = DreamLLMTrainer._save_checkpoint  # only Trainer methods: it is the same procedure

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The adapter with its card (`train.adapters.save_adapter`) and the training arguments."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.args.should_save:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            save_adapter(self.accelerator.unwrap_model(self.model), output_dir)
            torch.save(self.args, Path(output_dir) / TRAINING_ARGS_NAME)

    def save_final(self, output_dir: str | None = None) -> str:
        """The adapter and the processor at `output_dir`, published whole (its checkpoints kept)."""
        output_dir = output_dir or self.args.output_dir
        staging = staging_path(output_dir)
        if self.args.should_save:
            clear_staging(output_dir)
        self.accelerator.wait_for_everyone()
        self.save_model(str(staging))
        if self.args.should_save:
            self.processing_class.save_pretrained(staging)
            publish_folder(staging, output_dir, carry=carried_into_adapter)
        self.accelerator.wait_for_everyone()
        return output_dir


def load_preferences(path: str | Path):
    """A preference dataset in TRL's vision format from a saved `datasets` folder or a `.jsonl` file."""
    from datasets import Dataset, Image, Sequence, load_from_disk

    path = Path(path)
    if path.is_dir():
        try:
            dataset = load_from_disk(str(path))
        except FileNotFoundError as error:
            raise InputError(f"--data {path}: not a saved datasets folder ({error})") from error
    elif path.suffix == ".jsonl" and path.is_file():
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["images"] = [str(path.parent / image) for image in row.get("images", [])]
            except (ValueError, TypeError, AttributeError) as error:
                raise InputError(f"--data {path}: line {number} is not a preference row ({error})") from error
            rows.append(row)
        dataset = Dataset.from_list(rows).cast_column("images", Sequence(Image()))
    else:
        raise InputError(f"--data {path}: no such datasets folder or .jsonl file")
    missing = [name for name in PREFERENCE_COLUMNS[1:] if name not in dataset.column_names]
    if missing:
        raise InputError(f"--data {path}: rows lack {missing}; TRL's preference format has prompt, chosen, rejected")
    return dataset


def dpo_lora_config(r: int, alpha: int | None = None, dropout: float = 0.0) -> LoraConfig:
    """LoRA on the language model's projections only. The LM head stays as it is: DPO reads `lm_head.weight`
    directly, so an adapter on it would never train (TRL refuses one)."""
    from train.stages import LANGUAGE_MODEL_TARGETS

    return LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=LANGUAGE_MODEL_TARGETS)


def build_dpo_trainer(script_args: DPOArguments, args: DPOConfig) -> DreamLLMDPOTrainer:
    """The model and processor from `script_args.model_name_or_path` (project classes), the preference data, and a
    `DPOTrainer` training a new LoRA adapter against the base model."""
    from train.checkpoints import check_model_folder
    from train.stages import load_model, load_processor

    if not script_args.model_name_or_path or not script_args.data:
        raise InputError("--model_name_or_path and --data are required")
    check_model_folder(script_args.model_name_or_path)
    folder = Path(script_args.model_name_or_path).resolve()
    dataset = load_preferences(script_args.data)
    processor = load_processor(folder)
    model = load_model(folder)
    args.remove_unused_columns = False
    trainer = DreamLLMDPOTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        data_collator=DreamLLMPreferenceCollator(processor),
        peft_config=dpo_lora_config(script_args.lora_r, script_args.lora_alpha, script_args.lora_dropout),
    )
    config = trainer.model.peft_config[trainer.model.active_adapter]
    config.base_model_name_or_path = script_args.base_model_id or str(folder)
    return trainer


def main(argv: list[str] | None = None) -> DreamLLMDPOTrainer:
    """Run DPO end to end; returns the trainer (its `state.log_history` holds the losses and reward margins)."""
    from train.stages import check_output_dir, resolve_resume

    parser = TrlParser((DPOArguments, DPOConfig))
    parser.set_defaults(**DPO_DEFAULTS)
    script_args, args = parser.parse_args_and_config(sys.argv[1:] if argv is None else list(argv))
    resume = resolve_resume(args)
    check_output_dir(args.output_dir, resume is not None, script_args.overwrite_output_dir, args.process_index == 0)
    trainer = build_dpo_trainer(script_args, args)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_final()
    return trainer


__all__ = ["DPOArguments", "DreamLLMDPOTrainer", "DreamLLMPreferenceCollator", "build_dpo_trainer",
           "dpo_lora_config", "load_preferences", "main"]
