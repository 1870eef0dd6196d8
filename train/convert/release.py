"""Read an official DreamLLM release's config and tokenizer, and derive this project's configs from them.

The release's `config.json` gives the LLaMA sizes only: its bos/eos/pad ids (0/1/-1) are wrong, so every id comes
from the tokenizer, checked against `added_tokens.json` (the released ids are not in the code's list order). Sizes
the config does not state (queries, condition width) come from the tensors themselves.

    >>> tokenizer = load_tokenizer(Path("dreamllm-7b-chat-v1.0"))
    >>> tokenizer.convert_tokens_to_ids("<dream_start>")
    32003
"""

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig

from configuration_dreamllm import SPECIAL_TOKENS, DreamLLMConfig
from modeling_dreamllm import DreamLLMForConditionalGeneration
from train.assemble import register_auto_classes
from train.convert.configs import (
    CLIP_VIT_L14_IMAGE_PROCESSOR_CONFIG,
    CLIP_VIT_L14_VISION_CONFIG,
    SD21_BASE_SCHEDULER_CONFIG,
    SD21_BASE_UNET_CONFIG,
    SD21_BASE_VAE_CONFIG,
)
from train.convert.keys import MODEL, UNET, VAE, ConversionPlan
from train.convert.sources import ConversionError, read_json

# LLaMA fields taken from the release's config.json; its bos/eos/pad ids are wrong (0/1/-1) and never read.
LLAMA_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "pretraining_tp",
    "rope_theta",
    "rope_scaling",
    "attention_bias",
    "mlp_bias",
    "head_dim",
)
CARRIED_VISION = "CLIP ViT-L/14 (openai/clip-vit-large-patch14; configs carried by the converter)"
DIFFUSION_CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "scheduler": "scheduler_config.json"}
TOKENIZER_FILES = (
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
TOKENIZER_TOKENS = ("<s>", "</s>", "<unk>", "[PAD]", *SPECIAL_TOKENS.values())


@dataclass
class DecoderConfigs:
    """The diffusers configs written to `unet/`, `vae/`, `scheduler/`, and where they came from."""

    unet: dict
    vae: dict
    scheduler: dict
    origin: str


def load_tokenizer(folder: Path):
    """The release tokenizer, checked against `added_tokens.json` (the released ids are not in list order)."""
    try:
        # Load from a copy of just the tokenizer files: next to the release's config.json, transformers would also
        # parse that config (and its wrong ids) while resolving the tokenizer class.
        with tempfile.TemporaryDirectory() as scratch:
            for name in TOKENIZER_FILES:
                if (folder / name).is_file():
                    shutil.copy(folder / name, scratch)
            tokenizer = AutoTokenizer.from_pretrained(scratch)
    except Exception as error:
        hint = ""
        if (folder / "tokenizer.model").is_file() and not (folder / "tokenizer.json").is_file():
            hint = " (reading tokenizer.model needs `pip install sentencepiece protobuf`)"
        raise ConversionError(f"cannot load the tokenizer of {folder}{hint}: {error}") from error
    vocab = tokenizer.get_vocab()
    missing = [token for token in TOKENIZER_TOKENS if token not in vocab]
    if missing:
        raise ConversionError(f"the tokenizer of {folder} lacks the DreamLLM tokens {missing}")
    added_path = folder / "added_tokens.json"
    if added_path.is_file():
        released = read_json(added_path)
        disagree = {
            token: (token_id, vocab.get(token)) for token, token_id in released.items() if vocab.get(token) != token_id
        }
        if disagree:
            raise ConversionError(
                f"the tokenizer disagrees with {added_path} (token: (file id, tokenizer id)): {disagree}"
            )
    # The ids of these strings, never the release config's bos 0 / eos 1 / pad -1.
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token = "<s>", "</s>", "<unk>", "[PAD]"
    return tokenizer


def text_config_from_release(release_config: dict, tokenizer) -> LlamaConfig:
    """LLaMA config from the release's fields, with the vocabulary and special ids of the tokenizer."""
    fields = {name: release_config[name] for name in LLAMA_FIELDS if release_config.get(name) is not None}
    return LlamaConfig(
        **fields,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def vision_configs(vision: Path | None) -> tuple[CLIPVisionConfig, CLIPImageProcessorPil]:
    if vision is None:
        return CLIPVisionConfig(**CLIP_VIT_L14_VISION_CONFIG), CLIPImageProcessorPil.from_dict(
            CLIP_VIT_L14_IMAGE_PROCESSOR_CONFIG
        )
    return CLIPVisionConfig.from_pretrained(vision), CLIPImageProcessorPil.from_pretrained(vision)


def decoder_configs(diffusion: Path | None) -> DecoderConfigs:
    if diffusion is None:
        return DecoderConfigs(
            dict(SD21_BASE_UNET_CONFIG),
            dict(SD21_BASE_VAE_CONFIG),
            dict(SD21_BASE_SCHEDULER_CONFIG),
            "stabilityai/stable-diffusion-2-1-base (configs carried by the converter)",
        )
    configs = {name: read_json(diffusion / name / file) for name, file in DIFFUSION_CONFIG_FILES.items()}
    return DecoderConfigs(**configs, origin=f"configs from {diffusion}")


def expected_decoder_shapes(configs: DecoderConfigs) -> dict[str, dict[str, tuple[int, ...]]]:
    """Parameter shapes of the UNet and VAE the configs describe, built on the meta device (no memory)."""
    shapes = {}
    with torch.device("meta"):
        for component, cls, config in ((UNET, UNet2DConditionModel, configs.unet), (VAE, AutoencoderKL, configs.vae)):
            module = cls.from_config(config)
            shapes[component] = {key: tuple(t.shape) for key, t in module.state_dict().items()}
    return shapes


def build_config(
    plan: ConversionPlan, release_config: dict, tokenizer, vision_config: CLIPVisionConfig, dtype
) -> DreamLLMConfig:
    """Our config: LLaMA fields of the release, tokenizer ids, and sizes read from the plugin tensors."""
    num_dream_queries = plan.get(MODEL, "model.dream_queries.weight").shape[0]
    condition_hidden_size = plan.get(MODEL, "model.condition_projector.weight").shape[0]
    text_config = text_config_from_release(release_config, tokenizer)
    dtype_name = str(dtype).removeprefix("torch.")
    text_config.dtype = vision_config.dtype = dtype_name
    config = DreamLLMConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_config.to_dict(),
        num_dream_queries=num_dream_queries,
        condition_hidden_size=condition_hidden_size,
        lm_loss_weight=release_config.get("loss_weight_lm", 1.0),
        diffusion_loss_weight=release_config.get("loss_weight_vm", 10.0),
        **{name: tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL_TOKENS.items()},
    )
    config.dtype = dtype_name
    config.architectures = [DreamLLMForConditionalGeneration.__name__]
    register_auto_classes(config)
    return config


def expected_model_shapes(config: DreamLLMConfig) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the DreamLLM model the config describes, built on the meta device (no memory)."""
    with torch.device("meta"):
        state = DreamLLMForConditionalGeneration(config).state_dict()
    return {key: tuple(t.shape) for key, t in state.items()}


__all__ = [
    "DecoderConfigs",
    "load_tokenizer",
    "text_config_from_release",
    "vision_configs",
    "decoder_configs",
    "build_config",
    "expected_model_shapes",
    "expected_decoder_shapes",
    "CARRIED_VISION",
    "DIFFUSION_CONFIG_FILES",
]
