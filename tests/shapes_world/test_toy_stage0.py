"""Stage 0 of the toy DreamLLM (train.toy.stage0) at --steps-scale 0.01: every folder loads with the libraries' own
classes, the pipeline draws, and the same seed gives the same weights."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.toy.stage0 import main
from train.toy.stage0_clip import PATCH_STEPS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stage0_dirs(toy_stage0, tmp_path_factory) -> tuple[Path, Path]:
    again = tmp_path_factory.mktemp("stage0") / "again"  # the same seed once more, for the determinism checks
    main(["--output", str(again), "--steps-scale", "0.01", "--seed", "0"])
    return toy_stage0, again


def test_folders_load_with_native_classes(stage0_dirs):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        CLIPImageProcessor,
        CLIPModel,
        CLIPVisionModel,
        LlamaForCausalLM,
    )

    from train.toy.stage0_common import clip_normalize, render_batch
    from train.toy.world import render, sample_scene

    out, _ = stage0_dirs
    vision = CLIPVisionModel.from_pretrained(out / "clip")
    processor = CLIPImageProcessor.from_pretrained(out / "clip")
    scenes = [sample_scene(seed) for seed in range(4)]
    pixels = processor(images=[render(scene) for scene in scenes], return_tensors="pt").pixel_values
    assert pixels.shape == (4, 3, 64, 64)
    assert torch.allclose(pixels, clip_normalize(render_batch(scenes)), atol=1e-5)  # what CLIP was trained on
    assert vision(pixel_values=pixels).last_hidden_state.shape == (4, 65, vision.config.hidden_size)
    assert CLIPModel.from_pretrained(out / "clip").config.vision_config.patch_size == 8
    clip_tokenizer = AutoTokenizer.from_pretrained(out / "clip")
    assert clip_tokenizer.decode(clip_tokenizer("a red circle on the left").input_ids, skip_special_tokens=True) == (
        "a red circle on the left"
    )

    lm = AutoModelForCausalLM.from_pretrained(out / "lm")
    assert isinstance(lm, LlamaForCausalLM)
    assert lm.config.max_position_embeddings == 2048 and not lm.config.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(out / "lm")
    assert len(tokenizer) == lm.config.vocab_size
    assert tokenizer.decode(tokenizer.encode("a red circle on the left.")) == "<s> a red circle on the left."

    unet = UNet2DConditionModel.from_pretrained(out / "diffusion", subfolder="unet")
    vae = AutoencoderKL.from_pretrained(out / "diffusion", subfolder="vae")
    assert unet.config.cross_attention_dim == CLIPModel.from_pretrained(out / "clip").config.text_config.hidden_size
    assert vae.config.scaling_factor != 0.18215  # set from the trained latents' std
    pipeline = StableDiffusionPipeline.from_pretrained(out / "diffusion")
    pipeline.set_progress_bar_config(disable=True)
    image = pipeline(
        "a red circle on the left", num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)

    log = json.loads((out / "stage0_log.json").read_text())
    for key in ("clip_loss", "vae_loss", "unet_loss", "lm_loss", "clip_zero_shot", "text_to_image", "seconds"):
        assert key in log
    # The patch-level phase is part of the default stage 0 (DreamLLM reads CLIP's patches).
    assert log["clip_patch_steps"] == PATCH_STEPS and log["clip_patch_loss"] and "clip_patch_accuracy" in log


def test_lm_tokenizer_is_llama_like(stage0_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(stage0_dirs[0] / "lm")
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = tokenizer("What color is the circle?").input_ids
    assert ids[0] == 1 and tokenizer.unk_token_id not in ids
    size = len(tokenizer)
    tokenizer.add_special_tokens({"pad_token": "[PAD]", "additional_special_tokens": ["<image>", "<dream>"]})
    assert len(tokenizer) == size + 3
    ids = tokenizer("USER: <image>\nwhat shape?<dream> ASSISTANT: circle</s>").input_ids
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:4] == ["<s>", "user", ":", "<image>"] and tokens[-1] == "</s>" and "<dream>" in tokens


def test_same_seed_same_weights(stage0_dirs):
    a, b = stage0_dirs
    files = sorted(p.relative_to(a) for p in a.rglob("*.safetensors"))
    assert len(files) == 5  # clip, lm, unet, vae, text_encoder
    for name in files:
        first, second = load_file(a / name), load_file(b / name)
        assert first.keys() == second.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), name
