"""Tiny random pretrained components in their native formats (an LLM with its tokenizer, a vision tower with its
image processor, a diffusers decoder folder of each family: Stable Diffusion, SDXL, SD3), for tests and quick tries
of `train.assemble --preset tiny-random`.

Each supported family is built from its own transformers classes and saved with `save_pretrained`, so the folders
load exactly as the full-size checkpoints do:

    python -m train.tiny_random --llm qwen2 --vision siglip --decoder sd3 --output /tmp/tiny-parts
    python -m train.assemble --llm /tmp/tiny-parts/llm --vision /tmp/tiny-parts/vision \
        --diffusion /tmp/tiny-parts/diffusion --output /tmp/dreamllm-tiny-qwen2-siglip
"""

import argparse
import json
import string
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)

TINY_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "What is this? It is a photo of a cat sitting on a red sofa.",
    "Draw a blue square in the center. Tell a short story with pictures.",
    "The quick brown fox jumps over the lazy dog 0123456789 , . ? ! : ; ' \" ( ) - _ / \\ < > [ ] { }",
]
LLM_FAMILIES = ("llama", "qwen2", "qwen3", "mistral")
VISION_FAMILIES = ("clip", "siglip")
DECODER_FAMILIES = ("sd", "sdxl", "sd3")
# Pooled-input width of the tiny SDXL and SD3 decoders (1280 and 2048 at full size).
TINY_POOLED_SIZE = 12
# The chat templates the families' instruct checkpoints ship: Qwen2-Instruct's ChatML and Mistral-7B-Instruct-v0.1's.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)
# One small shape for every LLM family (the strict config validation needs heads to divide the width).
TINY_LLM_SHAPE = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    max_position_embeddings=2048,
)
TINY_VISION_SHAPE = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)


def build_tiny_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with LLaMA's `<unk>`=0, `<s>`=1, `</s>`=2 and a `<s>` prefix: any text encodes."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def _bpe_vocab(special_tokens: list[str], vocab_size: int, byte_level: bool) -> tuple[dict[str, int], list[tuple]]:
    """Vocabulary and merges of a BPE trained on the tiny corpus (byte-level as GPT-2/Qwen2, or SentencePiece-style
    with `▁` as LLaMA/Mistral), for the families' own tokenizer classes to build their pipelines around."""
    tokenizer = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if byte_level else pre_tokenizers.Metaspace()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else sorted(set(string.printable.strip()) | {"▁"})
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=alphabet, show_progress=False
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    return model["vocab"], [tuple(merge) for merge in model["merges"]]


def build_tiny_qwen2_tokenizer(vocab_size: int = 320) -> Qwen2Tokenizer:
    """A `Qwen2Tokenizer` (Qwen2/2.5/3's class: byte-level BPE, Qwen's pre-tokenizer) as Qwen2.5-Instruct's is set
    up: no BOS, `<|endoftext|>` pad, `<|im_start|>` / `<|im_end|>` specials, eos `<|im_end|>`, a ChatML template."""
    vocab, merges = _bpe_vocab(["<|endoftext|>"], vocab_size, byte_level=True)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, eos_token="<|im_end|>", chat_template=QWEN2_CHAT_TEMPLATE)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    return tokenizer


def build_tiny_mistral_tokenizer(vocab_size: int = 480) -> LlamaTokenizer:
    """A `LlamaTokenizer` as Mistral-7B-Instruct's is set up: `<unk>`=0, `<s>`=1, `</s>`=2, byte-fallback pieces, `<s>`
    added to every sequence, no pad, the `[INST]` chat template."""
    byte_tokens = [f"<0x{byte:02X}>" for byte in range(256)]  # LLaMA's byte-fallback pieces, ids 3-258
    vocab, merges = _bpe_vocab(["<unk>", "<s>", "</s>", *byte_tokens], vocab_size, byte_level=False)
    return LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, chat_template=MISTRAL_CHAT_TEMPLATE)


def save_tiny_llm(folder: Path, family: str = "llama") -> None:
    """A random causal LM of `family` with its tokenizer, saved in the family's native format."""
    if family == "llama":
        tokenizer = build_tiny_tokenizer()
        llm = LlamaForCausalLM(
            LlamaConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                        **TINY_LLM_SHAPE)
        )
    elif family in ("qwen2", "qwen3"):  # Qwen3 keeps Qwen2's tokenizer class and conventions
        tokenizer = build_tiny_qwen2_tokenizer()
        # Like Qwen2.5's and Qwen3's small checkpoints: tied embeddings, and more embedding rows than tokens.
        padded_vocab = -(-(len(tokenizer) + 16) // 64) * 64
        qwen2 = family == "qwen2"
        config_class, model_class = (Qwen2Config, Qwen2ForCausalLM) if qwen2 else (Qwen3Config, Qwen3ForCausalLM)
        llm = model_class(
            config_class(
                vocab_size=padded_vocab,
                bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tokenizer.eos_token_id,
                tie_word_embeddings=True,
                **TINY_LLM_SHAPE,
            )
        )
    elif family == "mistral":
        tokenizer = build_tiny_mistral_tokenizer()
        llm = MistralForCausalLM(
            MistralConfig(vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                          sliding_window=4096, **TINY_LLM_SHAPE)
        )
    else:
        raise ValueError(f"unknown LLM family {family!r}: expected one of {LLM_FAMILIES}")
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def save_tiny_vision(folder: Path, family: str = "clip") -> None:
    """A random vision tower of `family` with its image processor (PIL backend), saved in the native format."""
    size = TINY_VISION_SHAPE["image_size"]
    if family == "clip":
        CLIPVisionModel(CLIPVisionConfig(**TINY_VISION_SHAPE)).save_pretrained(folder)
        crop = {"height": size, "width": size}
        CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size=crop).save_pretrained(folder)
    elif family == "siglip":
        SiglipVisionModel(SiglipVisionConfig(**TINY_VISION_SHAPE)).save_pretrained(folder)
        SiglipImageProcessorPil(size={"height": size, "width": size}).save_pretrained(folder)
    else:
        raise ValueError(f"unknown vision family {family!r}: expected one of {VISION_FAMILIES}")


def build_tiny_components(
    root: str | Path, seed: int = 0, condition_hidden_size: int = 16, llm: str = "llama", vision: str = "clip",
    decoder: str = "sd",
) -> dict[str, Path]:
    """Write `llm/`, `vision/` and `diffusion/` under `root` with `save_pretrained`; returns their paths."""
    if llm not in LLM_FAMILIES or vision not in VISION_FAMILIES or decoder not in DECODER_FAMILIES:
        raise ValueError(f"unknown family llm={llm!r} vision={vision!r} decoder={decoder!r}: expected "
                         f"{LLM_FAMILIES}, {VISION_FAMILIES} and {DECODER_FAMILIES}")
    root = Path(root)
    torch.manual_seed(seed)
    save_tiny_llm(root / "llm", llm)
    save_tiny_vision(root / "vision", vision)
    diffusion = root / "diffusion"
    save_tiny_decoder(diffusion, condition_hidden_size, family=decoder)
    return {"llm": root / "llm", "vision": root / "vision", "diffusion": diffusion}


def save_tiny_decoder(
    folder: Path,
    condition_hidden_size: int,
    channels: tuple[int, int] = (8, 16),
    latent_size: int = 8,
    attention_head_dim: int = 2,
    norm_num_groups: int = 4,
    family: str = "sd",
) -> None:
    """A random diffusers decoder of `family` whose images are `2 * latent_size` px, in its native layout: `sd` and
    `sdxl` a `unet/` (SDXL's with `text_time` added conditioning), `sd3` an MMDiT `transformer/` over a 16-channel
    VAE with a shift factor and a shifted flow-matching scheduler; each with `vae/` and `scheduler/`."""
    if family not in DECODER_FAMILIES:
        raise ValueError(f"unknown decoder family {family!r}: expected one of {DECODER_FAMILIES}")
    if family == "sd3":
        _save_tiny_sd3(folder, condition_hidden_size, channels, latent_size, norm_num_groups)
        return
    sdxl = dict(addition_embed_type="text_time", addition_time_embed_dim=4,
                projection_class_embeddings_input_dim=TINY_POOLED_SIZE + 6 * 4) if family == "sdxl" else {}
    UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=channels,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=condition_hidden_size,
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups,
        **sdxl,
    ).save_pretrained(folder / "unet")
    _save_tiny_vae(folder, channels, latent_size, norm_num_groups)
    if family == "sdxl":  # SDXL ships an Euler sampler over the same scaled-linear betas
        EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").save_pretrained(
            folder / "scheduler"
        )
        return
    DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    ).save_pretrained(folder / "scheduler")


def _save_tiny_vae(folder: Path, channels: tuple[int, int], latent_size: int, norm_num_groups: int,
                   **family_config) -> None:
    """A two-block `AutoencoderKL` in `folder/vae` (4 latent channels unless `family_config` says otherwise)."""
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=family_config.pop("latent_channels", 4),
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=norm_num_groups,
        sample_size=2 * latent_size,
        **family_config,
    ).save_pretrained(folder / "vae")


def _save_tiny_sd3(folder: Path, condition_hidden_size: int, channels: tuple[int, int], latent_size: int,
                   norm_num_groups: int) -> None:
    """SD3.5's layout at tiny size: `SD3Transformer2DModel`, a 16-channel `AutoencoderKL` with SD3's scaling and
    shift factors, `FlowMatchEulerDiscreteScheduler` with SD3's shift of 3."""
    SD3Transformer2DModel(
        sample_size=latent_size,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=condition_hidden_size,
        caption_projection_dim=16,
        pooled_projection_dim=TINY_POOLED_SIZE,
        pos_embed_max_size=latent_size,
    ).save_pretrained(folder / "transformer")
    _save_tiny_vae(folder, channels, latent_size, norm_num_groups, latent_channels=16, scaling_factor=1.5305,
                   shift_factor=0.0609, use_quant_conv=False, use_post_quant_conv=False)
    FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0).save_pretrained(folder / "scheduler")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", choices=LLM_FAMILIES, default="llama")
    parser.add_argument("--vision", choices=VISION_FAMILIES, default="clip")
    parser.add_argument("--decoder", choices=DECODER_FAMILIES, default="sd")
    parser.add_argument("--condition-hidden-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", required=True, help="a new folder; llm/, vision/ and diffusion/ are written in it")
    args = parser.parse_args(argv)
    if Path(args.output).exists():
        parser.error(f"{args.output} exists; choose a new output folder")
    from dreamllm_common.folders import staged_folder

    with staged_folder(Path(args.output)) as staging:
        build_tiny_components(staging, args.seed, args.condition_hidden_size, args.llm, args.vision, args.decoder)
    print(f"tiny {args.llm} / {args.vision} / {args.decoder} parts written to {args.output}")


if __name__ == "__main__":
    main()
