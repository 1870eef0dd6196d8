"""The three DreamLLM training stages behind one entry point.

    python -m train --stage alignment --model_name_or_path dreamllm-7b-init --output_dir runs/alignment \
        --data laion_shards/ --data llava_pretrain.json
    python -m train --stage igpt --model_name_or_path runs/alignment --output_dir runs/igpt \
        --data mmc4_core.jsonl --data blip_laion/:0.5
    python -m train --stage sft  --model_name_or_path runs/igpt --output_dir runs/sft --data llava_v1_5_665k.json \
        --data mmc4_instruct.jsonl --lora_r 16                      # optional LoRA: a PEFT adapter (train.adapters)
    accelerate launch --config_file train/accelerate_configs/fsdp2.yaml -m train --stage igpt ...
    python -m train --recipe train/recipes/dreamllm-7b/igpt.yaml --data_root /data [--print_config]  # docs/recipes.md

Stage presets (the official configs' learning rates and loss weights, except the joint alignment run; every value
can be overridden on the command line, in `--config` or in `--recipe`):

| stage (`--alignment`)   | trained                                          | lr   | loss weights lm/diffusion |
|-------------------------|--------------------------------------------------|------|---------------------------|
| alignment (joint)       | visual projector, dream queries, cond. projector | 2e-3 | 1 / 1 (this project)      |
| alignment (creation)    | dream queries, cond. projector (official run)    | 2e-3 | 0 / 1                     |
| alignment (compreh.)    | visual projector (official run)                  | 2e-3 | 1 / 0                     |
| igpt                    | + the whole LLM (embeddings, lm_head)            | 2e-5 | 1 / 10                    |
| sft                     | as igpt                                          | 4e-5 | 1 / 10                    |

CLIP, the UNet and the VAE are frozen in every stage. Each stage reads the previous stage's output folder, and
every folder it writes (checkpoints included) has the same layout and loads directly.
`--alignment joint|creation|comprehension` picks the alignment stage's variant: the project's one joint run, or the
official pair of runs (`python -m train merge` then assembles I-GPT's start from them: `train.merge_alignment`).
Precedence: command line > `--config` or `--recipe` YAML > stage preset > `SFTConfig` defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import SFTConfig, TrlParser

from configuration_dreamllm import SPECIAL_TOKENS
from modeling_dreamllm import DreamLLMForConditionalGeneration
from processing_dreamllm import DreamLLMProcessor
from train.adapters import is_adapter_folder
from train.assemble import register_auto_classes
from train.checkpoints import check_model_folder
from train.data import build_train_dataset
from train.data.samples import PAIR_LABELS, REPLY_DREAM_LABELS
from train.diffusion_loss import DreamLLMDiffusionLoss
from train.errors import InputError
from train.recipe import check_formats, load_recipe, rooted
from train.trainer import DreamLLMTrainer

logger = logging.getLogger(__name__)

PROJECTORS_AND_QUERIES = ("vision_projector", "dream_queries", "condition_projector")
# Decoders with a pooled input (SDXL, SD3) add this projector beside the condition projector; it trains with it.
POOLED_PROJECTOR = "pooled_projector"
# The parts of a DreamLLMForConditionalGeneration that can train; CLIP (`model.vision_tower`) and the decoder never
# do: `set_stage_trainable` freezes everything else (loading leaves every parameter trainable).
LANGUAGE_MODEL_PARTS = ("model.language_model", "lm_head")
FROZEN_ALWAYS = ("model.vision_tower", "unet", "vae")


@dataclass(frozen=True)
class StagePreset:
    train_language_model: bool
    learning_rate: float
    lm_loss_weight: float
    diffusion_loss_weight: float


STAGES = {
    "alignment": StagePreset(train_language_model=False, learning_rate=2e-3, lm_loss_weight=1, diffusion_loss_weight=1),
    "igpt": StagePreset(train_language_model=True, learning_rate=2e-5, lm_loss_weight=1, diffusion_loss_weight=10),
    "sft": StagePreset(train_language_model=True, learning_rate=4e-5, lm_loss_weight=1, diffusion_loss_weight=10),
}



@dataclass(frozen=True)
class AlignmentVariant:
    """What the alignment stage trains and learns: the project's joint run, or one of the official two runs."""

    trained: tuple[str, ...]
    lm_loss_weight: float
    diffusion_loss_weight: float
    creation_prob: float | None  # pairs used for creation; None: `--creation_prob` (0.5)
    interleaved_blocks: str  # which blocks an interleaved document keeps (train.data.samples)


ALIGNMENTS = {
    "joint": AlignmentVariant(tuple(f"model.{name}" for name in PROJECTORS_AND_QUERIES), 1, 1, None, "both"),
    "creation": AlignmentVariant(("model.dream_queries", "model.condition_projector"), 0, 1, 1.0, "creation"),
    "comprehension": AlignmentVariant(("model.vision_projector",), 1, 0, 0.0, "comprehension"),
}
DEFAULT_CREATION_PROB = 0.5

# TrainingArguments shared by all stages (official: cosine, warm-up 0.3 %, AdamW without weight decay, clip 1.0).
COMMON_DEFAULTS = {
    "lr_scheduler_type": "cosine",
    "warmup_steps": 3e-3,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "activation_checkpointing": True,
    "gradient_checkpointing": None,
    "bf16": torch.cuda.is_available(),  # bf16 autocast over fp32 master weights; fp32 on CPU
    "max_length": None,  # the processor's model_max_length (the LLM's context)
    "logging_nan_inf_filter": False,  # its isnan check would sync with the host every step
    "remove_unused_columns": False,
    "dataset_kwargs": {"skip_prepare_dataset": True},
    "save_steps": 2000,
    "report_to": "none",
    "dataloader_pin_memory": torch.cuda.is_available(),
}


class ReplaceThenExtend(argparse.Action):
    """`--data a --data b c` -> [a, b, c]; the first use on the command line replaces the default (or the YAML's
    list) instead of adding to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        current = [] if current is None or current is self.default else list(current)
        setattr(namespace, self.dest, current + list(values))


@dataclass
class DreamLLMArguments:
    """DreamLLM-specific options (the rest are `SFTConfig` / `TrainingArguments` options)."""

    stage: str = field(default="sft", metadata={"choices": list(STAGES), "help": "alignment | igpt | sft"})
    model_name_or_path: str = field(default=None, metadata={"help": "a DreamLLM folder (train.assemble or a stage)"})
    data: list[str] = field(
        default_factory=list,
        metadata={"action": ReplaceThenExtend, "help": "PATH[:WEIGHT], repeatable: pairs, .tar, .jsonl/.json, hf"},
    )
    image_folder: list[str] = field(
        default_factory=list,
        metadata={"action": ReplaceThenExtend, "help": "folder data records may name images in, repeatable"},
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "start afresh in an --output_dir that holds another run (its checkpoints go)"}
    )
    streaming: bool = field(default=False, metadata={"help": "read sources sequentially (for very large shards)"})
    shuffle_buffer: int = field(default=1000, metadata={"help": "shuffle buffer of streamed data"})
    creation_prob: float | None = field(
        default=None, metadata={"help": "share of image-text pairs used for creation (default 0.5; 1 / 0 for "
                                        "--alignment creation / comprehension)"}
    )
    min_similarity: float | None = field(
        default=0.25, metadata={"help": "MMC4: drop images with matched_sim below this (null in YAML: no filter, "
                                        "the official code's)"}
    )
    alignment: str = field(
        default="joint", metadata={"choices": list(ALIGNMENTS), "help": "the alignment stage's variant: joint (this "
                                   "project) or the official creation-only / comprehension-only runs"}
    )
    pair_labels: str = field(
        default="caption", metadata={"choices": list(PAIR_LABELS), "help": "what a creation pair learns besides "
                                     "the diffusion loss: its caption, <dream_start> and </s>, or none (official)"}
    )
    reply_dream_labels: str = field(
        default="dream_start", metadata={"choices": list(REPLY_DREAM_LABELS), "help": "whether a <dream> in an "
                                         "assistant reply learns <dream_start> (none: official)"}
    )
    pair_min_size: int = field(
        default=0, metadata={"help": "skip image-text pairs whose image has a side of this many pixels or fewer "
                                     "(official SFT: 128)"}
    )
    data_root: str | None = field(default=None, metadata={"help": "folder that relative --data paths are under"})
    samples_per_epoch: int | None = field(
        default=None, metadata={"help": "samples one epoch draws from the mixture (a recipe's summed sizes); sets "
                                        "max_steps from the global batch when max_steps is not given"}
    )
    recipe: str | None = field(default=None, metadata={"help": "a recipe YAML (train/recipes/...): settings + mixture"})
    print_config: bool = field(
        default=False, metadata={"help": "print the resolved settings as YAML and exit (no model is loaded)"}
    )
    lm_loss_weight: float | None = field(default=None, metadata={"help": "default: the stage preset"})
    diffusion_loss_weight: float | None = field(default=None, metadata={"help": "default: the stage preset"})
    condition_drop_prob: float | None = field(default=None, metadata={"help": "default: the model config (0.1)"})
    snr_gamma: float | None = field(default=None, metadata={"help": "Min-SNR-gamma weighting (default: off)"})
    max_unet_batch: int | None = field(default=None, metadata={"help": "images per UNet call; more run in chunks"})
    noise_offset: float = field(default=0.0, metadata={"help": "offset noise for the diffusion loss"})
    noise_samples_per_image: int = field(
        default=1, metadata={"help": "noise draws per created image in the diffusion loss (1: official)"}
    )
    min_timestep: int = field(default=0, metadata={"help": "diffusion-loss timesteps from [this, T) (0: official)"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank on the language model (0: full fine-tuning)"})
    lora_alpha: int | None = field(default=None, metadata={"help": "default: 2 * lora_r"})
    lora_dropout: float = field(default=0.05)
    save_merged: bool = field(
        default=False, metadata={"help": "LoRA runs: save plain folders with the adapters merged in (default: PEFT "
                                 "adapters; `python -m train merge --adapter DIR --output DIR` merges one later)"}
    )
    base_model_id: str | None = field(
        default=None, metadata={"help": "LoRA runs: the base model the adapter names in its config and card (a Hub "
                                        "id; default: the absolute path of --model_name_or_path)"}
    )


# Settings that need the hardware at parse time; `--print_config` shows them as asked without checking it.
HARDWARE_FIELDS = ("bf16", "fp16", "tf32")


def parse_args(argv: list[str] | None = None) -> tuple[DreamLLMArguments, SFTConfig]:
    """Parse the command line (and a `--config` or `--recipe` YAML) with the chosen stage's preset as defaults."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--stage", choices=list(STAGES), default=None)
    pre.add_argument("--recipe", default=None)
    pre.add_argument("--print_config", nargs="?", const="true", default="false")
    known, _ = pre.parse_known_args(argv)
    if known.recipe and "--config" in argv:
        raise InputError("pass either --config or --recipe, not both")
    recipe = load_recipe(known.recipe) if known.recipe else None
    stage = known.stage
    if stage is None and recipe is not None:
        stage = recipe.settings.get("stage")
    if stage is None and "--config" in argv:
        import yaml

        path = argv[argv.index("--config") + 1] if argv.index("--config") + 1 < len(argv) else ""
        try:
            with open(path) as handle:
                stage = (yaml.safe_load(handle) or {}).get("stage")
        except (OSError, yaml.YAMLError, AttributeError) as error:
            raise InputError(f"--config {path}: not a readable YAML mapping ({error})") from error
    stage = stage or "sft"
    preset = STAGES[stage]
    parser = TrlParser((DreamLLMArguments, SFTConfig))
    parser.set_defaults(**COMMON_DEFAULTS, learning_rate=preset.learning_rate, stage=stage)
    if recipe is not None:
        unknown = parser.set_defaults_with_config(**recipe.defaults())
        if unknown:
            raise InputError(f"{recipe.path}: unknown settings {unknown[::2]} (not python -m train options)")
    print_only = known.print_config.lower() in ("true", "1", "yes")
    if print_only:  # shown as asked; a run checks them against the hardware
        asked, _ = parser.parse_known_args(argv)
        argv = argv + [item for name in HARDWARE_FIELDS for item in (f"--{name}", "false")]
    script_args, training_args = parser.parse_args_and_config(argv)
    if print_only:
        for name in HARDWARE_FIELDS:
            setattr(training_args, name, getattr(asked, name))
    if script_args.model_name_or_path is None:
        parser.error("--model_name_or_path is required")
    if script_args.stage != stage:  # the YAML named another stage than the pre-parse saw
        raise ValueError(f"conflicting stages: {stage} and {script_args.stage}")
    resolve_alignment(script_args)
    return script_args, training_args


def resolve_alignment(script_args: DreamLLMArguments) -> None:
    """Check `--alignment` against the stage and fill `creation_prob` from it (or the 0.5 default)."""
    variant = ALIGNMENTS[script_args.alignment]
    if script_args.alignment != "joint" and script_args.stage != "alignment":
        raise InputError(f"--alignment {script_args.alignment} is a variant of the alignment stage, not of "
                         f"{script_args.stage}")
    if variant.creation_prob is not None:
        if script_args.creation_prob not in (None, variant.creation_prob):
            raise InputError(f"--alignment {script_args.alignment} uses creation_prob {variant.creation_prob}, got "
                             f"--creation_prob {script_args.creation_prob}")
        script_args.creation_prob = variant.creation_prob
    elif script_args.creation_prob is None:
        script_args.creation_prob = DEFAULT_CREATION_PROB


def trained_parts(stage: str, alignment: str = "joint") -> tuple[str, ...]:
    """Module paths (in `DreamLLMForConditionalGeneration`) that train in `stage`; everything else is frozen."""
    if STAGES[stage].train_language_model:
        return tuple(f"model.{name}" for name in PROJECTORS_AND_QUERIES) + LANGUAGE_MODEL_PARTS
    return ALIGNMENTS[alignment].trained


def loss_weights(script_args: DreamLLMArguments) -> tuple[float, float]:
    """(lm, diffusion): the options when given, else the alignment variant's or the stage preset's."""
    preset = STAGES[script_args.stage]
    if script_args.stage == "alignment":
        variant = ALIGNMENTS[script_args.alignment]
        preset = StagePreset(False, preset.learning_rate, variant.lm_loss_weight, variant.diffusion_loss_weight)
    return (_first_set(script_args.lm_loss_weight, preset.lm_loss_weight),
            _first_set(script_args.diffusion_loss_weight, preset.diffusion_loss_weight))


def resolve_max_steps(script_args: DreamLLMArguments, training_args: SFTConfig) -> None:
    """Official epochs are `samples_per_epoch` samples long (the summed `size_list`): without an explicit
    `max_steps`, set it from the global batch (per-device batch x processes x accumulation)."""
    if not script_args.samples_per_epoch or training_args.max_steps > 0:
        return
    batch = training_args.per_device_train_batch_size * training_args.world_size
    batch *= training_args.gradient_accumulation_steps
    training_args.max_steps = math.ceil(script_args.samples_per_epoch * training_args.num_train_epochs / batch)


def set_stage_trainable(model: DreamLLMForConditionalGeneration, stage: str, alignment: str = "joint") -> None:
    """`requires_grad` per stage (`trained_parts`): projectors and queries (the alignment variant's share of them),
    the LLM from I-GPT on; CLIP never."""
    model.requires_grad_(False)
    for path in trained_parts(stage, alignment):
        model.get_submodule(path).requires_grad_(True)
        if path == "model.condition_projector" and hasattr(model.model, POOLED_PROJECTOR):
            model.model.pooled_projector.requires_grad_(True)


# LoRA on the LLM's projections only: CLIP has q_proj/k_proj/v_proj too, and "all-linear" would catch the projectors.
LANGUAGE_MODEL_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def new_token_ids(config) -> list[int]:
    """Ids of the DreamLLM tokens added to the LLM's vocabulary (their embedding and output rows are trained)."""
    return sorted({getattr(config, name) for name in SPECIAL_TOKENS})


def apply_lora(model, r: int, alpha: int | None = None, dropout: float = 0.05, train_modules=()) -> PeftModel:
    """LoRA adapters on `model.model.language_model` (PEFT); `train_modules` (sub-modules of `model.model`: the
    projectors and `dream_queries`) train in full, and the new tokens' rows of `embed_tokens` and `lm_head` through
    PEFT's trainable tokens. Saves write the adapter (`train.adapters`), or with `--save_merged` a plain folder
    (`train.trainer.merged_state_dict`)."""
    token_ids = new_token_ids(model.config)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha or 2 * r,
        lora_dropout=dropout,
        target_modules=LANGUAGE_MODEL_TARGETS,
        modules_to_save=list(train_modules) or None,
        trainable_token_indices={"embed_tokens": token_ids, "lm_head": token_ids},
    )
    return get_peft_model(model, config)


@contextlib.contextmanager
def zero3_init_disabled():
    """Build frozen modules outside DeepSpeed ZeRO-3's `zero.Init`, so they are not partitioned (as diffusers'
    training examples do for their frozen text encoder and VAE)."""
    try:
        from accelerate.state import AcceleratorState

        plugin = AcceleratorState().deepspeed_plugin if AcceleratorState._shared_state else None
    except Exception:
        plugin = None
    if plugin is None:
        yield
        return
    with plugin.zero3_init_context_manager(enable=False):
        yield


def load_model(folder: str | Path) -> DreamLLMForConditionalGeneration:
    """fp32 master weights (mixed precision autocasts); saves copy the code files and `auto_map`. The project's own
    class: no code from the folder runs. Every tensor comes from the folder: one missing is an error, not a random
    initialisation."""
    check_model_folder(folder)
    model, info = DreamLLMForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, output_loading_info=True
    )
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise InputError(f"{folder}: its weights lack {len(missing)} tensors ({', '.join(missing[:3])}, ...); "
                         "DreamLLM folders are complete: save or convert it again")
    # Saves write the model's own key names, the folder's format. (Loaded into ZeRO-3 partitions, transformers records
    # every key conversion it knows as used, and a save would rename `model.language_model.*` to a legacy layout.)
    model._weight_conversions = []
    register_auto_classes(model.config)
    return model


def load_processor(folder: str | Path) -> DreamLLMProcessor:
    """The project's processor class with `trust_remote_code=False`: code a folder names (`auto_map`) never runs;
    a tokenizer or image processor that exists only as such code is refused."""
    try:
        return DreamLLMProcessor.from_pretrained(folder, trust_remote_code=False)
    except ValueError as error:
        if "trust_remote_code" not in str(error):
            raise
        raise InputError(f"{folder}: its processor files need code shipped in the folder; training never runs "
                         "code from a model folder: use the tokenizer and image processor classes of transformers"
                         ) from error


def check_output_dir(output_dir: str | Path, resume: bool, overwrite: bool, is_main_process: bool = True) -> None:
    """An --output_dir holding another run (checkpoints or a saved model) is refused unless the run resumes it or
    `overwrite` is set; `overwrite` removes the other run's checkpoints (its model is replaced at the final save)."""
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise InputError(f"--output_dir {output_dir}: a file, not a folder")
    previous = sorted(output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")) if output_dir.is_dir() else []
    saved_model = (output_dir / "config.json").is_file() or is_adapter_folder(output_dir)
    if not (previous or saved_model) or resume:
        return
    if not overwrite:
        held = ", ".join(path.name for path in previous[:3]) or "a saved model"
        raise InputError(f"--output_dir {output_dir} holds another run ({held}); pass --resume_from_checkpoint true "
                         "to continue it, --overwrite_output_dir true to replace it, or choose a new folder")
    if is_main_process:
        for path in previous:
            shutil.rmtree(path)


def resolve_resume(training_args: SFTConfig) -> str | None:
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    if str(value).lower() in ("true", "last"):
        output_dir = Path(training_args.output_dir)
        last = get_last_checkpoint(output_dir) if output_dir.is_dir() else None
        if last is None and ((output_dir / "config.json").is_file() or is_adapter_folder(output_dir)):
            raise InputError(f"--resume_from_checkpoint {value}: {output_dir} holds a saved model but no checkpoint "
                             "to resume; pass --overwrite_output_dir true to replace it, or choose a new folder")
        if last is None:
            logger.warning("no checkpoint in %s: training from the start", output_dir)
        return last
    if not Path(value).is_dir():
        raise InputError(f"--resume_from_checkpoint {value}: no such checkpoint folder")
    return value


def _first_set(*values):
    return next(value for value in values if value is not None)


def build_trainer(script_args: DreamLLMArguments, training_args: SFTConfig) -> DreamLLMTrainer:
    """Model, processor, decoder loss and data for `script_args.stage`, wrapped in a `DreamLLMTrainer`."""
    folder = Path(script_args.model_name_or_path)
    preset = STAGES[script_args.stage]
    resolve_alignment(script_args)  # arguments built without parse_args too
    set_seed(training_args.seed)
    check_model_folder(folder)
    processor = load_processor(folder)
    # The data before the model: a bad source is reported before anything heavy loads.
    recipe = load_recipe(script_args.recipe) if script_args.recipe else None
    if recipe is not None and script_args.data == recipe.data_specs():
        check_formats(recipe, script_args.data_root)
    resolve_max_steps(script_args, training_args)
    lm_loss_weight, diffusion_loss_weight = loss_weights(script_args)
    train_dataset = build_train_dataset(
        [rooted(spec, script_args.data_root) for spec in script_args.data],
        processor,
        streaming=script_args.streaming,
        creation_prob=script_args.creation_prob,
        min_similarity=script_args.min_similarity,
        max_length=training_args.max_length,
        seed=training_args.seed,
        shuffle_buffer=script_args.shuffle_buffer,
        image_folders=script_args.image_folder,
        pair_labels=script_args.pair_labels,
        reply_dream_labels=script_args.reply_dream_labels,
        interleaved_blocks=ALIGNMENTS[script_args.alignment].interleaved_blocks,
        pair_min_size=script_args.pair_min_size,
    )
    if script_args.streaming and training_args.accelerator_config.dispatch_batches is None:
        # Each process reads its own shards of the stream (see docs/scaling.md), instead of accelerate's default
        # for iterable datasets: the main process reads every batch and sends slices of it, which cannot slice a
        # DreamLLM batch (its images are not one per row).
        training_args.accelerator_config.dispatch_batches = False
    model = load_model(folder)
    set_stage_trainable(model, script_args.stage, script_args.alignment)
    if script_args.lora_r:
        if not preset.train_language_model:
            raise InputError(f"--lora_r: LoRA adapts the language model, which {script_args.stage} keeps frozen")
        model.requires_grad_(False)
        model = apply_lora(model, script_args.lora_r, script_args.lora_alpha, script_args.lora_dropout,
                           train_modules=PROJECTORS_AND_QUERIES + ((POOLED_PROJECTOR,) * hasattr(model.model,
                                                                                                  POOLED_PROJECTOR)))
    with zero3_init_disabled():
        diffusion_loss = DreamLLMDiffusionLoss.from_pretrained(
            folder,
            unet_dtype=torch.bfloat16 if training_args.bf16 else None,  # frozen: no master copy needed
            snr_gamma=script_args.snr_gamma,
            max_unet_batch=script_args.max_unet_batch,
            noise_offset=script_args.noise_offset,
            noise_samples_per_image=script_args.noise_samples_per_image,
            min_timestep=script_args.min_timestep,
        )
    return DreamLLMTrainer(
        model,
        training_args,
        diffusion_loss=diffusion_loss,
        decoder_folder=folder,
        train_dataset=train_dataset,
        processing_class=processor,
        lm_loss_weight=lm_loss_weight,
        diffusion_loss_weight=diffusion_loss_weight,
        condition_drop_prob=script_args.condition_drop_prob,
        save_merged=script_args.save_merged,
        adapter_base_model=script_args.base_model_id,
    )


def resolved_settings(script_args: DreamLLMArguments, training_args: SFTConfig) -> dict:
    """Everything a run would use, without loading anything: loss weights, trained and frozen parts, data format
    options, the mixture (when it is the recipe's) and every option."""
    trained = list(trained_parts(script_args.stage, script_args.alignment))
    everything = [f"model.{name}" for name in PROJECTORS_AND_QUERIES] + list(LANGUAGE_MODEL_PARTS)
    lm, diffusion = loss_weights(script_args)
    settings = {
        "recipe": script_args.recipe,
        "stage": script_args.stage,
        "alignment": script_args.alignment if script_args.stage == "alignment" else None,
        "model_name_or_path": script_args.model_name_or_path,
        "output_dir": training_args.output_dir,
        "loss_weights": {"lm": lm, "diffusion": diffusion},
        "trained": trained + ([f"LoRA r={script_args.lora_r} on model.language_model"] if script_args.lora_r else []),
        "frozen": [part for part in everything if part not in trained] + list(FROZEN_ALWAYS),
        "data_format": {
            "pair_labels": script_args.pair_labels,
            "reply_dream_labels": script_args.reply_dream_labels,
            "creation_prob": script_args.creation_prob,
            "interleaved_blocks": ALIGNMENTS[script_args.alignment].interleaved_blocks,
            "min_similarity": script_args.min_similarity,
            "pair_min_size": script_args.pair_min_size,
            "max_length": training_args.max_length or "the tokenizer's model_max_length",
            "condition_drop_prob": _first_set(script_args.condition_drop_prob, "the model config's"),
        },
    }
    recipe = load_recipe(script_args.recipe) if script_args.recipe else None
    if recipe is not None and script_args.data == recipe.data_specs():
        total = sum(entry.weight for entry in recipe.mixture)
        settings["mixture"] = [
            {**asdict(entry), "path": rooted(entry.path, script_args.data_root),
             "probability": round(entry.weight / total, 6)}
            for entry in recipe.mixture
        ]
    else:
        settings["data"] = [rooted(spec, script_args.data_root) for spec in script_args.data]
    if script_args.samples_per_epoch and training_args.max_steps <= 0:
        per_process = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
        epochs = training_args.num_train_epochs
        settings["schedule"] = {
            "samples_per_epoch": script_args.samples_per_epoch,
            "max_steps": f"ceil(samples_per_epoch x num_train_epochs / ({per_process} x processes)), set at launch",
            "max_steps_for_processes": {
                n: math.ceil(script_args.samples_per_epoch * epochs / (per_process * n)) for n in (8, 32, 64, 128)
            },
        }
    settings["dreamllm_arguments"] = asdict(script_args)
    settings["training_arguments"] = json.loads(training_args.to_json_string())
    return settings


def main(argv: list[str] | None = None) -> DreamLLMTrainer | None:
    """Run one stage end to end; returns the trainer (its `state.log_history` holds the losses). With
    `--print_config`, prints the resolved settings as YAML and returns None."""
    script_args, training_args = parse_args(argv)
    if script_args.print_config:
        import yaml

        print(yaml.safe_dump(resolved_settings(script_args, training_args), sort_keys=False, width=120), end="")
        return None
    resume = resolve_resume(training_args)
    check_output_dir(training_args.output_dir, resume is not None, script_args.overwrite_output_dir,
                     training_args.process_index == 0)
    trainer = build_trainer(script_args, training_args)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_final(training_args.output_dir)
    return trainer


__all__ = [
    "ALIGNMENTS", "STAGES", "DreamLLMArguments", "apply_lora", "build_trainer", "check_output_dir", "load_model",
    "load_processor", "loss_weights", "main", "parse_args", "resolved_settings", "set_stage_trainable",
    "trained_parts",
]
