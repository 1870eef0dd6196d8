"""DreamLLM's diffusion loss: the denoising loss of the frozen diffusion decoder, whose gradient flows through the
denoiser into the LLM's `condition_embeds` ("score distillation"). The decoder family (`decoders_dreamllm.py`) says
how the condition enters the denoiser and which objective trains it: DDPM noise (or velocity) prediction for the
Stable Diffusion UNets (SD 1.x/2.x, SDXL), flow matching for SD3/SD3.5, with diffusers' own timestep-density and
loss-weighting helpers and the folder's `FlowMatchEulerDiscreteScheduler` (its shift shapes the training sigmas).

    loss_fn = DreamLLMDiffusionLoss.from_pretrained("path/to/dreamllm")   # unet/ or transformer/, vae/, scheduler/
    out = model(**batch)                                                   # out.condition_embeds: (N, Q, C)
    loss = loss_fn(out.condition_embeds, batch["target_pixel_values"],
                   null_condition=model.get_null_condition(), condition_drop_prob=0.1)
    loss.backward()                                                        # reaches queries, projector, LLM
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3, compute_snr
from torch import nn
from torch.utils.checkpoint import checkpoint

from decoders_dreamllm import StableDiffusionDecoder, decoder_family, denoiser_subfolder, folder_decoder_family

SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction")
# Flow matching as diffusers' SD3 training script does it by default (train_dreambooth_lora_sd3.py): sigmas drawn from
# a logit-normal density (mean 0, std 1; `mode_scale` for the "mode" scheme), outputs preconditioned to predict x0.
FLOW_MATCHING_DEFAULTS = dict(weighting_scheme="logit_normal", logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
DENOISER_CLASSES = {"unet": UNet2DConditionModel, "transformer": SD3Transformer2DModel}


def graph_connected_zero(anchors: Iterable[torch.Tensor], device: torch.device | str | None = None) -> torch.Tensor:
    """A scalar 0 that depends on `anchors`, so every trainable tensor among them still receives a (zero) gradient:
    DDP without `find_unused_parameters` needs every parameter in the graph of every step."""
    zero = torch.zeros((), device=device, dtype=torch.float32)
    for anchor in anchors:
        if anchor.requires_grad:
            zero = zero + anchor.sum().float() * 0.0
    return zero


def min_snr_weights(
    scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) at `timesteps`, from diffusers' `compute_snr`, as diffusers'
    training scripts weigh them: min(SNR, gamma) / SNR for epsilon targets, min(SNR, gamma) / (SNR + 1) for v."""
    snr = compute_snr(scheduler, timesteps)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1.0) if prediction_type == "v_prediction" else clipped / snr


class DreamLLMDiffusionLoss(nn.Module):
    """Noise-prediction loss of a frozen latent-diffusion decoder conditioned on DreamLLM's `condition_embeds`.

    The VAE encodes the targets without a graph; the UNet runs *with* a graph (its parameters are frozen, its
    activations are not), so the loss trains whatever produced the condition. Targets are `(N, 3, H, W)` in [-1, 1],
    one per condition, in the same order.

    Args:
        unet, vae: the frozen decoder (its parameters get `requires_grad=False`); `unet` is the denoiser of any
            family (a `UNet2DConditionModel`, or SD3's `SD3Transformer2DModel`), its adapter picked from its class.
        scheduler: the training noise schedule: a `DDPMScheduler`, whose `prediction_type` picks the target
            (`epsilon`: the noise, `v_prediction`: the velocity), or for a flow-matching family a
            `FlowMatchEulerDiscreteScheduler` (sigmas from its timesteps, with its shift).
        flow_matching: `weighting_scheme`, `logit_mean`, `logit_std`, `mode_scale` of diffusers'
            `compute_density_for_timestep_sampling` / `compute_loss_weighting_for_sd3` (default
            `FLOW_MATCHING_DEFAULTS`); flow-matching families only.
        snr_gamma: Min-SNR-gamma loss weighting (Hang et al. 2023); `None` for the plain mean (official default).
        max_unet_batch: at most this many images per UNet/VAE call. Larger batches run in chunks, each under
            activation checkpointing, so one document with many images holds the activations of one chunk only.
        noise_offset: offset-noise strength (0: off, as the official configs).
        noise_samples_per_image: noise draws (each with its own timestep) per condition, averaged (1: official).
            Each image's latents are encoded once and its condition computed once, so K draws cost K UNet passes
            but no LLM work: a lower-variance gradient for the condition where the LLM dominates the step's cost.
        min_timestep: timesteps are drawn uniformly from `[min_timestep, num_train_timesteps)` (0: official).
            Layout is decided at the noisiest steps: only there does the noise-prediction loss depend on where the
            condition puts an object, so skipping the near-clean steps concentrates the condition's gradient.

    Example:

    ```python
    >>> loss_fn = DreamLLMDiffusionLoss.from_pretrained("dreamllm-7b", max_unet_batch=8)
    >>> loss = loss_fn(condition_embeds, target_pixel_values)  # fp32 scalar, differentiable w.r.t. the condition
    ```
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDPMScheduler,
        snr_gamma: float | None = None,
        max_unet_batch: int | None = None,
        noise_offset: float = 0.0,
        noise_samples_per_image: int = 1,
        min_timestep: int = 0,
        flow_matching: dict | None = None,
    ):
        super().__init__()
        self.family: StableDiffusionDecoder = decoder_family(type(unet).__name__, unet.config)
        if self.family.flow_matching:
            if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
                raise ValueError(f"a {self.family.name} decoder trains by flow matching: its scheduler must be a "
                                 f"FlowMatchEulerDiscreteScheduler, got {type(scheduler).__name__}")
            if snr_gamma is not None or min_timestep:
                raise ValueError("snr_gamma and min_timestep are for DDPM decoders; flow matching draws and weighs its "
                                 "sigmas by `flow_matching['weighting_scheme']`")
            prediction_type = "flow_matching"
        else:
            prediction_type = scheduler.config.prediction_type
            if prediction_type not in SUPPORTED_PREDICTION_TYPES:
                raise ValueError(
                    f"unsupported prediction_type {prediction_type!r}: expected {SUPPORTED_PREDICTION_TYPES}"
                )
        unknown = set(flow_matching or {}) - set(FLOW_MATCHING_DEFAULTS)
        if unknown:
            raise ValueError(
                f"unknown flow_matching settings {sorted(unknown)}: expected {sorted(FLOW_MATCHING_DEFAULTS)}"
            )
        self.flow_matching_settings = {**FLOW_MATCHING_DEFAULTS, **(flow_matching or {})}
        if noise_samples_per_image < 1:
            raise ValueError(f"noise_samples_per_image must be >= 1, got {noise_samples_per_image}")
        num_train_timesteps = scheduler.config.num_train_timesteps
        if not 0 <= min_timestep < num_train_timesteps:
            raise ValueError(f"min_timestep must be in [0, {num_train_timesteps}), got {min_timestep}")
        if max_unet_batch is not None and max_unet_batch < 1:
            raise ValueError(f"max_unet_batch must be >= 1, got {max_unet_batch}")
        self.unet = unet.requires_grad_(False).eval()
        self.vae = vae.requires_grad_(False).eval()
        self.scheduler = scheduler
        self.prediction_type = prediction_type
        self.snr_gamma = snr_gamma
        self.max_unet_batch = max_unet_batch
        self.noise_offset = noise_offset
        self.noise_samples_per_image = noise_samples_per_image
        self.num_train_timesteps = num_train_timesteps
        self.min_timestep = min_timestep
        # The module's device (it moves with `.to(device)`): noise and timesteps are drawn there. The noise schedule
        # itself is the scheduler's (`add_noise`, `get_velocity`, diffusers' `compute_snr`; the flow-matching
        # training timesteps and sigmas, which this loss's own scheduler keeps: sampling never resets them).
        if self.family.flow_matching:
            self.register_buffer("train_timesteps", scheduler.timesteps.detach().clone().float(), persistent=False)
            self.register_buffer("train_sigmas", scheduler.sigmas[: len(scheduler.timesteps)].detach().clone().float(),
                                 persistent=False)
        else:
            self.register_buffer("alphas_cumprod", scheduler.alphas_cumprod.detach().clone().float(), persistent=False)

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        unet_dtype: torch.dtype | None = None,
        vae_dtype: torch.dtype = torch.float32,
        **kwargs,
    ) -> DreamLLMDiffusionLoss:
        """Load the decoder from a DreamLLM folder's `unet/` or `transformer/`, `vae/` and `scheduler/` (the scheduler
        as a `DDPMScheduler` with the folder's betas, whatever sampler the folder ships for inference; as a
        `FlowMatchEulerDiscreteScheduler` with the folder's shift for a flow-matching family)."""
        folder = Path(folder)
        subfolder = denoiser_subfolder(folder)
        unet = DENOISER_CLASSES[subfolder].from_pretrained(folder, subfolder=subfolder,
                                                           torch_dtype=unet_dtype or torch.float32)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=vae_dtype)
        flow_matching = folder_decoder_family(folder).flow_matching
        scheduler_class = FlowMatchEulerDiscreteScheduler if flow_matching else DDPMScheduler
        scheduler = scheduler_class.from_config(scheduler_class.load_config(folder, subfolder="scheduler"))
        return cls(unet, vae, scheduler, **kwargs)

    def train(self, mode: bool = True) -> DreamLLMDiffusionLoss:
        # The decoder is frozen: it always runs in inference mode (no dropout), whatever mode the trainer sets.
        super().train(mode)
        self.unet.eval()
        self.vae.eval()
        return self

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UNet's activations in the backward pass (the LLM's layers have their own switch)."""
        self.unet.enable_gradient_checkpointing()

    @property
    def device(self) -> torch.device:
        return next(self.buffers()).device

    # ------------------------------------------------------------------------------------------------- pieces
    def latent_shape(self, target_pixel_values: torch.Tensor) -> tuple[int, ...]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        num_images, _, height, width = target_pixel_values.shape
        return (num_images, self.vae.config.latent_channels, height // factor, width // factor)

    @torch.no_grad()
    def encode_latents(self, target_pixel_values: torch.Tensor, sample_noise: torch.Tensor | None = None):
        """VAE latents of the targets (a posterior sample drawn with `sample_noise`), times the scaling factor; fp32,
        outside autocast (a bf16 VAE encode loses detail), in chunks of `max_unet_batch`."""
        vae = self.vae
        pixels = target_pixel_values.to(self.device, vae.dtype)
        if sample_noise is None:
            sample_noise = torch.randn(self.latent_shape(pixels), device=self.device)
        chunks = pixels.split(self.max_unet_batch or len(pixels))
        with torch.autocast(self.device.type, enabled=False):
            dists = [vae.encode(chunk).latent_dist for chunk in chunks]
            mean, std = torch.cat([d.mean for d in dists]), torch.cat([d.std for d in dists])
            latents = mean.float() + std.float() * sample_noise
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * vae.config.scaling_factor

    def _per_image_loss(
        self, condition: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, target: torch.Tensor,
        sigmas: torch.Tensor | None = None,
    ) -> torch.Tensor:
        unet_dtype = self.unet.dtype
        image_size = (noisy.shape[-2] * self.vae_scale_factor, noisy.shape[-1] * self.vae_scale_factor)
        prediction = self.family.predict(self.unet, noisy.to(unet_dtype), timesteps, condition.to(unet_dtype),
                                         image_size=image_size).float()
        if sigmas is not None:  # flow matching, preconditioned as diffusers' SD3 script: x0 = x_t - sigma * v
            prediction = noisy - sigmas[:, None, None, None] * prediction
        return F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    # --------------------------------------------------------------------------------------------------- loss
    def forward(
        self,
        condition_embeds: torch.Tensor | None,
        target_pixel_values: torch.Tensor | None,
        null_condition: torch.Tensor | None = None,
        condition_drop_prob: float = 0.0,
        anchors: Iterable[torch.Tensor] = (),
    ) -> torch.Tensor:
        """Mean noise-prediction MSE (fp32 scalar) over the creation blocks of a batch.

        Args:
            condition_embeds: `(N, Q, C)` conditions (the model's `condition_embeds`), or `None`.
            target_pixel_values: `(N, 3, H, W)` targets in [-1, 1], one per condition, or `None`.
            null_condition: `(1, Q, C)` unconditional condition (`model.get_null_condition()`), needed when
                `condition_drop_prob > 0`: each condition is replaced by it with that probability.
            anchors: tensors a condition-free batch ties its zero loss to (see `graph_connected_zero`).
        """
        if condition_embeds is None or target_pixel_values is None:
            if (condition_embeds is None) != (target_pixel_values is None):
                raise ValueError("condition_embeds and target_pixel_values must both be given or both be None")
            return graph_connected_zero(anchors, device=self.device)
        if condition_embeds.shape[0] != target_pixel_values.shape[0]:
            raise ValueError(
                f"{condition_embeds.shape[0]} creation blocks but {target_pixel_values.shape[0]} diffusion targets: "
                "every <dream> of a training document needs its target image"
            )

        # Every random draw comes first, in a fixed order, from the global generator: the values do not depend on
        # chunking or module internals, and a resumed run (which restores the generator) draws the same ones.
        shape = self.latent_shape(target_pixel_values)
        draws = self.noise_samples_per_image
        num_inputs = shape[0] * draws  # UNet inputs: each image's K draws are adjacent
        sample_noise = torch.randn(shape, device=self.device)
        noise = torch.randn((num_inputs, *shape[1:]), device=self.device)
        if self.noise_offset:
            noise = noise + self.noise_offset * torch.randn(num_inputs, shape[1], 1, 1, device=self.device)
        if self.family.flow_matching:
            settings = self.flow_matching_settings
            u = compute_density_for_timestep_sampling(batch_size=num_inputs, device=self.device, **settings)
            indices = (u * self.num_train_timesteps).long().clamp(max=self.num_train_timesteps - 1).to(self.device)
        else:
            timesteps = torch.randint(self.min_timestep, self.num_train_timesteps, (num_inputs,), device=self.device)
        dropped = torch.rand(num_inputs, device=self.device) < condition_drop_prob if condition_drop_prob > 0 else None
        latents = self.encode_latents(target_pixel_values, sample_noise)
        condition = condition_embeds.to(self.device)
        if draws > 1:
            latents = latents.repeat_interleave(draws, dim=0)
            condition = condition.repeat_interleave(draws, dim=0)
        sigmas = None
        if self.family.flow_matching:
            # diffusers' SD3 recipe: x_t = (1 - sigma) x0 + sigma noise at the scheduler's training timesteps.
            timesteps, sigmas = self.train_timesteps[indices], self.train_sigmas[indices]
            noisy = (1.0 - sigmas[:, None, None, None]) * latents + sigmas[:, None, None, None] * noise
            target = latents
        else:
            noisy = self.scheduler.add_noise(latents, noise, timesteps)
            target = (noise if self.prediction_type == "epsilon"
                      else self.scheduler.get_velocity(latents, noise, timesteps))

        if condition_drop_prob > 0:
            if null_condition is None:
                raise ValueError("condition_drop_prob > 0 needs the null condition (model.get_null_condition())")
            null = null_condition.to(device=self.device, dtype=condition.dtype).expand_as(condition)
            condition = torch.where(dropped[:, None, None], null, condition)

        inputs = [condition, noisy, timesteps, target, *([] if sigmas is None else [sigmas])]
        chunk = self.max_unet_batch or num_inputs
        if chunk >= num_inputs:
            per_image = self._per_image_loss(*inputs)
        else:
            # The noise and timesteps were drawn above, so recomputing a chunk in the backward pass is exact.
            recompute = torch.is_grad_enabled()
            pieces = []
            for start in range(0, num_inputs, chunk):
                args = [x[start : start + chunk] for x in inputs]
                if recompute:
                    pieces.append(checkpoint(self._per_image_loss, *args, use_reentrant=False))
                else:
                    pieces.append(self._per_image_loss(*args))
            per_image = torch.cat(pieces)
        if sigmas is not None:
            scheme = self.flow_matching_settings["weighting_scheme"]
            per_image = per_image * compute_loss_weighting_for_sd3(scheme, sigmas)
        if self.snr_gamma is not None:
            per_image = per_image * min_snr_weights(self.scheduler, timesteps, self.snr_gamma, self.prediction_type)
        return per_image.mean()


__all__ = ["FLOW_MATCHING_DEFAULTS", "DreamLLMDiffusionLoss", "graph_connected_zero", "min_snr_weights"]
