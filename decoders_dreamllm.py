"""Diffusion-decoder families: how DreamLLM's dream-query conditions drive each kind of diffusers denoiser.

One adapter per family, picked from the decoder's own classes (the denoiser's class name and config), used by the
pipeline (`DreamLLMPipeline.predict_noise`) and by the creation loss (`train/diffusion_loss.py`) alike:

- `stable-diffusion` (SD 1.x / 2.x): `UNet2DConditionModel` in `unet/`; context `cross_attention_dim`; no pooled
  vector; DDPM (epsilon or v).
- `stable-diffusion-xl`: `UNet2DConditionModel` with `addition_embed_type="text_time"`; context
  `cross_attention_dim`; pooled `text_embeds` and `time_ids`; DDPM (epsilon or v).
- `stable-diffusion-3` (SD3 / SD3.5): `SD3Transformer2DModel` in `transformer/`; context `joint_attention_dim`;
  `pooled_projections`; flow matching.

A condition is one tensor `(N, Q, context_dim + pooled_dim)`: the model's condition projector writes the first
`context_dim` channels of each dream query, its pooled projector the last `pooled_dim`. The pooled vector is the mean
of the latter over the queries; both projectors being linear, that is the pooled projector applied to the mean of the
dream-query states, the pooling of the official SDXL head and of the SD3.5 retrain. Keeping it one tensor keeps the
null condition, condition dropout, guidance and `prompt_embeds` the same for every family.

    family = decoder_family("UNet2DConditionModel", unet.config)
    prediction = family.predict(unet, noisy_latents, timesteps, conditions)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# Subfolders of a diffusers decoder folder that hold the denoiser, the autoencoder and the noise schedule.
DENOISER_SUBFOLDERS = ("unet", "transformer")
DECODER_PARTS = ("vae", "scheduler")
# Schedulers trained by flow matching: a folder shipping one samples with it (DPM-Solver++ is for DDPM decoders).
FLOW_MATCHING_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)


class StableDiffusionDecoder:
    """SD 1.x / 2.x: a `UNet2DConditionModel` whose only condition is its cross-attention context (an added
    `addition_embed_type="text"` embedding, when configured, is computed by the UNet from that same context)."""

    name = "stable-diffusion"
    subfolder = "unet"
    flow_matching = False

    def __init__(self, config: Any):
        self.config = config

    @classmethod
    def accepts(cls, class_name: str, config: Any) -> bool:
        return class_name == "UNet2DConditionModel" and _get(config, "addition_embed_type") in (None, "text")

    @property
    def context_dim(self) -> int:
        width = _get(self.config, "cross_attention_dim")
        if not isinstance(width, int):
            raise ValueError(f"unsupported UNet cross_attention_dim {width!r}: expected one integer")
        return width

    @property
    def pooled_dim(self) -> int:
        return 0

    @property
    def condition_width(self) -> int:
        """Channels of a condition: the context, then the pooled projection of each query."""
        return self.context_dim + self.pooled_dim

    def split(self, conditions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(N, Q, condition_width)` -> the context `(N, Q, context_dim)` and the pooled vector `(N, pooled_dim)`."""
        context = conditions[..., : self.context_dim]
        pooled = conditions[..., self.context_dim :].mean(dim=1) if self.pooled_dim else None
        return context, pooled

    def predict(
        self,
        denoiser: torch.nn.Module,
        latents: torch.Tensor,
        timesteps: torch.Tensor,
        conditions: torch.Tensor,
        attention_kwargs: dict | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """The denoiser's output on `latents` at `timesteps` (a scalar or one per latent) under `conditions`."""
        return denoiser(latents, timesteps, encoder_hidden_states=conditions, cross_attention_kwargs=attention_kwargs,
                        return_dict=False)[0]


class StableDiffusionXLDecoder(StableDiffusionDecoder):
    """SDXL: the UNet also takes `added_cond_kwargs` (`text_embeds`: the pooled vector; `time_ids`: original size,
    crop corner and target size). DreamLLM's targets are resized and centre-cropped to the decoder's resolution, so
    the time ids are `(H, W, 0, 0, H, W)` of the image made, in training and sampling alike (the SDXL pipeline's
    default with no crop)."""

    name = "stable-diffusion-xl"

    @classmethod
    def accepts(cls, class_name: str, config: Any) -> bool:
        return class_name == "UNet2DConditionModel" and _get(config, "addition_embed_type") == "text_time"

    @property
    def pooled_dim(self) -> int:
        # The add-embedding reads [text_embeds, 6 sinusoidal time ids]: the pooled width is the rest (SDXL: 1280).
        return _get(self.config, "projection_class_embeddings_input_dim") - 6 * _get(
            self.config, "addition_time_embed_dim"
        )

    def time_ids(self, batch: int, image_size: tuple[int, int], device, dtype) -> torch.Tensor:
        height, width = image_size
        return torch.tensor([[height, width, 0, 0, height, width]], device=device, dtype=dtype).expand(batch, -1)

    def predict(self, denoiser, latents, timesteps, conditions, attention_kwargs=None, image_size=None):
        if image_size is None:
            raise ValueError("an SDXL UNet needs the image size for its time ids")
        context, pooled = self.split(conditions)
        added = {"text_embeds": pooled, "time_ids": self.time_ids(len(latents), image_size, latents.device,
                                                                  pooled.dtype)}
        return denoiser(latents, timesteps, encoder_hidden_states=context, added_cond_kwargs=added,
                        cross_attention_kwargs=attention_kwargs, return_dict=False)[0]


class StableDiffusion3Decoder(StableDiffusionDecoder):
    """SD3 / SD3.5: an `SD3Transformer2DModel` (MMDiT) attends jointly over the latent patches and the context
    (projected inside by its `context_embedder`), with the pooled vector added to the timestep embedding; trained by
    flow matching (a `FlowMatchEulerDiscreteScheduler` with its shift)."""

    name = "stable-diffusion-3"
    subfolder = "transformer"
    flow_matching = True

    @classmethod
    def accepts(cls, class_name: str, config: Any) -> bool:
        return class_name == "SD3Transformer2DModel"

    @property
    def context_dim(self) -> int:
        return _get(self.config, "joint_attention_dim")

    @property
    def pooled_dim(self) -> int:
        return _get(self.config, "pooled_projection_dim")

    def predict(self, denoiser, latents, timesteps, conditions, attention_kwargs=None, image_size=None):
        context, pooled = self.split(conditions)
        timesteps = torch.as_tensor(timesteps, device=latents.device).expand(latents.shape[0])
        return denoiser(hidden_states=latents, timestep=timesteps, encoder_hidden_states=context,
                        pooled_projections=pooled, joint_attention_kwargs=attention_kwargs, return_dict=False)[0]


# Adding a family is one adapter here (and one row of tests/model/test_decoders.py); the first that accepts wins.
DECODER_FAMILIES = (StableDiffusionXLDecoder, StableDiffusionDecoder, StableDiffusion3Decoder)


def _get(config: Any, key: str):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def decoder_family(class_name: str, config: Any) -> StableDiffusionDecoder:
    """The adapter of a denoiser, from its class name and config (a diffusers `FrozenDict` or a plain dict).

    Example:

    ```python
    >>> decoder_family(type(pipe.unet).__name__, pipe.unet.config).name
    'stable-diffusion'
    ```
    """
    for family in DECODER_FAMILIES:
        if family.accepts(class_name, config):
            return family(config)
    raise ValueError(
        f"unsupported diffusion decoder {class_name} (addition_embed_type={_get(config, 'addition_embed_type')!r}): "
        f"supported: {', '.join(family.name for family in DECODER_FAMILIES)}"
    )


def denoiser_subfolder(folder: str | Path) -> str:
    """The subfolder of a decoder folder that holds its denoiser (`unet` or `transformer`); an error naming what is
    missing when the folder is not a complete diffusers decoder (text encoders are not needed: DreamLLM replaces
    them)."""
    folder = Path(folder)
    found = [name for name in DENOISER_SUBFOLDERS if (folder / name / "config.json").is_file()]
    missing = [name for name in DECODER_PARTS if not (folder / name).is_dir()]
    if len(found) != 1 or missing:
        problem = f"missing {missing}" if missing else f"it holds {found or 'no'} denoiser subfolders"
        raise FileNotFoundError(
            f"{folder} is not a diffusers decoder folder ({problem}): expected one of {list(DENOISER_SUBFOLDERS)} "
            f"and {list(DECODER_PARTS)}"
        )
    return found[0]


def folder_decoder_family(folder: str | Path) -> StableDiffusionDecoder:
    """The adapter of a decoder folder, read from its denoiser's `config.json` (no weights loaded)."""
    subfolder = denoiser_subfolder(folder)
    config = json.loads((Path(folder) / subfolder / "config.json").read_text())
    return decoder_family(config.get("_class_name", ""), config)


__all__ = [
    "DECODER_FAMILIES",
    "DENOISER_SUBFOLDERS",
    "FLOW_MATCHING_SCHEDULERS",
    "StableDiffusion3Decoder",
    "StableDiffusionDecoder",
    "StableDiffusionXLDecoder",
    "decoder_family",
    "denoiser_subfolder",
    "folder_decoder_family",
]
