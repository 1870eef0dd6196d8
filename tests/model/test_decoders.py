"""Every supported diffusion-decoder family, end to end from tiny random folders in diffusers' native layouts:
assembled with `python -m train.assemble --llm --vision --diffusion`, trained two `igpt` steps, saved, loaded back by
`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` in a fresh process, then text-to-image with
classifier-free guidance against the null condition, and an interleaved document with an image.

Adding a family is one adapter in `decoders_dreamllm.py`, one branch in `train/tiny_random.py` and one row of
`FAMILIES`. Stable Diffusion 1.x/2.x runs through tests/model/test_backbones.py and tests/pipeline/."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_isolated
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling
from safetensors.torch import load_file

from decoders_dreamllm import decoder_family, folder_decoder_family
from pipeline_dreamllm import DreamLLMPipeline
from train.assemble import main as assemble_main
from train.data.example_files import write_pair_folder
from train.diffusion_loss import DreamLLMDiffusionLoss
from train.stages import main as train_main
from train.tiny_random import TINY_POOLED_SIZE, build_tiny_components

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# family -> (LLM, vision tower, what the folder is): each row also varies the LLM and the tower.
FAMILIES = {
    "sdxl": dict(llm="llama", vision="clip", name="stable-diffusion-xl", denoiser="unet", latent_channels=4,
                 sampler="DPMSolverMultistepScheduler"),
    "sd3": dict(llm="qwen2", vision="siglip", name="stable-diffusion-3", denoiser="transformer", latent_channels=16,
                sampler="FlowMatchEulerDiscreteScheduler"),
}
CONTEXT = 16  # the tiny decoders' context width (train.tiny_random's default condition_hidden_size)


@pytest.fixture(scope="module", params=list(FAMILIES))
def trained(request, tmp_path_factory) -> dict:
    family = request.param
    facts = FAMILIES[family]
    root = tmp_path_factory.mktemp(family)
    parts = build_tiny_components(root / "parts", llm=facts["llm"], vision=facts["vision"], decoder=family)
    assembled = root / "assembled"
    assemble_main(["--llm", str(parts["llm"]), "--vision", str(parts["vision"]), "--diffusion",
                   str(parts["diffusion"]), "--output", str(assembled), "--num-dream-queries", "8"])
    output = root / "igpt"
    trainer = train_main([
        "--stage", "igpt", "--model_name_or_path", str(assembled), "--output_dir", str(output),
        "--data", str(write_pair_folder(root / "pairs")), "--max_steps", "2", "--per_device_train_batch_size", "2",
        "--bf16", "false", "--activation_checkpointing", "false", "--logging_steps", "1", "--save_steps", "100",
        "--disable_tqdm", "true", "--seed", "0", "--report_to", "none", "--learning_rate", "1e-2",
        "--creation_prob", "1.0",  # every pair is a creation sample: both steps have a diffusion loss
    ])
    losses = [entry["diffusion_loss"] for entry in trainer.state.log_history if "diffusion_loss" in entry]
    return dict(family=family, facts=facts, parts=parts, assembled=assembled, trained=output, losses=losses)


def test_assembly_reads_every_width_from_the_decoder(trained):
    facts, folder = trained["facts"], trained["assembled"]
    config = json.loads((folder / "config.json").read_text())
    assert (config["condition_hidden_size"], config["pooled_condition_hidden_size"]) == (CONTEXT, TINY_POOLED_SIZE)
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted([facts["denoiser"], "scheduler", "vae"])
    assert folder_decoder_family(folder).name == facts["name"]
    weights = load_file(folder / "model.safetensors")
    assert weights["model.condition_projector.weight"].shape == (CONTEXT, 32)  # the tiny LLM is 32 wide
    assert weights["model.pooled_projector.weight"].shape == (TINY_POOLED_SIZE, 32)
    index = json.loads((folder / "model_index.json").read_text())
    assert index[facts["denoiser"]][1] and index["scheduler"] == ["diffusers", facts["sampler"]]
    other = "unet" if facts["denoiser"] == "transformer" else "transformer"
    assert index[other] == [None, None]


def test_two_igpt_steps_train_the_queries_and_both_projectors(trained):
    assert len(trained["losses"]) == 2 and np.isfinite(trained["losses"]).all() and min(trained["losses"]) > 0
    before = load_file(trained["assembled"] / "model.safetensors")
    after = load_file(trained["trained"] / "model.safetensors")
    for key in ("model.dream_queries.weight", "model.condition_projector.weight", "model.pooled_projector.weight"):
        assert not torch.equal(before[key], after[key]), key  # the diffusion loss's gradient reached them
    denoiser = trained["facts"]["denoiser"]
    decoder_files = sorted(p.relative_to(trained["trained"]) for p in (trained["trained"] / denoiser).rglob("*"))
    assert decoder_files == sorted(p.relative_to(trained["assembled"])
                                   for p in (trained["assembled"] / denoiser).rglob("*"))


def test_pooled_vector_is_the_pooled_projector_of_the_mean_query_state(trained):
    """The adapter's mean over queries of the pooled channels equals projecting the mean dream-query state, the
    pooling of the official SDXL head and the SD3.5 retrain."""
    pipe = DreamLLMPipeline.from_pretrained(trained["trained"])
    base = pipe.llm.model
    ids = pipe.processor(text="a cat<dream>", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = base(input_ids=ids, return_dict=True)
        states = out.last_hidden_state[ids == pipe.llm.config.image_patch_token_id].view(1, 8, -1)
    context, pooled = pipe.decoder.split(out.condition_embeds)
    torch.testing.assert_close(context, base.condition_projector(states))
    torch.testing.assert_close(pooled, base.pooled_projector(states.mean(1)))
    assert pooled.shape == (1, TINY_POOLED_SIZE)


def test_fresh_process_loads_the_pipeline_and_creates_with_guidance_and_interleaved(trained, tmp_path):
    """`DiffusionPipeline.from_pretrained(..., trust_remote_code=True)` from a clean process: text-to-image of the
    decoder's size, guidance whose unconditional branch is the null condition, and a document with an image."""
    facts = trained["facts"]
    output = run_isolated(
        f"""
import numpy as np, torch
from diffusers import DiffusionPipeline
from transformers import LogitsProcessor, LogitsProcessorList
pipe = DiffusionPipeline.from_pretrained({str(trained["trained"])!r}, trust_remote_code=True)
pipe.set_progress_bar_config(disable=True)
print("classes", type(pipe.denoiser).__name__, type(pipe.scheduler).__name__, pipe.decoder.name)
seeded = lambda: torch.Generator().manual_seed(0)
run = lambda **kw: pipe(num_inference_steps=2, output_type="np", generator=seeded(), **kw).images
image = run(prompt="a blue square", guidance_scale=3.0)
print("shape", image.shape, bool(np.isfinite(image).all()))
cond, null = pipe.encode_prompt("a blue square", pipe.device, 1, True)
print("null is the llm's", torch.equal(null, pipe.llm.get_null_condition().to(null.dtype)))
explicit = run(prompt_embeds=cond, negative_prompt_embeds=null, guidance_scale=3.0)
print("guided with the null condition", np.array_equal(image, explicit))
print("guidance matters", not np.array_equal(image, run(prompt="a blue square", guidance_scale=1.0)))
print("negative matters", not np.array_equal(image, run(prompt_embeds=cond, negative_prompt_embeds=cond * 0.5,
                                                      guidance_scale=3.0)))
config, eos = pipe.llm.config, pipe.processor.tokenizer.eos_token_id
class OneImageThenStop(LogitsProcessor):
    def __call__(self, input_ids, scores):
        forced = eos if (input_ids == config.dream_start_token_id).any() else config.dream_start_token_id
        scores = torch.full_like(scores, -1e9)
        scores[:, forced] = 0.0
        return scores
document = pipe.generate_interleaved("A picture:", max_new_tokens=4, max_images=1, num_inference_steps=2,
                                     logits_processor=LogitsProcessorList([OneImageThenStop()]))
images = [part for part in document.segments if not isinstance(part, str)]
print("interleaved images", len(images), images[0].size if images else None)
""",
        cwd=tmp_path,
    )
    denoiser_class = "SD3Transformer2DModel" if facts["denoiser"] == "transformer" else "UNet2DConditionModel"
    assert f"classes {denoiser_class} {facts['sampler']} {facts['name']}" in output
    assert "shape (1, 16, 16, 3) True" in output
    assert "null is the llm's True" in output
    assert "guided with the null condition True" in output
    assert "guidance matters True" in output and "negative matters True" in output
    assert "interleaved images 1 (16, 16)" in output


def test_flow_matching_loss_is_diffusers_recipe(trained):
    """SD3: sigmas from the shifted scheduler at logit-normal timesteps, x_t = (1 - s) x0 + s noise, the output
    preconditioned to x0 (diffusers' SD3 training script), recomputed here from the same draws."""
    if trained["family"] != "sd3":
        pytest.skip("flow matching is the SD3 family's objective; the UNets train by noise prediction")
    loss_fn = DreamLLMDiffusionLoss.from_pretrained(trained["trained"])
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(trained["trained"], subfolder="scheduler")
    assert scheduler.config.shift == 3.0
    # the shift: sigma = 3 t / (1 + 2 t) over the training grid t = 1, 0.999, ..., 0.001
    t = torch.arange(1000, 0, -1) / 1000
    torch.testing.assert_close(loss_fn.train_sigmas, 3 * t / (1 + 2 * t))
    condition = torch.randn(2, 8, CONTEXT + TINY_POOLED_SIZE, requires_grad=True)
    targets = torch.rand(2, 3, 16, 16) * 2 - 1
    torch.manual_seed(0)
    loss = loss_fn(condition, targets)
    loss.backward()
    assert condition.grad[..., CONTEXT:].abs().sum() > 0 and condition.grad[..., :CONTEXT].abs().sum() > 0

    torch.manual_seed(0)  # the same draws, in the loss's order: posterior sample, noise, sigmas
    sample_noise = torch.randn(2, 16, 8, 8)
    noise = torch.randn(2, 16, 8, 8)
    u = compute_density_for_timestep_sampling("logit_normal", 2, logit_mean=0.0, logit_std=1.0)
    indices = (u * 1000).long()
    sigmas = scheduler.sigmas[indices].view(-1, 1, 1, 1)
    latents = loss_fn.encode_latents(targets, sample_noise)
    noisy = (1 - sigmas) * latents + sigmas * noise
    with torch.no_grad():
        context, pooled = condition[..., :CONTEXT], condition[..., CONTEXT:].mean(1)
        velocity = loss_fn.unet(hidden_states=noisy, encoder_hidden_states=context, pooled_projections=pooled,
                                timestep=scheduler.timesteps[indices]).sample
    expected = ((noisy - sigmas * velocity - latents) ** 2).mean()
    torch.testing.assert_close(loss.detach(), expected)


def test_sdxl_time_ids_are_the_made_images_size(trained):
    if trained["family"] != "sdxl":
        pytest.skip("time ids are SDXL's added conditioning")
    family = folder_decoder_family(trained["trained"])
    assert family.pooled_dim == TINY_POOLED_SIZE  # projection_class_embeddings_input_dim - 6 * addition_time_embed_dim
    assert family.time_ids(2, (16, 24), "cpu", torch.float32).tolist() == [[16, 24, 0, 0, 16, 24]] * 2


def test_sd3_sizes_must_fill_whole_patches(trained):
    if trained["family"] != "sd3":
        pytest.skip("only the SD3 transformer patchifies its latents")
    pipe = DreamLLMPipeline.from_pretrained(trained["trained"])
    with pytest.raises(ValueError, match=r"divisible by 4 for this stable-diffusion-3 decoder .* got 18x16"):
        pipe("a cat", height=18, width=16, num_inference_steps=1)
    assert pipe("a cat", height=24, width=16, num_inference_steps=1, output_type="np").images.shape == (1, 24, 16, 3)


def test_decoder_families_are_chosen_from_the_folder_and_unknown_ones_refused(tmp_path):
    assert decoder_family("UNet2DConditionModel", {"cross_attention_dim": 1024}).name == "stable-diffusion"
    with pytest.raises(ValueError, match="unsupported diffusion decoder SanaTransformer2DModel"):
        decoder_family("SanaTransformer2DModel", {})
    parts = build_tiny_components(tmp_path / "parts", decoder="sd3")
    (parts["diffusion"] / "transformer" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a diffusers decoder folder .*\['unet', 'transformer'\]"):
        assemble_main(["--llm", str(parts["llm"]), "--vision", str(parts["vision"]), "--diffusion",
                       str(parts["diffusion"]), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        assemble_main(["--preset", "tiny-random", "--decoder", "flux", "--output", str(tmp_path / "out")])


def test_tiny_random_preset_builds_each_family(tmp_path):
    for family, facts in FAMILIES.items():
        assemble_main(["--preset", "tiny-random", "--decoder", family, "--output", str(tmp_path / family)])
        assert folder_decoder_family(tmp_path / family).name == facts["name"]
        vae = json.loads((Path(tmp_path / family) / "vae" / "config.json").read_text())
        assert vae["latent_channels"] == facts["latent_channels"]


def test_a_config_without_a_pooled_width_loads_as_before():
    """Folders written before the decoder families (checkpoints/toy, converted releases) have no pooled projector."""
    from huggingface_hub.errors import StrictDataclassClassValidationError

    from configuration_dreamllm import DreamLLMConfig

    toy = Path(__file__).resolve().parents[2] / "checkpoints" / "toy"
    saved = json.loads((toy / "config.json").read_text())
    assert "pooled_condition_hidden_size" not in saved
    config = DreamLLMConfig.from_pretrained(toy)
    assert config.pooled_condition_hidden_size == 0
    unet_config = json.loads((toy / "unet" / "config.json").read_text())
    assert decoder_family("UNet2DConditionModel", unet_config).pooled_dim == 0
    with pytest.raises(StrictDataclassClassValidationError, match="pooled_condition_hidden_size must be >= 0"):
        DreamLLMConfig(pooled_condition_hidden_size=-1)


def test_lora_trains_the_pooled_projector_in_full(trained, tmp_path):
    """Under LoRA the projectors train in full (PEFT's modules_to_save): the pooled one too, and the merged folder
    holds it."""
    if trained["family"] != "sd3":
        pytest.skip("one family suffices: the pooled projector is the same module for SDXL")
    from train.data.example_files import write_mmc4

    output = tmp_path / "lora"
    train_main(["--stage", "sft", "--model_name_or_path", str(trained["trained"]), "--output_dir", str(output),
                "--data", str(write_mmc4(tmp_path / "mmc4")), "--max_steps", "2", "--per_device_train_batch_size", "2",
                "--bf16", "false", "--activation_checkpointing", "false", "--save_steps", "100", "--disable_tqdm",
                "true", "--seed", "0", "--report_to", "none", "--lora_r", "4", "--learning_rate", "1e-2",
                "--save_merged", "true"])
    before, after = load_file(trained["trained"] / "model.safetensors"), load_file(output / "model.safetensors")
    assert set(before) == set(after)
    assert not torch.equal(before["model.pooled_projector.weight"], after["model.pooled_projector.weight"])
    assert (output / "transformer" / "config.json").is_file() and not (output / "unet").exists()
