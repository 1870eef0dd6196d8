"""Stage 0, part 2: the world's Stable Diffusion. An AutoencoderKL is trained first (reconstruction + a small KL),
then a UNet2DConditionModel on its latents, conditioned on the frozen CLIP text tower's last hidden states with 10%
of captions dropped for classifier-free guidance. Saved as a StableDiffusionPipeline folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel, PreTrainedTokenizerFast

from train.diffusion_loss import min_snr_weights

from .judge import judge, score_caption
from .stage0_common import clip_input_ids, progress, render_batch, scaled, scaled_batch, smooth, warmup_cosine
from .world import as_rng, caption, sample_scene

VAE_STEPS = 500
VAE_BATCH = 16
VAE_LR = 1e-3
VAE_KL_WEIGHT = 1e-4  # per latent element, against a per-pixel MSE: latents stay smooth without losing detail
# 4,500 steps draw the held-out captions through the text tower 95 / 98 / 85% right, against 89 / 92 / 83% after 3,000:
# DreamLLM cannot draw better than its decoder, and colour needed those 6 points (README, "The colour target").
UNET_STEPS = 4500
UNET_BATCH = 32
UNET_LR = 2e-3
UNET_EMA = 0.995
LATENT_SET = 4096  # pictures encoded once (~17 ms each); the UNet sees each several times
CAPTION_DROP = 0.1
PAIR_FRACTION = 0.7  # of the UNet's pictures with two shapes (0.5 in the world)
MIN_SNR_GAMMA = 5.0
POSTERIOR_LOG_VARIANCE = -12.0  # posterior std ~0.0025 at the start (latents have std ~1.4 before scaling)
# 64 px -> 16x16x4 latents: two downsamplings, narrow at full resolution where convolutions cost the most.
VAE_CHANNELS = (16, 32, 64)
UNET_CHANNELS = (32, 64, 128)
# Attention at 8x8 and 4x4 only: text and layout meet where a latent pixel covers a quarter of a shape; the 16x16
# level only refines edges.
UNET_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
UNET_UP = ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


def build_vae() -> AutoencoderKL:
    n = len(VAE_CHANNELS)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=VAE_CHANNELS,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
        mid_block_add_attention=False,  # a 16x16 latent of flat shapes needs no global attention to reconstruct
    )


def build_unet(cross_attention_dim: int, latent_size: int) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=UNET_CHANNELS,
        layers_per_block=1,
        down_block_types=UNET_DOWN,
        up_block_types=UNET_UP,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
        # The attention-pooled text is also added to the timestep embedding, so every block sees the caption from the
        # first step on; cross-attention alone takes thousands of steps to start using it. It reads the same
        # `encoder_hidden_states`, so StableDiffusionPipeline (and DreamLLM's dream queries) drive it unchanged.
        addition_embed_type="text",
        addition_embed_type_num_heads=4,
        # ...and that embedding scales as well as shifts each resnet's features (FiLM), so a colour word can recolour
        # a shape's features rather than only add a constant to them.
        resnet_time_scale_shift="scale_shift",
    )


def build_scheduler() -> DDPMScheduler:
    """Stable Diffusion's own noise schedule and spacing (scaled-linear betas, 'leading' + offset 1), epsilon
    prediction; no x0 clipping, since latents are not in [-1, 1]."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="epsilon",
        clip_sample=False,
        timestep_spacing="leading",
        steps_offset=1,
    )


def _pixels(scenes) -> torch.Tensor:
    return render_batch(scenes) * 2 - 1


def train_vae(seed: int, steps_scale: float, log: dict) -> AutoencoderKL:
    """Reconstruction (MSE) + a small KL; sets `scaling_factor` to 1 / the std of the latents (posterior means, which
    the UNet is trained on)."""
    torch.manual_seed(seed)
    vae = build_vae().train()
    narrow_posterior(vae)
    rng, noise = as_rng(seed + 21), torch.Generator().manual_seed(seed + 22)
    steps, batch = scaled(VAE_STEPS, steps_scale), scaled_batch(VAE_BATCH, steps_scale)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=VAE_LR, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps, warmup=50)
    losses = []
    for _, bar in progress(steps, "vae"):
        x = _pixels([sample_scene(rng) for _ in range(batch)])
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample(noise)).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = F.mse_loss(reconstruction, x) + VAE_KL_WEIGHT * kl
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    vae.eval()
    with torch.no_grad():
        pixels = _pixels([sample_scene(rng) for _ in range(scaled_batch(256, steps_scale))])
        latents = vae.encode(pixels).latent_dist.mode()
        center_latents(vae, latents.mean(dim=(0, 2, 3)))
        latents = latents - latents.mean(dim=(0, 2, 3), keepdim=True)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    log["vae_loss"] = smooth(losses, max(1, steps // 50))
    log["vae_final_loss"] = float(np.mean(losses[-20:]))
    log["vae_scaling_factor"] = vae.config.scaling_factor
    return vae


@torch.no_grad()
def narrow_posterior(vae: AutoencoderKL, log_variance: float = POSTERIOR_LOG_VARIANCE) -> None:
    """Start the encoder's posterior at std exp(log_variance / 2) rather than 1. Stable Diffusion's VAE ends up with a
    posterior far narrower than its latents, and DreamLLM's loss (like diffusers' training scripts) encodes targets
    with `latent_dist.sample()`; a short run with a small KL would leave a wide posterior whose noise the UNet cannot
    tell from diffusion noise. The 1x1 `quant_conv` maps the encoder's (mean, log-variance) channels; its
    log-variance bias sets the start."""
    channels = vae.config.latent_channels
    vae.quant_conv.bias[channels:] = log_variance


@torch.no_grad()
def center_latents(vae: AutoencoderKL, mean: torch.Tensor) -> None:
    """Shift the latent space by -mean per channel, exactly: the encoder's 1x1 `quant_conv` subtracts it and the
    decoder's 1x1 `post_quant_conv` adds it back. Stable Diffusion pipelines only scale latents (no shift), and
    diffusion starts from zero-mean noise, so zero-mean latents are what they model best."""
    channels = mean.numel()
    vae.quant_conv.bias[:channels] -= mean
    vae.post_quant_conv.bias += vae.post_quant_conv.weight[:, :, 0, 0] @ mean


@torch.no_grad()
def vae_reconstruction_accuracy(vae: AutoencoderKL, seed: int, num_images: int = 200) -> float:
    """Fraction of pictures whose reconstruction the judge reads exactly as the scene."""
    rng = as_rng(seed)
    scenes = [sample_scene(rng) for _ in range(num_images)]
    hits = []
    for i in range(0, num_images, 50):
        batch = scenes[i : i + 50]
        images = (vae.decode(vae.encode(_pixels(batch)).latent_dist.mode()).sample.clamp(-1, 1) + 1) * 127.5
        arrays = images.round().byte().permute(0, 2, 3, 1).numpy()
        hits += [sorted(d.attributes for d in judge(a)) == sorted(s.attributes) for a, s in zip(arrays, batch)]
    return float(np.mean(hits))


@torch.no_grad()
def encode_text(text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerFast, captions: list[str]) -> torch.Tensor:
    """Last hidden states exactly as StableDiffusionPipeline conditions on them."""
    return text_encoder(clip_input_ids(tokenizer, captions))[0]


@torch.no_grad()
def _latent_set(vae: AutoencoderKL, text_encoder, tokenizer, seed: int, size: int):
    """`size` random pictures as scaled latents and their caption embeddings, mostly of two shapes (binding each
    colour and shape to its place is what takes longest to learn). Latents are posterior means: a posterior
    sample's noise is indistinguishable from diffusion noise at small t, and the decoder does not need it."""
    rng = as_rng(seed + 31)
    latents, texts = [], []
    for start in range(0, size, 256):
        scenes = [sample_scene(rng, two_shape_share=PAIR_FRACTION) for _ in range(min(256, size - start))]
        latents.append(vae.encode(_pixels(scenes)).latent_dist.mode() * vae.config.scaling_factor)
        texts.append(encode_text(text_encoder, tokenizer, [caption(s) for s in scenes]))
    return torch.cat(latents), torch.cat(texts)


def train_unet(
    vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerFast, seed: int, steps_scale: float,
    log: dict,
) -> UNet2DConditionModel:
    """Epsilon-prediction DDPM loss on the VAE's latents; the EMA weights are returned."""
    started = time.perf_counter()
    latents, texts = _latent_set(vae, text_encoder, tokenizer, seed, scaled(LATENT_SET, steps_scale, minimum=64))
    log["unet_latent_set_seconds"] = round(time.perf_counter() - started, 1)
    empty = encode_text(text_encoder, tokenizer, [""])
    torch.manual_seed(seed)
    unet = build_unet(text_encoder.config.hidden_size, latents.shape[-1]).train()
    ema = EMAModel(unet.parameters(), decay=UNET_EMA)  # decay warms up: (1 + n) / (10 + n) until UNET_EMA
    scheduler = build_scheduler()
    # Min-SNR-gamma weights: nearly clean steps, whose epsilon loss is all fine detail, count less; colour, shape and
    # layout are decided at the noisier steps and converge several times faster.
    min_snr_weight = min_snr_weights(scheduler, torch.arange(scheduler.config.num_train_timesteps), MIN_SNR_GAMMA)
    generator = torch.Generator().manual_seed(seed + 41)
    steps, batch = scaled(UNET_STEPS, steps_scale), scaled_batch(UNET_BATCH, steps_scale)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=UNET_LR, weight_decay=0.0)
    schedule = warmup_cosine(optimizer, steps, warmup=100)
    losses = []
    for _, bar in progress(steps, "unet"):
        index = torch.randint(len(latents), (batch,), generator=generator)
        x0, condition = latents[index], texts[index].clone()
        condition[torch.rand(batch, generator=generator) < CAPTION_DROP] = empty
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch,), generator=generator)
        prediction = unet(scheduler.add_noise(x0, noise, t), t, condition).sample
        loss = (min_snr_weight[t] * F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3))).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    ema.copy_to(unet.parameters())
    log["unet_loss"] = smooth(losses, max(1, steps // 50))
    log["unet_final_loss"] = float(np.mean(losses[-50:]))
    return unet.eval()


def make_pipeline(
    vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: PreTrainedTokenizerFast, unet: UNet2DConditionModel
) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def evaluate_pipeline(
    pipeline: StableDiffusionPipeline, seed: int, num_captions: int = 50, num_inference_steps: int = 25, **kwargs
) -> dict[str, float]:
    """Text-to-image accuracy judged per attribute, over random captions (half one shape, half two)."""
    rng = as_rng(seed)
    captions = [caption(sample_scene(rng, 1 + i % 2)) for i in range(num_captions)]
    images = []
    pipeline.set_progress_bar_config(disable=True)
    for start in range(0, num_captions, 25):
        batch = captions[start : start + 25]
        generator = torch.Generator().manual_seed(seed + start)
        images += pipeline(batch, num_inference_steps=num_inference_steps, generator=generator, **kwargs).images
    scores = [score_caption(image, text) for image, text in zip(images, captions)]
    result = {}
    for group, rows in (("all", scores), ("single", scores[0::2]), ("pair", scores[1::2])):
        for attribute in ("color", "shape", "position"):
            result[f"{group}_{attribute}"] = float(np.mean([row[attribute] for row in rows])) if rows else 0.0
    result["all_exact"] = float(np.mean([all(row.values()) for row in scores]))
    return result


def save_pipeline(pipeline: StableDiffusionPipeline, path: Path) -> None:
    pipeline.save_pretrained(path)
