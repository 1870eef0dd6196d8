"""diffusers' common pipeline checks that apply to DreamLLM, on the tiny random folder.

diffusers keeps `PipelineTesterMixin` in its repository's `tests/pipelines/test_pipelines_common.py`; neither the
0.42.1 wheel nor its source distribution ships it (the sdist's `tests/` holds `testing_utils.py` alone), so each check
of the mixin that applies is written out here: save/load (safetensors, variants, float16), components round trip,
batched prompts equal single prompts, `num_images_per_prompt`, step-end callbacks, output types, dict/tuple outputs,
model and sequential CPU offload, `to(dtype)` and device maps.
"""

import numpy as np
import pytest
import torch
from diffusers.callbacks import SDCFGCutoffCallback

from pipeline_dreamllm import DreamLLMPipeline

STEPS = 2
PROMPTS = ["a cat", "What is this? It is a photo of a cat sitting on a red sofa."]


@pytest.fixture
def pipe(tiny_folder):
    pipe = DreamLLMPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded(seed: int = 0):
    return torch.Generator().manual_seed(seed)


def run(pipe, prompt="a cat", **kwargs):
    kwargs = {"num_inference_steps": STEPS, "generator": seeded(), "output_type": "np", **kwargs}
    return pipe(prompt, **kwargs).images


def weight_files(folder) -> set[str]:
    suffixes = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith(suffixes)}


def module_dtypes(pipe) -> dict:
    return {name: c.dtype for name, c in pipe.components.items() if isinstance(c, torch.nn.Module)}


def test_components_round_trip(pipe):
    # one denoiser per folder: a Stable Diffusion folder's `transformer` (SD3's denoiser) is None
    assert set(pipe.components) == {"llm", "processor", "unet", "vae", "scheduler", "transformer"}
    assert pipe.transformer is None and pipe.denoiser is pipe.unet
    again = DreamLLMPipeline(**pipe.components)
    again.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(run(pipe), run(again))


def test_save_load_local_is_safetensors_only(pipe, tmp_path):
    reference = run(pipe)
    pipe.save_pretrained(tmp_path)
    assert weight_files(tmp_path) == {
        "model.safetensors", "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"
    }
    loaded = DreamLLMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(reference, run(loaded))


def test_save_load_variant_loads_the_variant_of_every_model(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    with torch.no_grad():  # the variant holds other values, so loading the wrong file shows
        pipe.llm.model.dream_queries.weight.add_(1.0)
        pipe.unet.conv_in.bias.add_(1.0)
        pipe.vae.post_quant_conv.bias.add_(1.0)
    pipe.save_pretrained(tmp_path, variant="fp16")
    assert {"model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/diffusion_pytorch_model.fp16.safetensors"} <= weight_files(tmp_path)

    def is_variant(loaded) -> list[bool]:
        return [
            torch.equal(loaded.llm.model.dream_queries.weight, pipe.llm.model.dream_queries.weight),
            torch.equal(loaded.unet.conv_in.bias, pipe.unet.conv_in.bias),
            torch.equal(loaded.vae.post_quant_conv.bias, pipe.vae.post_quant_conv.bias),
        ]

    assert is_variant(DreamLLMPipeline.from_pretrained(tmp_path, variant="fp16")) == [True, True, True]
    assert is_variant(DreamLLMPipeline.from_pretrained(tmp_path)) == [False, False, False]
    with pytest.raises(ValueError, match="variant=ema"):  # a variant never saved, as diffusers says it
        DreamLLMPipeline.from_pretrained(tmp_path, variant="ema")


def test_save_load_float16(pipe, tmp_path):
    pipe.to(torch.float16)
    assert set(module_dtypes(pipe).values()) == {torch.float16}
    reference = run(pipe)
    pipe.save_pretrained(tmp_path, variant="fp16")
    loaded = DreamLLMPipeline.from_pretrained(tmp_path, variant="fp16", dtype=torch.float16)
    loaded.set_progress_bar_config(disable=True)
    assert set(module_dtypes(loaded).values()) == {torch.float16}
    output = run(loaded)
    assert np.isfinite(output).all()
    # diffusers' tolerance for this check: `to(float16)` also rounds buffers (rotary frequencies) that a float16
    # load recomputes in float32.
    np.testing.assert_allclose(output, reference, atol=1e-2)


def test_to_dtype_moves_every_model_and_still_samples(pipe):
    assert set(module_dtypes(pipe).values()) == {torch.float32}
    float_image = run(pipe, output_type="pt")
    pipe.to(torch.bfloat16)
    assert set(module_dtypes(pipe).values()) == {torch.bfloat16}
    assert pipe.null_condition().dtype == torch.bfloat16  # the null condition follows the weights' dtype
    image = run(pipe, output_type="pt")
    assert image.shape == float_image.shape and torch.isfinite(image).all()


def test_device_map_cpu_places_every_model(tiny_folder):
    pipe = DreamLLMPipeline.from_pretrained(tiny_folder, device_map="cpu")
    assert pipe.hf_device_map == "cpu"
    assert {c.device.type for c in pipe.components.values() if isinstance(c, torch.nn.Module)} == {"cpu"}
    with pytest.raises(ValueError, match="device_map"):  # as diffusers' loader: a string strategy
        DreamLLMPipeline.from_pretrained(tiny_folder, device_map={"": "cpu"})
    with pytest.raises(NotImplementedError, match="not supported"):
        DreamLLMPipeline.from_pretrained(tiny_folder, device_map="auto")


def test_batched_prompts_equal_single_prompts(pipe):
    batched = run(pipe, PROMPTS, generator=[seeded(0), seeded(1)])
    for index, prompt in enumerate(PROMPTS):
        single = run(pipe, prompt, generator=seeded(index))
        assert np.abs(batched[index] - single[0]).max() < 1e-4, prompt


@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("num_images_per_prompt", [1, 2])
def test_num_images_per_prompt(pipe, batch_size, num_images_per_prompt):
    conditions = []

    def record(pipeline, step, timestep, tensors):
        conditions.append(tensors["prompt_embeds"])
        return {}

    images = run(pipe, PROMPTS[:batch_size], num_images_per_prompt=num_images_per_prompt, generator=None,
                 callback_on_step_end=record, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert images.shape == (batch_size * num_images_per_prompt, 16, 16, 3)
    cond = conditions[0].chunk(2)[1]  # [unconditional, conditional]
    for index in range(batch_size):  # the images of a prompt sit together and share its condition
        rows = cond[index * num_images_per_prompt : (index + 1) * num_images_per_prompt]
        assert all(torch.equal(row, rows[0]) for row in rows)
    if num_images_per_prompt > 1:
        assert np.abs(images[0] - images[1]).max() > 0  # each image draws its own noise


def test_callback_receives_every_requested_tensor_and_can_replace_latents(pipe):
    requested = list(DreamLLMPipeline._callback_tensor_inputs)
    seen = []

    def zero_last_latents(pipeline, step, timestep, tensors):
        seen.append(sorted(tensors))
        assert all(isinstance(tensors[name], torch.Tensor) for name in requested)
        if step == pipeline.num_timesteps - 1:
            tensors["latents"] = torch.zeros_like(tensors["latents"])
        return tensors

    latents = run(pipe, output_type="latent", num_inference_steps=3, callback_on_step_end=zero_last_latents,
                  callback_on_step_end_tensor_inputs=requested)
    assert seen == [sorted(requested)] * 3
    assert float(latents.abs().sum()) == 0


def test_pipeline_callback_object_cuts_guidance(pipe):
    batches, forward = [], pipe.unet.forward

    def counting_forward(sample, *args, **kwargs):
        batches.append(sample.shape[0])
        return forward(sample, *args, **kwargs)

    pipe.unet.forward = counting_forward
    pipe("a cat", num_inference_steps=4, guidance_scale=5.0, output_type="latent",
         callback_on_step_end=SDCFGCutoffCallback(cutoff_step_ratio=0.5))
    assert batches == [2, 2, 2, 1]  # guidance stops after step int(4 * 0.5) = 2, as in Stable Diffusion


def test_output_types_agree(pipe):
    pil = run(pipe, output_type="pil")
    np_image = run(pipe, output_type="np")
    pt = run(pipe, output_type="pt")
    latent = run(pipe, output_type="latent")
    assert pil[0].size == (16, 16) and np_image.shape == (1, 16, 16, 3)
    assert pt.shape == (1, 3, 16, 16) and latent.shape == (1, 4, 8, 8)
    np.testing.assert_allclose(pt[0].permute(1, 2, 0).numpy(), np_image[0], atol=1e-6)
    assert np.abs(np.asarray(pil[0]) / 255.0 - np_image[0]).max() <= 0.5 / 255 + 1e-6


def test_dict_and_tuple_outputs_are_equivalent(pipe):
    (tuple_images,) = pipe("a cat", num_inference_steps=STEPS, generator=seeded(), output_type="np", return_dict=False)
    np.testing.assert_array_equal(tuple_images, run(pipe))


def test_enable_model_cpu_offload(pipe):
    # diffusers refuses offload when it finds no accelerator unless the device is named; with device="cpu" the same
    # accelerate hooks move each model in `model_cpu_offload_seq` onto the execution device when it runs.
    reference = run(pipe)
    story_reference = pipe.generate_interleaved("Tell a story", max_new_tokens=3, num_inference_steps=STEPS)
    pipe.enable_model_cpu_offload(device="cpu")
    assert [hook.model for hook in pipe._all_hooks] == [pipe.llm, pipe.unet, pipe.vae]
    np.testing.assert_array_equal(reference, run(pipe))
    story = pipe.generate_interleaved("Tell a story", max_new_tokens=3, num_inference_steps=STEPS)
    assert story.token_ids.tolist() == story_reference.token_ids.tolist()


def sequential_offload_check(pipe, offload):
    reference = run(pipe)
    story_reference = pipe.generate_interleaved("Tell a story", max_new_tokens=3, num_inference_steps=STEPS)
    offload()
    assert pipe.llm.lm_head.weight.device.type == "meta" and pipe.unet.conv_in.weight.device.type == "meta"
    np.testing.assert_allclose(run(pipe), reference, atol=1e-6)
    story = pipe.generate_interleaved("Tell a story", max_new_tokens=3, num_inference_steps=STEPS)
    assert story.token_ids.tolist() == story_reference.token_ids.tolist()


def test_sequential_offload_hooks(pipe):
    """What `enable_sequential_cpu_offload` installs, on the CPU: accelerate's `cpu_offload` on every model, whose
    weights then wait on `meta` and reach the execution device per forward call."""
    from accelerate import cpu_offload

    def offload():
        for component in pipe.components.values():
            if isinstance(component, torch.nn.Module):
                cpu_offload(component, torch.device("cpu"), offload_buffers=len(component._parameters) > 0)

    sequential_offload_check(pipe, offload)


@pytest.mark.skipif(
    not torch.accelerator.is_available(),
    reason="enable_sequential_cpu_offload runs the models on 'cpu:0' when no accelerator exists, where accelerate's "
    "hooks turn parameters into plain tensors (TypeError in set_module_tensor_to_device); "
    "test_sequential_offload_hooks checks the same hooks on 'cpu'",
)
def test_enable_sequential_cpu_offload(pipe):
    sequential_offload_check(pipe, pipe.enable_sequential_cpu_offload)
