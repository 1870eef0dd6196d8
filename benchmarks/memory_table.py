"""Training memory of DreamLLM-7B per stage and per GPU, computed on the meta device (no weights, no memory).

The model is the released 7B configuration (`DreamLLMConfig()`: Vicuna-7B + CLIP ViT-L/14) with the SD-2.1-base
UNet and VAE of `train.convert.configs`, all built on the meta device. Parameter counts come from the
modules; activations are the bytes autograd saves for backward in a meta forward (`saved_tensors_hooks`):

    python benchmarks/memory_table.py                 # markdown table (docs/scaling.md)
    python benchmarks/memory_table.py --seq 1024 --micro_batch 2
    python benchmarks/memory_table.py --backbone qwen2.5-7b-siglip   # Qwen2.5-7B-Instruct + SigLIP (docs/backbones.md)
    python benchmarks/memory_table.py --backbone qwen2.5-7b-siglip-sd3.5m   # ... + SD3.5-medium (docs/backbones.md)
    python benchmarks/memory_table.py --backbone vicuna-7b-clip-sdxl        # Vicuna-7B + CLIP + SDXL-base

Bytes per parameter (bf16 mixed precision, AdamW, as `python -m train --bf16 true` runs):
- trained: fp32 weight 4 + fp32 gradient 4 + AdamW moments 8 = 16 B (sharded /N under FSDP2 and ZeRO-3);
- frozen, inside the prepared model: 4 B under FSDP2 (fp32, sharded, CLIP ignored hence whole), 2 B under ZeRO-3
  (DeepSpeed holds bf16 weights; CLIP is partitioned with the rest);
- frozen decoder (outside the prepared model, whole on every GPU): UNet bf16 2 B, VAE fp32 4 B.
Activations (per GPU, micro-batch x sequence, one created image per sample): with activation checkpointing, every
LLM layer keeps its input, one layer is recomputed at a time, plus the LM head's fp32 logits and the UNet's saved
tensors (its own checkpointing on). They do not shrink with the number of GPUs. Transient buffers (FSDP's gathered
layer, NCCL buckets, allocator fragmentation) come on top: plan 10-20 % headroom.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, SD3Transformer2DModel, UNet2DConditionModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configuration_dreamllm import SPECIAL_TOKENS, DreamLLMConfig  # noqa: E402
from decoders_dreamllm import decoder_family  # noqa: E402
from modeling_dreamllm import DreamLLMForConditionalGeneration  # noqa: E402
from train.convert.configs import SD21_BASE_UNET_CONFIG, SD21_BASE_VAE_CONFIG  # noqa: E402
from train.stages import LANGUAGE_MODEL_TARGETS, PROJECTORS_AND_QUERIES, new_token_ids  # noqa: E402

GIB = 1024**3
TRAINED_BYTES = 4 + 4 + 8  # fp32 weight, fp32 gradient, AdamW exp_avg + exp_avg_sq


@dataclass
class Parts:
    """Parameter counts of the 7B model's parts."""

    llm: int  # language model + lm_head
    clip: int
    projectors: int  # visual projector, dream queries, condition projector (and pooled projector)
    unet: int
    vae: int
    lora: int  # LoRA adapters (rank r) on the LLM's projections + the new tokens' embedding / lm_head rows


def qwen25_7b_siglip_config() -> DreamLLMConfig:
    """Qwen2.5-7B-Instruct + SigLIP-so400m-patch14-384 (the shapes of their Hub configs; 27 x 27 = 729 image tokens,
    no CLS) + the SD-2.1-base condition width, with the seven DreamLLM tokens after Qwen's 151665."""
    text = dict(
        model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=151645, pad_token_id=151643,
    )
    vision = dict(
        model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
        num_attention_heads=16, image_size=384, patch_size=14,
    )
    ids = {name: 151665 + index for index, name in enumerate(SPECIAL_TOKENS)}
    return DreamLLMConfig(text_config=text, vision_config=vision, vision_feature_select_strategy="full", **ids)


# The other decoders' shapes, from their Hub configs (stabilityai/stable-diffusion-xl-base-1.0 unet/,
# stabilityai/stable-diffusion-3.5-medium transformer/ and vae/); SDXL's VAE has SD-2.1's shapes.
SDXL_BASE_UNET_CONFIG = dict(
    sample_size=128, layers_per_block=2, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
)
SD35_MEDIUM_TRANSFORMER_CONFIG = dict(
    sample_size=128, patch_size=2, in_channels=16, out_channels=16, num_layers=24, attention_head_dim=64,
    num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048,
    pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm",
)
SD3_VAE_CONFIG = dict(
    SD21_BASE_VAE_CONFIG, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False,
    use_post_quant_conv=False,
)
# decoder: (label, denoiser class, denoiser config, VAE config)
DECODERS = {
    "sd2.1-base": ("SD-2.1-base", UNet2DConditionModel, SD21_BASE_UNET_CONFIG, SD21_BASE_VAE_CONFIG),
    "sdxl-base": ("SDXL-base", UNet2DConditionModel, SDXL_BASE_UNET_CONFIG, SD21_BASE_VAE_CONFIG),
    "sd3.5-medium": ("SD3.5-medium", SD3Transformer2DModel, SD35_MEDIUM_TRANSFORMER_CONFIG, SD3_VAE_CONFIG),
}


def with_decoder(make_config, decoder: str):
    """`make_config` with the condition widths `train.assemble` reads from `decoder`'s denoiser config."""
    def make() -> DreamLLMConfig:
        _, denoiser_class, denoiser_config, _ = DECODERS[decoder]
        family = decoder_family(denoiser_class.__name__, denoiser_config)
        config = make_config()
        config.condition_hidden_size, config.pooled_condition_hidden_size = family.context_dim, family.pooled_dim
        return config

    return make


# --backbone: (label, vision tower name, configuration, decoder)
BACKBONES = {
    "vicuna-7b-clip": ("DreamLLM-7B", "CLIP", DreamLLMConfig, "sd2.1-base"),
    "qwen2.5-7b-siglip": ("Qwen2.5-7B + SigLIP-so400m", "SigLIP", qwen25_7b_siglip_config, "sd2.1-base"),
    "vicuna-7b-clip-sdxl": ("Vicuna-7B + CLIP + SDXL-base", "CLIP", with_decoder(DreamLLMConfig, "sdxl-base"),
                            "sdxl-base"),
    "qwen2.5-7b-siglip-sd3.5m": ("Qwen2.5-7B + SigLIP-so400m + SD3.5-medium", "SigLIP",
                                 with_decoder(qwen25_7b_siglip_config, "sd3.5-medium"), "sd3.5-medium"),
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def build_meta(config: DreamLLMConfig, decoder: str = "sd2.1-base"):
    _, denoiser_class, denoiser_config, vae_config = DECODERS[decoder]
    with torch.device("meta"):
        model = DreamLLMForConditionalGeneration(config)
        unet = denoiser_class.from_config(denoiser_config)
        vae = AutoencoderKL.from_config(vae_config)
    return model, unet, vae


def lora_parameters(model: DreamLLMForConditionalGeneration, rank: int) -> int:
    """What `train.stages.apply_lora` trains: r x (in + out) per targeted projection, the new tokens' rows."""
    pattern = re.compile(LANGUAGE_MODEL_TARGETS)
    adapters = sum(
        rank * (module.in_features + module.out_features)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name)
    )
    rows = 2 * len(new_token_ids(model.config)) * model.config.text_config.hidden_size
    return adapters + rows


def parts(model, unet, vae, lora_rank: int) -> Parts:
    base = model.model
    return Parts(
        llm=count(base.language_model) + count(model.lm_head),
        clip=count(base.vision_tower),
        projectors=sum(count(getattr(base, name)) for name in (*PROJECTORS_AND_QUERIES, "pooled_projector")
                       if hasattr(base, name)),
        unet=count(unet),
        vae=count(vae),
        lora=lora_parameters(model, lora_rank),
    )


class SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    """Sum of the bytes autograd saves for backward inside the context."""

    def __init__(self):
        self.total = 0

        def pack(tensor):
            self.total += tensor.numel() * tensor.element_size()
            return tensor

        super().__init__(pack, lambda tensor: tensor)

    def __enter__(self):
        super().__enter__()
        return self


def llm_activation_bytes(model: DreamLLMForConditionalGeneration, micro_batch: int, seq: int) -> dict[str, int]:
    """Saved bytes of one bf16 decoder layer (its recompute), of a layer input (what checkpointing keeps), and of
    the LM head with the fp32 cross-entropy, from meta forwards."""
    text = model.config.text_config
    language_model = model.model.language_model.to(torch.bfloat16)
    lm_head = model.lm_head.to(torch.bfloat16)
    with torch.device("meta"):
        hidden = torch.empty(micro_batch, seq, text.hidden_size, dtype=torch.bfloat16, requires_grad=True)
        positions = torch.arange(seq)[None].expand(micro_batch, -1)
        rotary = language_model.rotary_emb(hidden, positions)
        labels = torch.zeros(micro_batch * seq, dtype=torch.long)
    layer = language_model.layers[0]
    one_layer, head = SavedBytes(), SavedBytes()
    with one_layer:
        layer(hidden, attention_mask=None, position_ids=positions, position_embeddings=rotary)
    with head:
        logits = lm_head(hidden)
        torch.nn.functional.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels)
    return {
        "layer": one_layer.total,
        "checkpoint": hidden.numel() * hidden.element_size(),
        "head": head.total,
        "layers": text.num_hidden_layers,
    }


def unet_activation_bytes(unet: torch.nn.Module, config: DreamLLMConfig, micro_batch: int) -> int:
    """Saved bytes of the bf16 denoiser's forward at its native size (SD-2.1-base 512 px, SDXL and SD3.5 1024 px)
    with gradient checkpointing (the gradient reaches the condition, so its activations are kept), called by its
    family's adapter as training calls it."""
    unet = unet.to(torch.bfloat16)
    unet.enable_gradient_checkpointing()
    unet.train()
    size = unet.config.sample_size
    with torch.device("meta"):
        latents = torch.empty(micro_batch, unet.config.in_channels, size, size, dtype=torch.bfloat16)
        width = config.condition_hidden_size + config.pooled_condition_hidden_size
        condition = torch.empty(micro_batch, config.num_dream_queries, width, dtype=torch.bfloat16,
                                requires_grad=True)
        timesteps = torch.zeros(micro_batch, dtype=torch.long)
    family = decoder_family(type(unet).__name__, unet.config)
    saved = SavedBytes()
    with saved:
        family.predict(unet, latents, timesteps, condition, image_size=(8 * size, 8 * size))
    return saved.total


STAGES = {  # what each stage trains (train.stages.STAGES): parameters by part
    "alignment": lambda p: p.projectors,
    "igpt": lambda p: p.projectors + p.llm,
    "sft": lambda p: p.projectors + p.llm,
}


def per_gpu_gib(p: Parts, trained: int, activations: int, strategy: str, gpus: int) -> dict[str, float]:
    """Parameters, gradients, optimizer state, activations and their sum per GPU, in GiB."""
    in_model = p.llm + p.clip + p.projectors
    decoder = 2 * p.unet + 4 * p.vae
    if strategy == "fsdp2":  # the model minus CLIP is sharded; CLIP whole (ignored module), fp32 weights
        weights = 4 * (in_model - p.clip) / gpus + 4 * p.clip + decoder
        grads, optim = 4 * trained / gpus, 8 * trained / gpus
    elif strategy == "zero3":  # everything in the model sharded; bf16 weights + fp32 master of the trained ones
        weights = 2 * in_model / gpus + 4 * trained / gpus + decoder
        grads, optim = 4 * trained / gpus, 8 * trained / gpus
    elif strategy == "lora":  # one GPU: frozen base in bf16, adapters trained in fp32
        weights = 2 * (in_model - trained) + 4 * trained + decoder
        grads, optim = 4 * trained, 8 * trained
    else:
        raise ValueError(f"unknown strategy {strategy!r}: fsdp2, zero3 or lora")
    row = {"params": weights, "grads": grads, "optimizer": optim, "activations": activations}
    row = {key: value / GIB for key, value in row.items()}
    row["total"] = sum(row.values())
    return row


def table(
    micro_batch: int = 1, seq: int = 2048, lora_rank: int = 16, gpu_counts=(8, 32), backbone: str = "vicuna-7b-clip"
) -> str:
    label, vision_name, make_config, decoder = BACKBONES[backbone]
    config = make_config()
    config.text_config._attn_implementation = "sdpa"  # no sequence-squared attention weights kept, as on GPUs
    model, unet, vae = build_meta(config, decoder)
    p = parts(model, unet, vae, lora_rank)
    llm = llm_activation_bytes(model, micro_batch, seq)
    activations = llm["layers"] * llm["checkpoint"] + llm["layer"] + llm["head"] + unet_activation_bytes(
        unet, config, micro_batch
    )
    inference_bytes = 2 * (p.llm + p.clip + p.projectors + p.unet + p.vae)
    lines = [
        f"{label} parameters: LLM {p.llm / 1e9:.2f} B, {vision_name} {p.clip / 1e6:.0f} M, projectors and queries "
        f"{p.projectors / 1e6:.1f} M, {DECODERS[decoder][0]} denoiser {p.unet / 1e6:.0f} M, VAE {p.vae / 1e6:.0f} M; "
        f"LoRA r={lora_rank} {p.lora / 1e6:.1f} M; inference weights bf16 {inference_bytes / GIB:.1f} GiB. "
        f"Activations per GPU (micro-batch {micro_batch} x {seq} tokens, one {8 * unet.config.sample_size} px image): "
        f"{activations / GIB:.2f} GiB (LLM layer inputs {llm['layers'] * llm['checkpoint'] / GIB:.2f}, one layer "
        f"recomputed {llm['layer'] / GIB:.2f}, LM head + loss {llm['head'] / GIB:.2f}).",
        "",
        "| stage | setup | trained | params GiB | grads GiB | optimizer GiB | activations GiB | total GiB/GPU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for stage, trained_of in STAGES.items():
        trained = trained_of(p)
        for strategy in ("fsdp2", "zero3"):
            for gpus in gpu_counts:
                row = per_gpu_gib(p, trained, activations, strategy, gpus)
                setup = f"{'FSDP2' if strategy == 'fsdp2' else 'ZeRO-3'}, {gpus} GPUs"
                lines.append(f"| {stage} | {setup} | {trained / 1e9:.3f} B | {row['params']:.1f} | {row['grads']:.1f} "
                             f"| {row['optimizer']:.1f} | {row['activations']:.1f} | {row['total']:.1f} |")
    row = per_gpu_gib(p, p.lora + p.projectors, activations, "lora", 1)
    lines.append(f"| sft | LoRA r={lora_rank}, 1 GPU | {(p.lora + p.projectors) / 1e9:.3f} B | {row['params']:.1f} "
                 f"| {row['grads']:.2f} | {row['optimizer']:.2f} | {row['activations']:.1f} | {row['total']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--micro_batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=2048, help="tokens per sample (the LLM's context: 2048)")
    parser.add_argument("--lora_r", type=int, default=16)
    parser.add_argument("--backbone", choices=sorted(BACKBONES), default="vicuna-7b-clip")
    args = parser.parse_args(argv)
    print(table(args.micro_batch, args.seq, args.lora_r, backbone=args.backbone))


if __name__ == "__main__":
    main()
