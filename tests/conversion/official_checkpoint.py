"""A tiny synthetic checkpoint in the layout of the official DreamLLM release, for converter tests.

It mirrors `RunpeiDong/dreamllm-7b-chat-v1.0` at toy size: the same file names, key names and prefixes, bf16
tensors, LLaMA `rotary_emb.inv_freq` buffers, the release's wrong bos/eos/pad in `config.json`, and the released
order of the 8 added tokens (`[PAD]`, `<im_start>`, `<dream_end>`, ... from the base vocabulary size on). Next to
it: tiny `vision/` (CLIP config + preprocessor config) and `diffusion/` (unet/vae/scheduler configs) folders for
`--vision` / `--diffusion`, with the tiny shapes of `train.tiny_random`.

    >>> ckpt = write_official_checkpoint(tmp_path / "ckpt", layout="plugin_files")
    >>> sorted(p.name for p in ckpt.release.iterdir())[:3]
    ['added_tokens.json', 'clip_vision_embedding.bin', 'config.json']
"""

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from train.tiny_random import TINY_CORPUS

# The release's `added_tokens.json` order: ids base, base+1, ... (32000.. in the 7B release).
RELEASED_ADDED_ORDER = [
    "[PAD]",
    "<im_start>",
    "<dream_end>",
    "<dream_start>",
    "<im_patch>",
    "<im_end>",
    "<image>",
    "<dream>",
]
# The list order of the official code's `additional_special_tokens`.
ADDITIONAL_SPECIAL_TOKENS = [
    "<image>",
    "<im_patch>",
    "<im_start>",
    "<im_end>",
    "<dream>",
    "<dream_start>",
    "<dream_end>",
]
NUM_DREAM_QUERIES = 8
CONDITION_HIDDEN_SIZE = 16
LLAMA = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    hidden_act="silu",
    max_position_embeddings=2048,
    initializer_range=0.02,
    rms_norm_eps=1e-6,
    pretraining_tp=1,
    rope_theta=10000.0,
    rope_scaling=None,
    attention_bias=False,
)
VISION = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)
IMAGE_PROCESSOR = {
    "crop_size": 32,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 32,
}
UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(8, 16),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=CONDITION_HIDDEN_SIZE,
    attention_head_dim=2,
    norm_num_groups=4,
)
VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=(8, 16),
    down_block_types=("DownEncoderBlock2D",) * 2,
    up_block_types=("UpDecoderBlock2D",) * 2,
    norm_num_groups=4,
    sample_size=16,
)
SCHEDULER = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
}
LAYOUTS = ("plugin_files", "full_dump", "sharded_bin", "safetensors")


@dataclass
class OfficialCheckpoint:
    """Paths of a written synthetic checkpoint and its tensors under their official names (bf16)."""

    release: Path
    vision: Path
    diffusion: Path
    llm: dict[str, torch.Tensor] = field(repr=False)
    plugins: dict[str, dict[str, torch.Tensor]] = field(repr=False)
    added_tokens: dict[str, int] = field(default_factory=dict)


def build_llama_tokenizer() -> Tokenizer:
    """A LLaMA-style tokenizer (`<unk>`=0, `<s>`=1, `</s>`=2, 256 byte-fallback tokens, Metaspace BPE)."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=340, special_tokens=["<unk>", "<s>", "</s>", *byte_tokens], show_progress=False
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return tokenizer


def _write_json(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def write_sentencepiece_model(path: Path) -> int:
    """A LLaMA-style SentencePiece `tokenizer.model` (BPE, byte fallback, `<unk>` 0, `<s>` 1, `</s>` 2), as the
    release ships; needs the `sentencepiece` package. Returns its vocabulary size."""
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS * 20),
        model_writer=model,
        model_type="bpe",
        vocab_size=330,
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue()).get_piece_size()


def write_tokenizer_files(folder: Path, sentencepiece: bool = False) -> dict[str, int]:
    """Tokenizer files as the release's slow LlamaTokenizer saved them; returns `added_tokens.json`. The base
    vocabulary is a `tokenizer.model` with `sentencepiece`, else a `tokenizer.json` standing in for it."""
    if sentencepiece:
        base = write_sentencepiece_model(folder / "tokenizer.model")
    else:
        tokenizer = build_llama_tokenizer()
        tokenizer.save(str(folder / "tokenizer.json"))  # the base vocabulary only, like tokenizer.model
        base = tokenizer.get_vocab_size()
    added = {token: base + i for i, token in enumerate(RELEASED_ADDED_ORDER)}
    _write_json(folder / "added_tokens.json", added)
    flags = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
    tokens = {0: "<unk>", 1: "<s>", 2: "</s>"} | {token_id: token for token, token_id in added.items()}
    decoder = {str(token_id): {"content": token, **flags} for token_id, token in tokens.items()}
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": decoder,
            "additional_special_tokens": ADDITIONAL_SPECIAL_TOKENS,
            "bos_token": "<s>",
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": False,
            "model_max_length": 2048,
            "pad_token": "[PAD]",
            "padding_side": "right",
            "sp_model_kwargs": {},
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": True,
        },
    )
    _write_json(
        folder / "special_tokens_map.json",
        {
            "additional_special_tokens": ADDITIONAL_SPECIAL_TOKENS,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "[PAD]",
            "unk_token": "<unk>",
        },
    )
    return added


def _randomize(state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Well-scaled random values (norm weights near 1), so every tensor visibly matters in a forward."""
    out = {}
    for key, tensor in state.items():
        noise = torch.randn(tensor.shape, generator=generator)
        if tensor.dim() == 1 and "norm" in key and key.endswith("weight"):
            out[key] = 1 + 0.1 * noise
        elif tensor.dim() == 1:
            out[key] = 0.1 * noise
        else:
            out[key] = noise / math.sqrt(tensor.shape[-1])
    return out


def build_official_tensors(
    vocab_size: int, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """(LLM state dict, plugin state dicts) with the official key names, bf16."""
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        llama = LlamaForCausalLM(LlamaConfig(**LLAMA, vocab_size=vocab_size, tie_word_embeddings=False))
        clip = CLIPVisionModel(CLIPVisionConfig(**VISION))
    llm = _randomize(llama.state_dict(), generator)
    head_dim = LLAMA["hidden_size"] // LLAMA["num_attention_heads"]
    inv_freq = 1.0 / (LLAMA["rope_theta"] ** (torch.arange(0, head_dim, 2).float() / head_dim))
    for layer in range(LLAMA["num_hidden_layers"]):  # a persistent buffer in the official LLaMA copy
        llm[f"model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()

    hidden, vision_hidden = LLAMA["hidden_size"], VISION["hidden_size"]
    clip_state = {f"clip_vision_model.vision_model.{k}": v for k, v in _randomize(clip.state_dict(), generator).items()}
    num_positions = (VISION["image_size"] // VISION["patch_size"]) ** 2 + 1
    clip_state["clip_vision_model.vision_model.embeddings.position_ids"] = torch.arange(num_positions)[
        None
    ]  # older CLIP
    clip_state["projector.projector.weight"] = torch.randn(hidden, vision_hidden, generator=generator) / math.sqrt(
        vision_hidden
    )
    clip_state["projector.projector.bias"] = 0.1 * torch.randn(hidden, generator=generator)

    torch.manual_seed(seed)  # diffusers' own init for the decoder: only its key names and shapes matter here
    sd_state = {f"unet.{k}": v for k, v in UNet2DConditionModel(**UNET).state_dict().items()}
    sd_state |= {f"vae.{k}": v for k, v in AutoencoderKL(**VAE).state_dict().items()}
    sd_state["projector.projector.weight"] = torch.randn(
        CONDITION_HIDDEN_SIZE, hidden, generator=generator
    ) / math.sqrt(hidden)

    dream_state = {"dream_queries": torch.randn(1, NUM_DREAM_QUERIES, hidden, generator=generator)}
    plugins = {"dream_embedding": dream_state, "clip_vision_embedding": clip_state, "stable_diffusion_head": sd_state}
    return _to_bf16(llm), {name: _to_bf16(state) for name, state in plugins.items()}


def _to_bf16(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The release stores every floating tensor as bf16."""
    return {key: value.to(torch.bfloat16) if value.is_floating_point() else value for key, value in state.items()}


def official_config(vocab_size: int) -> dict:
    """The release's `config.json` at toy size, with its wrong bos 0 / eos 1 / pad -1."""
    target = "omni.models.dreamllm.modeling_plugins."
    return {
        "architectures": ["DreamLLMForCausalMLM"],
        "model_type": "dreamllm",
        **LLAMA,
        "vocab_size": vocab_size,
        "bos_token_id": 0,
        "eos_token_id": 1,
        "pad_token_id": -1,
        "tie_word_embeddings": False,
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.35.2",
        "loss_weight_lm": 1.0,
        "loss_weight_vm": 10.0,
        "loss_scale_schedule": "none",
        "log_attentions": False,
        "log_hidden_states": False,
        "plugins_type": {
            "clip_vision_embedding": "embedding",
            "dream_embedding": "embedding",
            "stable_diffusion_head": "head",
        },
        "plugins_init_kwargs": {
            "clip_vision_embedding": {
                "_target_": target + "CLIPVisionEmbedding",
                "clip_vision_model_name_or_path": "openai/clip-vit-large-patch14",
                "pretrained_model_name_or_path": "none",
                "projector_type": "linear",
                "projector_depth": 1,
                "select_layer": -2,
            },
            "dream_embedding": {
                "_target_": target + "DreamEmbedding",
                "num_dream_queries": NUM_DREAM_QUERIES,
                "embed_hidden_size": LLAMA["hidden_size"],
                "pretrained_model_name_or_path": "none",
            },
            "stable_diffusion_head": {
                "_target_": target + "StableDiffusionHead",
                "diffusion_name_or_path": "stabilityai/stable-diffusion-2-1-base",
                "pretrained_model_name_or_path": "none",
                "projector_type": "linear",
                "projector_depth": 1,
            },
        },
    }


def write_official_checkpoint(
    root: str | Path, layout: str = "plugin_files", seed: int = 0, sentencepiece: bool = False
) -> OfficialCheckpoint:
    """Write `release/`, `vision/` and `diffusion/` under `root`.

    layout: "plugin_files" (the release: LLM-only pytorch_model.bin + three plugin .bin files), "full_dump" (FSDP
    full state dict: plugin tensors inside pytorch_model.bin, no plugin files), "sharded_bin" (LLM in two
    pytorch_model-0000x-of-00002.bin shards + index), "safetensors" (LLM in model.safetensors).
    sentencepiece: ship the tokenizer as `tokenizer.model`, exactly as the release does (needs `sentencepiece`).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}")
    root = Path(root)
    release = root / "release"
    release.mkdir(parents=True)
    added = write_tokenizer_files(release, sentencepiece)
    vocab_size = max(added.values()) + 1
    llm, plugins = build_official_tensors(vocab_size, seed)
    _write_json(release / "config.json", official_config(vocab_size))
    _write_json(
        release / "generation_config.json",
        {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.35.2"},
    )

    if layout == "full_dump":
        full = dict(llm)
        full |= {f"model.dream_embedding.{k}": v for k, v in plugins["dream_embedding"].items()}
        full |= {f"model.clip_vision_embedding.{k}": v for k, v in plugins["clip_vision_embedding"].items()}
        full |= {f"stable_diffusion_head.{k}": v for k, v in plugins["stable_diffusion_head"].items()}
        torch.save(full, release / "pytorch_model.bin")
    else:
        for name, state in plugins.items():
            torch.save(state, release / f"{name}.bin")
        if layout == "plugin_files":
            torch.save(llm, release / "pytorch_model.bin")
        elif layout == "safetensors":
            save_file(
                {k: v.contiguous() for k, v in llm.items()},
                str(release / "model.safetensors"),
                metadata={"format": "pt"},
            )
        else:
            keys = list(llm)
            shards = {
                "pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2],
                "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2 :],
            }
            for file_name, shard_keys in shards.items():
                torch.save({k: llm[k] for k in shard_keys}, release / file_name)
            weight_map = {k: file_name for file_name, shard_keys in shards.items() for k in shard_keys}
            _write_json(
                release / "pytorch_model.bin.index.json", {"metadata": {"total_size": 0}, "weight_map": weight_map}
            )

    vision = root / "vision"
    CLIPVisionConfig(**VISION).save_pretrained(vision)
    _write_json(vision / "preprocessor_config.json", IMAGE_PROCESSOR)
    diffusion = root / "diffusion"
    _write_json(diffusion / "unet" / "config.json", {"_class_name": "UNet2DConditionModel", **UNET})
    _write_json(diffusion / "vae" / "config.json", {"_class_name": "AutoencoderKL", **VAE})
    _write_json(diffusion / "scheduler" / "scheduler_config.json", SCHEDULER)
    return OfficialCheckpoint(release, vision, diffusion, llm, plugins, added)


__all__ = ["OfficialCheckpoint", "write_official_checkpoint", "LAYOUTS", "NUM_DREAM_QUERIES", "LLAMA", "VISION"]
