"""Tiny random pretrained components in their native formats (an LLM with tokenizer, a CLIP vision model with its
image processor, a Stable Diffusion folder), for tests and quick tries of `train.assemble --preset tiny-random`."""

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM
from transformers import PreTrainedTokenizerFast

TINY_CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "What is this? It is a photo of a cat sitting on a red sofa.",
    "Draw a blue square in the center. Tell a short story with pictures.",
    "The quick brown fox jumps over the lazy dog 0123456789 , . ? ! : ; ' \" ( ) - _ / \\ < > [ ] { }",
]


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


def build_tiny_components(root: str | Path, seed: int = 0, condition_hidden_size: int = 16) -> dict[str, Path]:
    """Write `llm/`, `vision/` and `diffusion/` under `root` with `save_pretrained`; returns their paths."""
    root = Path(root)
    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer()
    llm = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            bos_token_id=1,
            eos_token_id=2,
            tie_word_embeddings=False,
        )
    )
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")

    vision_config = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
    )
    CLIPVisionModel(vision_config).save_pretrained(root / "vision")
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "vision")

    diffusion = root / "diffusion"
    save_tiny_decoder(diffusion, condition_hidden_size)
    return {"llm": root / "llm", "vision": root / "vision", "diffusion": diffusion}


def save_tiny_decoder(
    folder: Path,
    condition_hidden_size: int,
    channels: tuple[int, int] = (8, 16),
    latent_size: int = 8,
    attention_head_dim: int = 2,
    norm_num_groups: int = 4,
) -> None:
    """A random Stable Diffusion decoder (`unet/`, `vae/`, `scheduler/`) whose images are `2 * latent_size` px."""
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
    ).save_pretrained(folder / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=norm_num_groups,
        sample_size=2 * latent_size,
    ).save_pretrained(folder / "vae")
    DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    ).save_pretrained(folder / "scheduler")
