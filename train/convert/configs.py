"""The component configs an official DreamLLM release does not ship, carried here so conversion needs no network.

The release holds the weights of CLIP ViT-L/14 and Stable Diffusion 2.1-base but not their configs; the official
code fetched them from the Hub at load time. These are the values of `openai/clip-vit-large-patch14` (vision part of
`config.json`, and `preprocessor_config.json`) and `stabilityai/stable-diffusion-2-1-base` (`unet/config.json`,
`vae/config.json`, `scheduler/scheduler_config.json`), as those repositories have them.

    >>> from train.convert.configs import SD21_BASE_UNET_CONFIG
    >>> SD21_BASE_UNET_CONFIG["cross_attention_dim"], SD21_BASE_UNET_CONFIG["sample_size"]
    (1024, 64)
"""

# `vision_config` of openai/clip-vit-large-patch14 (the fields a CLIPVisionConfig reads).
CLIP_VIT_L14_VISION_CONFIG = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_channels": 3,
    "image_size": 224,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

# openai/clip-vit-large-patch14 `preprocessor_config.json`: shortest side 224 (bicubic), center crop 224, CLIP mean/std.
CLIP_VIT_L14_IMAGE_PROCESSOR_CONFIG = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}

# stabilityai/stable-diffusion-2-1-base `unet/config.json`: 512 px (64x64 latents), epsilon model, OpenCLIP-H width.
SD21_BASE_UNET_CONFIG = {
    "_class_name": "UNet2DConditionModel",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "attention_head_dim": [5, 10, 20, 20],
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 1024,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "use_linear_projection": True,
}

# stabilityai/stable-diffusion-2-1-base `vae/config.json`. Its `sample_size` really is 768 there (it only matters for
# tiled decoding); `scaling_factor` is absent, so diffusers' default 0.18215 applies, as in SD 2.x.
SD21_BASE_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.10.0.dev0",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 768,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# stabilityai/stable-diffusion-2-1-base `scheduler/scheduler_config.json`. The official DreamLLM code builds its
# DDPMScheduler from this same file (`DDPMScheduler.from_pretrained(sd, subfolder="scheduler")`); the noise schedule
# (scaled_linear 0.00085-0.012, 1000 steps, epsilon) is what matters for training and any sampler.
SD21_BASE_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.10.0.dev0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

__all__ = [
    "CLIP_VIT_L14_VISION_CONFIG",
    "CLIP_VIT_L14_IMAGE_PROCESSOR_CONFIG",
    "SD21_BASE_UNET_CONFIG",
    "SD21_BASE_VAE_CONFIG",
    "SD21_BASE_SCHEDULER_CONFIG",
]
