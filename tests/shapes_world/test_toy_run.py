"""`python -m train.toy` end to end at a tiny scale from a trained stage 0 (`--stage0`; stage 0 itself is tested in
test_toy_stage0.py): files, assemble, three stages, evaluation, model card, and the synergy arms next to it."""

import json
from pathlib import Path

import pytest
import torch

from train.toy.recipe import PLANS, STAGE_ORDER
from train.toy.synergy import ARMS, arm_plans, synergy_table

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory, toy_stage0) -> Path:
    from train.toy.__main__ import main

    output = tmp_path_factory.mktemp("toy") / "run"
    main(["--output", str(output), "--scale", "0.01", "--stage0", str(toy_stage0)])
    return output


def test_run_writes_a_loadable_model_with_its_card_and_logs(toy_run):
    from pipeline_dreamllm import DreamLLMPipeline

    final = toy_run / "sft"
    pipe = DreamLLMPipeline.from_pretrained(final)
    assert pipe.llm.config.num_dream_queries == 16
    assert pipe.unet.config.sample_size == 16  # the world's own decoder, 64 px pictures
    logs = json.loads((toy_run / "losses.json").read_text())
    assert list(logs["losses"]) == list(STAGE_ORDER)
    for stage in STAGE_ORDER:
        assert any("diffusion_loss" in row for row in logs["losses"][stage]), stage
    assert (toy_run / "losses.png").read_bytes()[:4] == b"\x89PNG"
    scores = json.loads((toy_run / "scores.json").read_text())
    assert set(scores) == {"text_to_image", "understanding", "draw_instructions", "caption_requests", "interleaved"}
    for area in ("draw_instructions", "caption_requests"):
        assert set(scores[area]) == {"one_image", "images_per_reply", "color", "shape", "position", "n"}
    run = json.loads((toy_run / "run.json").read_text())
    assert (run["seed"], run["scale"]) == (0, 0.01) and run["seconds"] > 0
    assert all(0.0 <= scores["understanding"][k] <= 1.0 for k in ("color", "shape", "position", "all"))
    card = (final / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert (toy_run / "scores.txt").read_text().strip() in card
    assert "| igpt | + the LLM |" in card
    assert not list(toy_run.glob("*/training_args.bin"))  # no pickles in folders meant for publishing


def test_synergy_arms_keep_the_steps_and_each_skills_samples():
    joint, comprehension, creation = (arm_plans(arm) for arm in ARMS)
    assert joint == PLANS
    for plans in (comprehension, creation):
        assert {s: (p.steps, p.learning_rate) for s, p in plans.items()} == {
            s: (p.steps, p.learning_rate) for s, p in PLANS.items()
        }
    assert all(p.creation_prob == 0.0 for p in comprehension.values())
    assert all(p.creation_prob == 1.0 for p in creation.values())
    used = lambda plans: {key.partition(":")[0] for plan in plans.values() for key in plan.data}  # noqa: E731
    assert used(comprehension) == {"pairs", "qa"}
    assert used(creation) == {"pairs", "stories", "instructions"}
    # Each single-skill batch is its skill's share of the joint batch: SFT's qa:13 of 18.5 weight is 39 of 56
    # samples, its instructions, stories and drawn pairs (2 + 0.5 + 3) 17; I-GPT's captioned fifth of the pairs
    # goes with Q&A.
    assert (comprehension["sft"].data, comprehension["sft"].batch_size) == (("qa:13",), 39)
    assert (creation["sft"].data, creation["sft"].batch_size) == (("instructions:2", "stories:0.5", "pairs:3"), 17)
    assert comprehension["igpt"].data == ("qa:4", "pairs:0.2") and creation["igpt"].data == ("stories:1", "pairs:0.8")
    assert comprehension["igpt"].batch_size + creation["igpt"].batch_size == PLANS["igpt"].batch_size
    assert comprehension["alignment"].batch_size == creation["alignment"].batch_size == PLANS["alignment"].batch_size / 2
    with pytest.raises(ValueError, match="unknown synergy arm 'both'"):
        arm_plans("both")


def test_synergy_table_has_a_column_per_arm_and_seed_and_the_means():
    def scores(value):
        return {
            "text_to_image": {"color": value, "shape": value, "position": value, "all": value},
            "understanding": {"color": value, "shape": value, "position": value, "all": value},
        }

    table = synergy_table({"joint": {"0": scores(0.9), "1": scores(0.7)}, "creation-only": {"0": scores(0.5)}})
    lines = table.splitlines()
    assert lines[0] == "| metric | joint s0 | joint s1 | creation-only s0 | joint mean | creation-only mean |"
    assert lines[2] == "| text-to-image color | 90.0% | 70.0% | 50.0% | 80.0% | 50.0% |"
    assert len(lines) == 2 + 8  # rows without a value in any column are left out


def test_synergy_runs_next_to_a_main_run(toy_run):
    from train.toy.synergy import run_synergy

    table = run_synergy(toy_run, seeds=(0,), scale=0.01, quick=True)
    assert table.splitlines()[0] == (
        "| metric | joint s0 | comprehension-only s0 | creation-only s0 | joint mean | comprehension-only mean "
        "| creation-only mean |"
    )
    assert (toy_run / "synergy.md").read_text().strip() == table
    saved = json.loads((toy_run / "synergy.json").read_text())
    assert (saved["seeds"], saved["scale"], set(saved["results"])) == ([0], 0.01, set(ARMS))
    assert saved["plans"]["creation-only"]["sft"]["batch_size"] == 17
    # Joint at the main run's seed, scale and evaluation size is the main run itself; the other arms train beside it.
    assert saved["results"]["joint"]["0"] == json.loads((toy_run / "scores.json").read_text())
    folders = toy_run / "synergy" / "scale-0.01"
    assert sorted(path.name for path in folders.iterdir()) == ["comprehension-only-seed0", "creation-only-seed0"]
    diffusion = {}
    for arm in ("comprehension-only", "creation-only"):
        assert saved["results"][arm]["0"] == json.loads((folders / f"{arm}-seed0" / "scores.json").read_text())
        assert (folders / f"{arm}-seed0" / "sft" / "config.json").exists()
        losses = json.loads((folders / f"{arm}-seed0" / "losses.json").read_text())["losses"]
        diffusion[arm] = [row["diffusion_loss"] for rows in losses.values() for row in rows if "diffusion_loss" in row]
    assert diffusion["comprehension-only"] and max(diffusion["comprehension-only"]) == 0.0  # nothing is created
    assert min(diffusion["creation-only"]) > 0.0
    assert run_synergy(toy_run, seeds=(0,), scale=0.01, quick=True) == table  # trained arms are reused, not retrained

    # Another seed trains its own arms.
    run_synergy(toy_run, seeds=(1,), scale=0.01, arms=("comprehension-only",), quick=True)
    seed1 = json.loads((folders / "comprehension-only-seed1" / "losses.json").read_text())["losses"]
    seed0 = json.loads((folders / "comprehension-only-seed0" / "losses.json").read_text())["losses"]
    assert [row["lm_loss"] for row in seed1["igpt"] if "lm_loss" in row] != [
        row["lm_loss"] for row in seed0["igpt"] if "lm_loss" in row]


def test_probe_reports_paired_loss_gaps_per_timestep_band(toy_stage0):
    from diffusers import StableDiffusionPipeline

    from train.probes.decoder_conditions import sensitivity_table, timestep_sensitivity

    pipeline = StableDiffusionPipeline.from_pretrained(toy_stage0 / "diffusion")
    rows = timestep_sensitivity(pipeline, num_scenes=4, num_bands=2, draws=1)
    assert [row["timesteps"] for row in rows] == [(0, 500), (500, 1000)]
    assert all(row["loss"] > 0 and set(row) == {"timesteps", "loss", "color", "shape", "position"} for row in rows)
    assert rows == timestep_sensitivity(pipeline, num_scenes=4, num_bands=2, draws=1)  # seeded
    # The gaps are paired against the true caption: exactly zero where the decoder cannot see its condition.
    def condition_blind_forward(sample, timestep, encoder_hidden_states):
        return type(pipeline.unet).forward(pipeline.unet, sample, timestep, torch.zeros_like(encoder_hidden_states))

    pipeline.unet.forward = condition_blind_forward
    assert all(row[name] == 0 for row in timestep_sensitivity(pipeline, num_scenes=4, num_bands=2, draws=1)
               for name in ("color", "shape", "position"))
    lines = sensitivity_table(rows).splitlines()
    assert lines[0].startswith("| timesteps |") and lines[2].startswith("| 0-499 |") and len(lines) == 4


def test_condition_comparison_scores_dreamllm_against_the_decoders_text_tower(toy_run, toy_stage0):
    from diffusers import StableDiffusionPipeline

    from pipeline_dreamllm import DreamLLMPipeline
    from train.probes.decoder_conditions import comparison_table, condition_comparison
    from train.toy.stage0_diffusion import encode_text

    pipeline = StableDiffusionPipeline.from_pretrained(toy_stage0 / "diffusion")
    dreamllm = DreamLLMPipeline.from_pretrained(toy_run / "sft")
    rows = condition_comparison(pipeline, dreamllm, num_scenes=4, num_bands=2, draws=1)
    assert [row["timesteps"] for row in rows] == [(0, 500), (500, 1000)]
    assert all(row["text"] > 0 and row["dreamllm"] > 0 for row in rows)
    lines = comparison_table(rows).splitlines()
    assert lines[0].startswith("| timesteps |") and lines[2].startswith("| 0-499 |") and len(lines) == 4
    # Paired: a DreamLLM whose conditions were the text tower's scores exactly as the text tower does.
    def text_tower_conditions(prompts, device, num_images_per_prompt, do_classifier_free_guidance):
        return encode_text(pipeline.text_encoder, pipeline.tokenizer, prompts), None

    dreamllm.encode_prompt = text_tower_conditions
    for row in condition_comparison(pipeline, dreamllm, num_scenes=4, num_bands=2, draws=1):
        assert (row["dreamllm"], row["dreamllm_swap"]) == (row["text"], row["text_swap"])
    with torch.no_grad():
        dreamllm.unet.conv_in.bias.add_(1.0)
    with pytest.raises(ValueError, match="UNet is not this Stable Diffusion folder's"):
        condition_comparison(pipeline, dreamllm, num_scenes=4, num_bands=2, draws=1)
