"""DreamLLMPipeline: loading through both libraries, text(+image)-to-image with guidance, interleaved generation."""

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_isolated
from pipeline_dreamllm import DreamLLMPipeline, DreamLLMStreamer

STEPS = 2
DECODER_SIZE = (16, 16)  # tiny UNet sample 8 x VAE scale factor 2


@pytest.fixture
def pipe(tiny_folder):
    pipe = DreamLLMPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded():
    return torch.Generator().manual_seed(0)


def count_calls(module: nn.Module, record) -> list:
    """Wrap `module.forward` to append `record(args, kwargs)` per call."""
    calls, forward = [], module.forward

    def counting_forward(*args, **kwargs):
        calls.append(record(args, kwargs))
        return forward(*args, **kwargs)

    module.forward = counting_forward
    return calls


def fixed_logits_head(pipe, logits: dict[int, float]):
    """Replace the LM head by one whose logits ignore the hidden state: `logits` for the listed ids, -1e4 elsewhere."""
    text_config = pipe.llm.config.text_config
    head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=True)
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, -1e4)
    for token, value in logits.items():
        head.bias.data[token] = value
    pipe.llm.lm_head = head


def document_structure(ids: list[int], config) -> list[str]:
    """The segment kinds a generated token sequence implies: runs of text, and one image per creation block."""
    kinds = []
    for token in ids:
        if token == config.dream_start_token_id:
            kinds.append("image")
        elif token not in (config.image_patch_token_id, config.image_start_token_id, config.image_end_token_id,
                           config.dream_end_token_id) and kinds[-1:] != ["text"]:
            kinds.append("text")
    return kinds


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors on a shared CPU: intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


ISOLATED_PRELUDE = """
import os, tempfile
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp()  # diffusers copies local code into one shared namespace
import numpy as np, torch
torch.set_num_threads(1)
from diffusers import DiffusionPipeline
def seeded():
    return torch.Generator().manual_seed(0)
"""


def test_folder_is_a_diffusers_pipeline(tiny_folder):
    index = json.loads((tiny_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_dreamllm", "DreamLLMPipeline"]
    # The llm and processor live at the root, where diffusers' loader reads a component without a subfolder.
    assert index["llm"] == ["modeling_dreamllm", "DreamLLMForConditionalGeneration"]
    assert index["processor"] == ["processing_dreamllm", "DreamLLMProcessor"]
    assert not (tiny_folder / "llm").exists() and not (tiny_folder / "processor").exists()
    assert index["scheduler"] == ["diffusers", "DPMSolverMultistepScheduler"]
    assert all((tiny_folder / name).is_file() for name in ("pipeline_dreamllm.py", "interleaved_dreamllm.py",
                                                           "decoders_dreamllm.py"))
    # the folder keeps the training scheduler; the sampler is built from it
    training_scheduler = json.loads((tiny_folder / "scheduler" / "scheduler_config.json").read_text())
    assert training_scheduler["_class_name"] == "DDIMScheduler"


def test_generic_diffusers_load_in_a_fresh_process(tiny_folder, tmp_path):
    output = run_isolated(
        ISOLATED_PRELUDE
        + f"""
pipe = DiffusionPipeline.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
print("classes", type(pipe).__name__, type(pipe.llm).__name__, type(pipe.processor).__name__,
      type(pipe.scheduler).__name__)
images = pipe("a cat", num_inference_steps={STEPS}).images
print("pil", type(images[0]).__name__, images[0].size)
a = np.asarray(pipe("a cat", num_inference_steps={STEPS}, generator=seeded()).images[0])
b = np.asarray(pipe("a cat", num_inference_steps={STEPS}, generator=seeded()).images[0])
print("same seed identical", np.array_equal(a, b))
pt = pipe("a cat", num_inference_steps={STEPS}, generator=seeded(), output_type="pt").images
print("pt shape", tuple(pt.shape))
print("pt vs pil", float(np.abs(pt[0].permute(1, 2, 0).numpy() * 255 - a).max()))
# components passed to the generic loader replace the folder's, None included (the two-phase pattern)
encoder = DiffusionPipeline.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True, llm=pipe.llm, unet=None,
                                            vae=None, scheduler=None)
print("passed components", encoder.llm is pipe.llm, encoder.unet, encoder.vae, encoder.scheduler)
""",
        cwd=tmp_path,
    )
    assert "classes DreamLLMPipeline DreamLLMForConditionalGeneration DreamLLMProcessor DPMSolverMultistepScheduler" in output
    assert f"pil Image {DECODER_SIZE}" in output
    assert "passed components True None None None" in output
    assert "same seed identical True" in output
    assert "pt shape (1, 3, 16, 16)" in output
    assert float(output.split("pt vs pil ")[1].split()[0]) <= 0.5  # rounding to uint8 only


def test_save_load_save_round_trip_in_a_fresh_process(tiny_folder, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    output = run_isolated(
        ISOLATED_PRELUDE
        + f"""
import sys
from transformers import AutoModelForCausalLM, AutoProcessor
pipe = DiffusionPipeline.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
reference = pipe("a cat", num_inference_steps={STEPS}, generator=seeded(), output_type="np").images
pipe.save_pretrained({str(first)!r})
again = DiffusionPipeline.from_pretrained({str(first)!r}, trust_remote_code=True)
again.set_progress_bar_config(disable=True)
again.save_pretrained({str(second)!r})
reloaded = again("a cat", num_inference_steps={STEPS}, generator=seeded(), output_type="np").images
print("reloaded identical", np.array_equal(reference, reloaded))
story = again.generate_interleaved("Tell a story", max_new_tokens=2, num_inference_steps={STEPS})
print("interleaved from the folder", type(story).__module__, len(story.token_ids) == story.num_prompt_tokens + 2)
llm = AutoModelForCausalLM.from_pretrained({str(second)!r}, trust_remote_code=True)
processor = AutoProcessor.from_pretrained({str(second)!r}, trust_remote_code=True)
print("auto classes", type(llm).__name__, type(processor).__name__)
sys.path.insert(0, {str(second)!r})  # the folder's own copy of the pipeline module, no trust_remote_code
from pipeline_dreamllm import DreamLLMPipeline, DreamLLMStreamer
own = DreamLLMPipeline.from_pretrained({str(second)!r})
own.set_progress_bar_config(disable=True)
direct = own("a cat", num_inference_steps={STEPS}, generator=seeded(), output_type="np").images
print("class-level load identical", np.array_equal(reference, direct))
# A variant saved beside the default weights, with other values: the generic loader reads it for every component in
# a subfolder (diffusers looks for variants there); the llm's root variant is read by DreamLLMPipeline.from_pretrained.
with torch.no_grad():
    pipe.llm.model.dream_queries.weight.add_(1.0)
    pipe.unet.conv_in.bias.add_(1.0)
pipe.save_pretrained({str(first)!r}, variant="fp16")
variant = DiffusionPipeline.from_pretrained({str(first)!r}, variant="fp16", trust_remote_code=True, device_map="cpu")
default = DiffusionPipeline.from_pretrained({str(first)!r}, trust_remote_code=True)
own_variant = DreamLLMPipeline.from_pretrained({str(first)!r}, variant="fp16")
for name, loaded in (("variant", variant), ("default", default), ("own variant", own_variant)):
    same = [torch.equal(loaded.llm.model.dream_queries.weight, pipe.llm.model.dream_queries.weight),
            torch.equal(loaded.unet.conv_in.bias, pipe.unet.conv_in.bias)]
    print(name, "llm and unet are the variant", same)
print("device map", variant.hf_device_map, variant.llm.device)
try:
    DiffusionPipeline.from_pretrained({str(first)!r}, variant="ema", trust_remote_code=True)
except ValueError as error:
    print("unsaved variant ValueError", "variant=ema" in str(error))
""",
        cwd=tmp_path,
    )
    assert "reloaded identical True" in output
    # diffusers copied the interleaved module with the pipeline from the saved folder into its module namespace
    assert "interleaved from the folder diffusers_modules.local.interleaved_dreamllm True" in output
    assert "auto classes DreamLLMForConditionalGeneration DreamLLMProcessor" in output
    assert "class-level load identical True" in output
    assert "variant llm and unet are the variant [False, True]" in output
    assert "own variant llm and unet are the variant [True, True]" in output
    assert "default llm and unet are the variant [False, False]" in output
    assert "device map cpu cpu" in output
    assert "unsaved variant ValueError True" in output
    files = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())  # noqa: E731
    variant_files = {"model.fp16.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
                     "vae/diffusion_pytorch_model.fp16.safetensors"}
    assert set(files(first)) - set(files(second)) == variant_files
    assert set(files(first)) >= set(files(tiny_folder))
    for name in ("model_index.json", "config.json", "processor_config.json", "scheduler/scheduler_config.json"):
        assert (first / name).read_text() == (second / name).read_text(), name
    # the sampler is saved as is; it keeps the noise schedule the decoder was trained with
    saved, trained = (json.loads((root / "scheduler" / "scheduler_config.json").read_text())
                      for root in (first, tiny_folder))
    assert saved["_class_name"] == "DPMSolverMultistepScheduler"
    schedule = ("beta_schedule", "beta_start", "beta_end", "num_train_timesteps", "prediction_type")
    assert {key: saved[key] for key in schedule} == {key: trained[key] for key in schedule}
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()


def test_output_types(pipe):
    kwargs = {"num_inference_steps": STEPS, "generator": seeded()}
    assert pipe("a cat", output_type="np", **kwargs).images.shape == (1, 16, 16, 3)
    kwargs["generator"] = seeded()
    assert pipe("a cat", output_type="latent", **kwargs).images.shape == (1, 4, 8, 8)
    images = pipe(["a cat", "a dog"], num_images_per_prompt=2, num_inference_steps=STEPS).images
    assert len(images) == 4 and images[0].size == DECODER_SIZE
    (image,) = pipe("a cat", num_inference_steps=STEPS, return_dict=False)
    assert len(image) == 1


def test_null_condition_is_computed_in_each_call_and_follows_the_weights(pipe):
    llm_calls = count_calls(pipe.llm, lambda args, kwargs: kwargs["input_ids"].shape)
    pipe("a cat", num_inference_steps=STEPS)
    pipe("a dog", num_inference_steps=STEPS)
    null_ids = pipe.llm.model.null_condition_ids()
    null_calls = [shape for shape in llm_calls if shape == null_ids.shape]
    assert len(llm_calls) == 4 and len(null_calls) == 2  # one prompt call and one null condition per call
    torch.testing.assert_close(pipe.null_condition(), pipe.llm.get_null_condition())
    before = pipe.null_condition()
    with torch.no_grad():  # any weight of the llm (an adapter, a training step), not only the dream queries
        pipe.llm.model.language_model.layers[-1].mlp.down_proj.weight.add_(0.5)
    after = pipe.null_condition()
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, pipe.llm.get_null_condition())


def test_guidance_runs_one_unet_call_per_step_on_both_branches(pipe):
    batches = count_calls(pipe.unet, lambda args, kwargs: args[0].shape[0])
    pipe(["a cat", "a dog"], num_inference_steps=3, guidance_scale=5.0)
    assert batches == [4, 4, 4]
    batches.clear()
    pipe(["a cat", "a dog"], num_inference_steps=3, guidance_scale=1.0)
    assert batches == [2, 2, 2]


def test_negative_prompt_replaces_the_null_condition(pipe):
    llm_calls = count_calls(pipe.llm, lambda args, kwargs: kwargs["input_ids"].shape[0])
    plain = pipe("a cat", num_inference_steps=STEPS, generator=seeded(), output_type="np").images
    llm_calls.clear()
    negative = pipe("a cat", negative_prompt="a dog", num_inference_steps=STEPS, generator=seeded(), output_type="np")
    assert llm_calls == [2]  # prompt and negative prompt in one LLM call; no null condition
    assert not np.allclose(plain, negative.images)
    cond, uncond = pipe.encode_prompt("a cat", pipe.device, 1, True, negative_prompt="a dog")
    torch.testing.assert_close(uncond, pipe.encode_prompt("a dog", pipe.device, 1, False)[0])


def test_batched_prompts_are_left_padded_like_single_ones(pipe):
    prompts = ["a cat", "What is this? It is a photo of a cat sitting on a red sofa."]
    batched, _ = pipe.encode_prompt(prompts, pipe.device, 1, False)
    for row, prompt in zip(batched, prompts):
        torch.testing.assert_close(row, pipe.encode_prompt(prompt, pipe.device, 1, False)[0][0])


def test_interleaved_prompt_with_an_image(pipe, rgb_image):
    text_only, _ = pipe.encode_prompt("the same cat, in watercolour", pipe.device, 1, False)
    with_image, _ = pipe.encode_prompt([rgb_image, "the same cat, in watercolour"], pipe.device, 1, False)
    assert not torch.allclose(text_only, with_image)  # the image reached the LLM
    images = pipe([[rgb_image, "the same cat"], "a cat"], num_inference_steps=STEPS).images
    assert len(images) == 2 and images[0].size == DECODER_SIZE


def test_scheduler_swap_and_official_settings(pipe):
    from diffusers import DDIMScheduler, DDPMScheduler

    for scheduler_class in (DDIMScheduler, DDPMScheduler):
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)
        assert pipe("a cat", num_inference_steps=3, guidance_scale=2.0).images[0].size == DECODER_SIZE
    assert pipe.scheduler.config.num_train_timesteps == 1000


def test_callback_on_step_end_can_replace_latents(pipe):
    seen = []

    def zero_latents(pipeline, step, timestep, tensors):
        seen.append((step, tuple(tensors["latents"].shape), tuple(tensors["prompt_embeds"].shape)))
        return {"latents": torch.zeros_like(tensors["latents"])}

    pipe("a cat", num_inference_steps=3, callback_on_step_end=zero_latents,
         callback_on_step_end_tensor_inputs=["latents", "prompt_embeds"])
    assert [step for step, _, _ in seen] == [0, 1, 2]
    assert seen[0][1] == (1, 4, 8, 8) and seen[0][2] == (2, 8, 16)  # both guidance branches


def test_generate_interleaved_with_weights_that_emit_dream_start(pipe):
    config = pipe.llm.config
    text_token = 70
    fixed_logits_head(pipe, {text_token: 0.0, config.dream_start_token_id: 0.0})  # a coin flip between the two
    pipe.null_condition()  # cached once for the pipeline, outside the document
    null_ids = pipe.llm.model.null_condition_ids()
    # Tokens the document feeds the llm (each image's null condition for guidance is a forward of its own).
    fed = count_calls(pipe.llm, lambda args, kwargs: 0 if torch.equal(kwargs["input_ids"], null_ids)
                      else kwargs["input_ids"].shape[1])
    streamer = DreamLLMStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = pipe.generate_interleaved(
        "Tell a story", max_new_tokens=12, max_images=2, do_sample=True, generator=torch.Generator().manual_seed(6),
        num_inference_steps=STEPS, streamer=streamer,
    )
    streamed = []  # text pieces joined into runs, images as they came
    for piece in streamer:
        if isinstance(piece, str) and streamed and isinstance(streamed[-1], str):
            streamed[-1] += piece
        elif piece != "":
            streamed.append(piece)
    kinds = ["text" if isinstance(segment, str) else "image" for segment in out.segments]
    assert kinds == ["text", "image", "text", "image", "text"], kinds  # this seed's coin flips
    assert kinds == document_structure(out.token_ids[out.num_prompt_tokens :].tolist(), config)
    assert streamed == out.segments
    assert all(segment.size == DECODER_SIZE for segment in out.segments if not isinstance(segment, str))
    assert out.num_llm_tokens == out.document_length == len(out.token_ids) == sum(fed)
    assert out.finish_reason == "length"
    ids = out.token_ids.tolist()
    assert ids.count(config.dream_start_token_id) == ids.count(config.image_start_token_id) == 2
    assert ids.count(text_token) == 12 - 2  # every sampled token was read once, images at the sampled places


def test_generate_interleaved_follows_a_logits_processor_and_caps_images(pipe):
    config = pipe.llm.config

    def always_dream(input_ids, scores):  # the runtime must still refuse images past max_images
        scores = torch.full_like(scores, -1e4)
        scores[:, config.dream_start_token_id] = 0
        scores[:, 70] = -1
        return scores

    out = pipe.generate_interleaved("Draw", max_new_tokens=5, max_images=3, num_inference_steps=STEPS,
                                    logits_processor=always_dream)
    kinds = ["text" if isinstance(segment, str) else "image" for segment in out.segments]
    assert kinds == ["image", "image", "image", "text"]
    block = len(pipe.processor.dream_block()) + len(pipe.processor.image_block())
    assert out.document_length == out.num_prompt_tokens + 3 * block + 2 == out.num_llm_tokens


def test_generate_interleaved_stops_at_eos_and_takes_chat_messages(pipe, rgb_image):
    fixed_logits_head(pipe, {pipe.llm.config.text_config.eos_token_id: 1.0, 70: 0.0})
    messages = [{"role": "user", "content": [{"type": "image", "image": rgb_image}, {"type": "text", "text": "Hi"}]}]
    out = pipe.generate_interleaved(messages, max_new_tokens=8)
    assert out.finish_reason == "eos" and out.segments == []
    assert out.document_length == out.num_prompt_tokens == out.num_llm_tokens
    assert pipe.llm.config.image_start_token_id in out.token_ids.tolist()


def test_push_to_hub_uploads_the_saved_folder_with_the_public_upload_folder(pipe, tiny_folder, tmp_path, monkeypatch):
    from types import SimpleNamespace

    import diffusers.utils.hub_utils as hub_utils
    import huggingface_hub

    uploaded, calls = tmp_path / "uploaded", []

    def upload_folder(*, repo_id, folder_path, **kwargs):
        calls.append((repo_id, kwargs["commit_message"]))
        shutil.copytree(folder_path, uploaded)

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kwargs: SimpleNamespace(repo_id=repo_id))
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    monkeypatch.setattr(hub_utils, "load_or_create_model_card", lambda *args, **kwargs: SimpleNamespace(
        save=lambda path: open(path, "w").write("---\n---\n")))
    monkeypatch.setattr(hub_utils, "populate_model_card", lambda card, *args, **kwargs: card)
    pipe.push_to_hub("someone/dreamllm-tiny")
    assert calls == [("someone/dreamllm-tiny", "Upload DreamLLM pipeline")]
    tiny_files = {str(p.relative_to(tiny_folder)) for p in tiny_folder.rglob("*") if p.is_file()}
    assert tiny_files <= {str(p.relative_to(uploaded)) for p in uploaded.rglob("*") if p.is_file()}
    assert (uploaded / "README.md").is_file()
    reloaded = DreamLLMPipeline.from_pretrained(uploaded)
    torch.testing.assert_close(reloaded.null_condition(), pipe.null_condition())


def test_transformers_image_text_to_text_pipeline_reads_the_same_folder(tiny_folder, rgb_image):
    from transformers import pipeline

    understand = pipeline("image-text-to-text", model=str(tiny_folder), trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": rgb_image}, {"type": "text", "text": "What?"}]}]
    (answer,) = understand(text=messages, max_new_tokens=3)
    assert answer["generated_text"][-1]["role"] == "assistant"


def test_a_hub_repo_is_downloaded_whole_then_loaded(tiny_folder, monkeypatch):
    """diffusers' Hub download fetches a custom component's code from its subfolder; the llm and processor live at the
    root, so `DreamLLMPipeline.from_pretrained` downloads the repo whole (offline here: the download returns a folder)."""
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, **kwargs: calls.append((repo_id, kwargs)) or str(tiny_folder))
    pipe = DreamLLMPipeline.from_pretrained("someone/dreamllm-tiny", revision="main", dtype=torch.bfloat16)
    assert calls == [("someone/dreamllm-tiny", {"revision": "main"})]
    assert pipe.llm.dtype == pipe.unet.dtype == torch.bfloat16
