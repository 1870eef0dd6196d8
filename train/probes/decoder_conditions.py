"""Where in the noise schedule a decoder's loss depends on each caption attribute: for pictures of one shape, the
noise-prediction loss under the true caption's condition against a caption with one attribute changed, per
timestep band. Only where the gap is large can the diffusion loss teach DreamLLM that attribute. With a DreamLLM
folder on that decoder, the same for two-shape pictures under the decoder's own text condition and DreamLLM's: how
close DreamLLM's conditions come to the text tower's, and whether they keep each colour on its shape.

    python -m train.probes decoder runs/toy/stage0/diffusion [--dreamllm runs/toy/sft]

    from train.probes.decoder_conditions import condition_comparison, timestep_sensitivity
    rows = timestep_sensitivity(pipeline)   # [{'timesteps': (0, 100), 'loss': 0.055, 'color': 0.11, ...}, ...]
    rows = condition_comparison(pipeline, dreamllm_pipe)  # [{'timesteps': (0, 100), 'text': 0.060, ...}, ...]
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from train.toy.stage0_common import render_batch
from train.toy.stage0_diffusion import encode_text
from train.toy.world import ATTRIBUTES, Scene, caption, other_value, sample_scene


def _changed(scene: Scene, attribute: str, rng: np.random.Generator) -> Scene:
    (shape,) = scene.shapes
    return Scene((replace(shape, **{attribute: other_value(rng, shape, attribute)}),))


@torch.no_grad()
def timestep_sensitivity(
    pipeline: StableDiffusionPipeline, num_scenes: int = 64, num_bands: int = 10, draws: int = 4, seed: int = 5
) -> list[dict]:
    """Per timestep band: the mean loss with the true caption, and how much higher it is with each attribute changed
    (the same noise and timesteps for every caption, so the gaps are paired differences)."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, 1) for _ in range(num_scenes)]
    latents = _latents(pipeline, scenes)
    texts = {"true": [caption(scene) for scene in scenes]}
    texts |= {name: [caption(_changed(scene, name, rng)) for scene in scenes] for name in ATTRIBUTES}
    conditions = {name: encode_text(pipeline.text_encoder, pipeline.tokenizer, batch) for name, batch in texts.items()}
    losses = _band_losses(pipeline, conditions, latents, num_bands, draws, seed)
    return [{"timesteps": band, "loss": row["true"]} | {name: row[name] - row["true"] for name in ATTRIBUTES}
            for band, row in losses]


def _latents(pipeline: StableDiffusionPipeline, scenes: list[Scene]) -> torch.Tensor:
    """The scenes' pictures as the decoder's scaled latents (posterior means)."""
    pixels = render_batch(scenes) * 2 - 1
    return pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor


def _band_losses(
    pipeline: StableDiffusionPipeline, conditions: dict, latents: torch.Tensor, num_bands: int, draws: int, seed: int
) -> list[tuple[tuple[int, int], dict[str, float]]]:
    """[(band, {name: mean noise-prediction loss})] for each `name: condition`, every name under the same noise and
    timesteps."""
    scheduler = pipeline.scheduler
    total = scheduler.config.num_train_timesteps
    rows = []
    for band in range(num_bands):
        low, high = band * total // num_bands, (band + 1) * total // num_bands
        generator = torch.Generator().manual_seed(seed + band)
        losses = dict.fromkeys(conditions, 0.0)
        for _ in range(draws):
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(low, high, (len(latents),), generator=generator)
            noisy = scheduler.add_noise(latents, noise, timesteps)
            for name, condition in conditions.items():
                prediction = pipeline.unet(noisy, timesteps, condition).sample
                losses[name] += torch.nn.functional.mse_loss(prediction, noise).item() / draws
        rows.append(((low, high), losses))
    return rows


def _colours_swapped(scene: Scene) -> Scene:
    first, second = scene.shapes
    return Scene((replace(first, color=second.color), replace(second, color=first.color)))


@torch.no_grad()
def condition_comparison(
    pipeline: StableDiffusionPipeline, dreamllm, num_scenes: int = 96, num_bands: int = 10, draws: int = 4,
    seed: int = 6,
) -> list[dict]:
    """Per timestep band, on two-shape pictures: the decoder's loss under its own CLIP text condition (`text`) and
    under the condition a `DreamLLMPipeline` built on the same decoder makes of the same caption (`dreamllm`), and
    how much each rises when the caption swaps the two shapes' colours (`*_swap`; paired, as in
    `timestep_sensitivity`). Both run through `pipeline`'s UNet, which must be the DreamLLM's."""
    decoder, theirs = pipeline.unet.state_dict(), dreamllm.unet.state_dict()
    if decoder.keys() != theirs.keys() or not all(torch.equal(value, theirs[key]) for key, value in decoder.items()):
        raise ValueError("the DreamLLM folder's UNet is not this Stable Diffusion folder's: losses would not compare")
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, 2) for _ in range(num_scenes)]
    latents = _latents(pipeline, scenes)
    texts = {"true": [caption(scene) for scene in scenes], "swap": [caption(_colours_swapped(s)) for s in scenes]}
    conditions = {}
    for name, batch in texts.items():
        conditions[f"text_{name}"] = encode_text(pipeline.text_encoder, pipeline.tokenizer, batch)
        conditions[f"dreamllm_{name}"], _ = dreamllm.encode_prompt(
            batch, dreamllm.device, num_images_per_prompt=1, do_classifier_free_guidance=False
        )
    return [
        {"timesteps": band, "text": row["text_true"], "text_swap": row["text_swap"] - row["text_true"],
         "dreamllm": row["dreamllm_true"], "dreamllm_swap": row["dreamllm_swap"] - row["dreamllm_true"]}
        for band, row in _band_losses(pipeline, conditions, latents, num_bands, draws, seed)
    ]


def sensitivity_table(rows: list[dict]) -> str:
    lines = ["| timesteps | loss, true caption | + colour changed | + shape changed | + position changed |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        low, high = row["timesteps"]
        gaps = " | ".join(f"{row[name]:+.4f}" for name in ATTRIBUTES)
        lines.append(f"| {low}-{high - 1} | {row['loss']:.4f} | {gaps} |")
    return "\n".join(lines)


def comparison_table(rows: list[dict]) -> str:
    lines = ["| timesteps | loss, text tower | + colours swapped | loss, DreamLLM | + colours swapped |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        low, high = row["timesteps"]
        lines.append(f"| {low}-{high - 1} | {row['text']:.4f} | {row['text_swap']:+.4f} | {row['dreamllm']:.4f} | "
                     f"{row['dreamllm_swap']:+.4f} |")
    return "\n".join(lines)
