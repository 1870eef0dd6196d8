"""Where in the noise schedule a decoder's loss depends on each caption attribute: for pictures of one shape, the
noise-prediction loss under the true caption's condition against a caption with one attribute changed, per
timestep band. Only where the gap is large can the diffusion loss teach DreamLLM that attribute.

    python -m train.toy probe runs/toy/stage0/diffusion

    from train.toy.probe import timestep_sensitivity
    rows = timestep_sensitivity(pipeline)   # [{'timesteps': (0, 100), 'loss': 0.055, 'color': 0.11, ...}, ...]
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
    pixels = render_batch(scenes) * 2 - 1
    latents = pipeline.vae.encode(pixels).latent_dist.mean * pipeline.vae.config.scaling_factor
    texts = {"true": [caption(scene) for scene in scenes]}
    texts |= {name: [caption(_changed(scene, name, rng)) for scene in scenes] for name in ATTRIBUTES}
    conditions = {name: encode_text(pipeline.text_encoder, pipeline.tokenizer, batch) for name, batch in texts.items()}
    total = pipeline.scheduler.config.num_train_timesteps
    rows = []
    for band in range(num_bands):
        low, high = band * total // num_bands, (band + 1) * total // num_bands
        generator = torch.Generator().manual_seed(seed + band)
        losses = dict.fromkeys(conditions, 0.0)
        for _ in range(draws):
            noise = torch.randn(latents.shape, generator=generator)
            timesteps = torch.randint(low, high, (num_scenes,), generator=generator)
            noisy = pipeline.scheduler.add_noise(latents, noise, timesteps)
            for name, condition in conditions.items():
                prediction = pipeline.unet(noisy, timesteps, condition).sample
                losses[name] += torch.nn.functional.mse_loss(prediction, noise).item() / draws
        rows.append({"timesteps": (low, high), "loss": losses["true"]}
                    | {name: losses[name] - losses["true"] for name in ATTRIBUTES})
    return rows


def sensitivity_table(rows: list[dict]) -> str:
    lines = ["| timesteps | loss, true caption | + colour changed | + shape changed | + position changed |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        low, high = row["timesteps"]
        gaps = " | ".join(f"{row[name]:+.4f}" for name in ATTRIBUTES)
        lines.append(f"| {low}-{high - 1} | {row['loss']:.4f} | {gaps} |")
    return "\n".join(lines)
