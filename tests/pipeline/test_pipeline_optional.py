"""Optional components, as diffusers means them: any of llm, processor, unet, vae, scheduler may be None; a call
fails (naming the component) only when its work needs a missing one; a pipeline saved without components loads back
without them; the two-phase low-memory pattern gives the one-phase images."""

import json

import numpy as np
import pytest
import torch

from pipeline_dreamllm import DreamLLMPipeline

STEPS = 2
ENCODER = ("llm", "processor")
DECODER = ("unet", "vae", "scheduler")


@pytest.fixture
def pipe(tiny_folder):
    pipe = DreamLLMPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded():
    return torch.Generator().manual_seed(0)


def test_optional_components_are_every_component():
    # `transformer` is the denoiser of SD3 folders (tests/model/test_decoders.py), None beside a `unet`
    assert set(DreamLLMPipeline._optional_components) == {*ENCODER, *DECODER, "transformer"}


@pytest.mark.parametrize("left_out", [ENCODER, DECODER], ids=["encoder", "decoder"])
def test_save_load_optional_components(pipe, tmp_path, left_out):
    """diffusers' `PipelineTesterMixin.test_save_load_optional_components`, for each half the other can work
    without (as diffusers' own tests restrict it where a listed component is needed by the call): the left-out
    components are saved as `[null, null]`, stay None after loading, and the output is unchanged."""
    cond, uncond = pipe.encode_prompt("a cat", pipe.device, 1, True)
    for name in left_out:
        setattr(pipe, name, None)

    def work(pipeline):
        if left_out == ENCODER:  # the decoder from precomputed conditions
            return pipeline(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=STEPS,
                            generator=seeded(), output_type="np").images
        return torch.cat(pipeline.encode_prompt("a cat", pipeline.device, 1, True)).numpy()  # conditions only

    output = work(pipe)
    pipe.save_pretrained(tmp_path, safe_serialization=False)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert all(index[name] == [None, None] for name in left_out)
    loaded = DreamLLMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    for name in left_out:
        assert getattr(loaded, name) is None, f"`{name}` did not stay set to None after loading."
    assert np.abs(work(loaded) - output).max() < 1e-4


def test_two_phases_give_the_one_phase_images(tiny_folder, pipe):
    reference = pipe(["a cat", "a red square"], num_inference_steps=STEPS, generator=seeded(), output_type="np").images

    encoder = DreamLLMPipeline.from_pretrained(tiny_folder, unet=None, vae=None, scheduler=None)
    assert encoder.unet is None and encoder.vae is None
    cond, uncond = encoder.encode_prompt(["a cat", "a red square"], encoder.device, 1, do_classifier_free_guidance=True)
    with pytest.raises(ValueError, match="needs the pipeline's unet, scheduler"):
        encoder("a cat")
    del encoder

    decoder = DreamLLMPipeline.from_pretrained(tiny_folder, llm=None, processor=None)
    decoder.set_progress_bar_config(disable=True)
    images = decoder(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=STEPS,
                     generator=seeded(), output_type="np").images
    np.testing.assert_array_equal(images, reference)
    # the conditions are computed once and reused across seeds and guidance settings
    assert decoder(prompt_embeds=cond, negative_prompt_embeds=uncond, guidance_scale=2.0, num_inference_steps=STEPS,
                   output_type="np").images.shape == reference.shape
    with pytest.raises(ValueError, match="needs the pipeline's llm, processor"):
        decoder("a cat", num_inference_steps=STEPS)
    with pytest.raises(ValueError, match="negative_prompt_embeds"):  # guidance needs the null condition: llm or given
        decoder(prompt_embeds=cond, num_inference_steps=STEPS)
    # without guidance the conditions alone suffice
    assert decoder(prompt_embeds=cond, guidance_scale=1.0, num_inference_steps=STEPS,
                   output_type="latent").images.shape == (2, 4, 8, 8)


def test_latents_need_no_vae(pipe):
    latents = pipe("a cat", num_inference_steps=STEPS, generator=seeded(), output_type="latent").images
    pipe.vae = None
    np.testing.assert_array_equal(
        pipe("a cat", num_inference_steps=STEPS, generator=seeded(), output_type="latent").images, latents
    )
    with pytest.raises(ValueError, match="needs the pipeline's vae"):
        pipe("a cat", num_inference_steps=STEPS)


def test_a_pipeline_of_nothing_is_built_and_saved(tmp_path):
    empty = DreamLLMPipeline(llm=None, processor=None, unet=None, vae=None, scheduler=None)
    assert all(component is None for component in empty.components.values())
    empty.save_pretrained(tmp_path)
    loaded = DreamLLMPipeline.from_pretrained(tmp_path)
    assert all(component is None for component in loaded.components.values())
    with pytest.raises(ValueError, match="needs the pipeline's"):
        loaded.encode_prompt("a cat", "cpu", 1, False)
