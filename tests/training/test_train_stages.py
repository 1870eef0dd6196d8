"""Training stages end to end on a tiny random folder: what trains, what stays frozen, what is written."""

import filecmp
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.data import build_train_dataset
from train.data.example_files import write_example_sources, write_mmc4
from train.stages import build_trainer, load_model, main, parse_args, set_stage_trainable


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_example_sources(tmp_path_factory.mktemp("stage-data"))


def stage_argv(stage, folder, output, data, *extra, steps=3):
    argv = ["--stage", stage, "--model_name_or_path", str(folder), "--output_dir", str(output)]
    for spec in data:
        argv += ["--data", str(spec)]
    argv += ["--max_steps", str(steps), "--per_device_train_batch_size", "2", "--bf16", "false",
             "--activation_checkpointing", "false", "--logging_steps", "1", "--save_steps", "2",
             "--disable_tqdm", "true", "--seed", "0", "--report_to", "none"]
    return argv + [str(item) for item in extra]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def changed(before, after, prefix) -> bool:
    keys = [key for key in before if key.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(before[key], after[key]) for key in keys)


def losses(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def assert_same_decoder(source, target):
    for name in ("unet", "vae", "scheduler"):
        comparison = filecmp.dircmp(source / name, target / name)
        assert not comparison.left_only and not comparison.diff_files, name
        for file in comparison.common_files:
            assert filecmp.cmp(source / name / file, target / name / file, shallow=False)


def test_every_stage_trains_its_parts_and_writes_a_loadable_folder(tiny_folder, sources, tmp_path):
    initial = weights(tiny_folder)
    runs = [
        ("alignment", tiny_folder, [sources["pairs"], sources["webdataset"]]),
        ("igpt", tmp_path / "alignment", [sources["mmc4"], f"{sources['pairs']}:0.5"]),
        ("sft", tmp_path / "igpt", [sources["llava"], sources["instructions"]]),
    ]
    for stage, source, data in runs:
        output = tmp_path / stage
        before = weights(source)
        trainer = main(stage_argv(stage, source, output, data))
        assert all(math.isfinite(v) for v in losses(trainer, "lm_loss") + losses(trainer, "diffusion_loss"))
        assert len(losses(trainer, "lm_loss")) == 3
        after = weights(output)
        # frozen everywhere: CLIP (in the model) and the decoder (copied, and untouched in memory)
        assert not changed(before, after, "model.vision_tower.")
        assert not changed(initial, after, "model.vision_tower.")
        assert_same_decoder(tiny_folder, output)
        assert not any(param.requires_grad for param in trainer.diffusion_loss.parameters())
        assert torch.equal(
            trainer.diffusion_loss.unet.conv_in.weight,
            load_file(tiny_folder / "unet" / "diffusion_pytorch_model.safetensors")["conv_in.weight"],
        )
        # trained per stage
        assert changed(before, after, "model.dream_queries.") and changed(before, after, "model.condition_projector.")
        assert changed(before, after, "model.language_model.") == (stage != "alignment")
        assert changed(before, after, "lm_head.") == (stage != "alignment")
        # the optimizer holds state for trainable parameters only
        trainable = [p for p in trainer.model.parameters() if p.requires_grad]
        assert len(trainer.optimizer.state) == len(trainable)
        assert {id(p) for p in trainer.optimizer.state} == {id(p) for p in trainable}
        # checkpoints have the same layout and are complete
        checkpoint = output / "checkpoint-2"
        assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "optimizer.pt").is_file()
        assert_same_decoder(tiny_folder, checkpoint)
        assert not list(output.glob(".*.staging"))  # no staging folder left behind

    from transformers import AutoModelForCausalLM

    for folder in (tmp_path / "sft", tmp_path / "sft" / "checkpoint-2"):
        loaded = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        assert type(loaded).__name__ == "DreamLLMForConditionalGeneration"
        assert (folder / "modeling_dreamllm.py").is_file() and (folder / "processing_dreamllm.py").is_file()
    try:
        from pipeline_dreamllm import DreamLLMPipeline
    except ImportError:
        return
    pipeline = DreamLLMPipeline.from_pretrained(tmp_path / "sft")
    assert pipeline.unet is not None and (tmp_path / "sft" / "model_index.json").is_file()


@pytest.mark.parametrize("stage", ["alignment", "igpt", "sft"])
def test_each_stage_freezes_clip_which_loading_leaves_trainable(tiny_folder, stage):
    model = load_model(tiny_folder)
    assert all(p.requires_grad for p in model.model.vision_tower.parameters())  # loading decides nothing
    set_stage_trainable(model, stage)
    assert not any(p.requires_grad for p in model.model.vision_tower.parameters())
    assert model.model.dream_queries.weight.requires_grad and model.model.condition_projector.weight.requires_grad
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.requires_grad == (stage != "alignment")


def test_gradient_reaches_queries_projector_and_llm_but_not_frozen_parts(tiny_folder, sources, tmp_path):
    trainer = build_trainer(*parse_args(stage_argv("igpt", tiny_folder, tmp_path, [sources["mmc4"]])))
    batch = next(iter(trainer.get_train_dataloader()))
    model = trainer.model.train()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    base = model.model
    for module in (base.dream_queries, base.condition_projector, base.language_model.layers[0].self_attn.q_proj,
                   base.vision_projector):
        assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in base.vision_tower.parameters())
    decoder = trainer.diffusion_loss
    assert all(p.grad is None for p in list(decoder.unet.parameters()) + list(decoder.vae.parameters()))


def test_length_buckets_give_the_loss_and_gradients_of_one_padded_forward(tiny_folder, sources, tmp_path):
    trainer = build_trainer(*parse_args(stage_argv("igpt", tiny_folder, tmp_path, [sources["mmc4"]],
                                                   "--condition_drop_prob", "0")))
    stories = build_train_dataset([str(sources["mmc4"])], trainer.processing_class)
    pairs = build_train_dataset([str(sources["pairs"])], trainer.processing_class, creation_prob=1.0)
    batch = trainer.data_collator([pairs[0], stories[0], pairs[1], stories[1]])  # ~30 and ~110 tokens
    assert len(batch["length_buckets"]) == 2
    model = trainer.model.train()
    results = []
    for inputs in (batch, {key: value for key, value in batch.items() if key != "length_buckets"}):
        model.zero_grad()
        torch.manual_seed(0)  # the same noise and timesteps for the diffusion term
        loss = trainer.compute_loss(model, inputs)
        loss.backward()
        results.append((loss.detach(), [param.grad.clone() for param in model.parameters() if param.grad is not None]))
    (bucketed, bucketed_grads), (padded, padded_grads) = results
    torch.testing.assert_close(bucketed, padded)
    assert len(bucketed_grads) == len(padded_grads) > 0
    for left, right in zip(bucketed_grads, padded_grads):
        torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-6)


def test_condition_dropout_uses_the_null_condition(tiny_folder, sources, tmp_path, monkeypatch):
    trainer = build_trainer(*parse_args(stage_argv("igpt", tiny_folder, tmp_path, [sources["mmc4"]],
                                                   "--condition_drop_prob", "1.0")))
    seen = {}
    original = trainer.diffusion_loss.forward

    def spy(condition_embeds, targets, null_condition=None, condition_drop_prob=0.0, anchors=()):
        seen.update(null=null_condition, prob=condition_drop_prob)
        return original(condition_embeds, targets, null_condition, condition_drop_prob, anchors)

    monkeypatch.setattr(trainer.diffusion_loss, "forward", spy)
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model.train(), batch).backward()
    assert seen["prob"] == 1.0
    torch.testing.assert_close(seen["null"], trainer.model.get_null_condition())  # the pipeline's null condition
    assert trainer.model.model.dream_queries.weight.grad is not None


def test_losses_decrease_on_a_repeated_batch(tiny_folder, tmp_path):
    data = write_mmc4(tmp_path / "one-doc", count=1)
    argv = stage_argv("igpt", tiny_folder, tmp_path / "out", [data], "--learning_rate", "1e-3",
                      "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--save_strategy", "no",
                      "--per_device_train_batch_size", "1", "--condition_drop_prob", "0", steps=50)
    trainer = build_trainer(*parse_args(argv))
    batch = next(iter(trainer.get_train_dataloader()))

    def fixed_noise_diffusion_loss():  # same noise and timesteps before and after: only the condition changed
        torch.manual_seed(123)
        with torch.no_grad():
            out = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                pixel_values=batch["pixel_values"])
            return trainer.diffusion_loss(out.condition_embeds, batch["target_pixel_values"]).item()

    diffusion_before = fixed_noise_diffusion_loss()
    trainer.train()
    lm = losses(trainer, "lm_loss")
    assert len(lm) == 50 and all(math.isfinite(v) for v in lm + losses(trainer, "diffusion_loss"))
    assert sum(lm[-5:]) / 5 < sum(lm[:5]) / 5 - 0.5
    assert fixed_noise_diffusion_loss() < diffusion_before


def test_lora_run_saved_merged_is_a_plain_folder(tiny_folder, sources, tmp_path):
    output = tmp_path / "lora"
    trainer = main(stage_argv("sft", tiny_folder, output, [sources["llava"], sources["instructions"]],
                              "--lora_r", "4", "--learning_rate", "1e-2", "--save_merged", "true"))
    state = weights(output)
    assert not any("lora" in key or "base_layer" in key or "modules_to_save" in key for key in state)
    assert not (output / "adapter_config.json").exists() and not (output / "adapter").exists()
    assert (output / "checkpoint-2" / "adapter" / "adapter_model.safetensors").is_file()  # for resuming
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True).eval()
    peft_model = trainer.model.eval()
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values") if k in batch}
    with torch.no_grad():
        expected, got = peft_model(**inputs), merged(**inputs)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-4)
    if expected.condition_embeds is not None:
        torch.testing.assert_close(got.condition_embeds, expected.condition_embeds, rtol=1e-4, atol=1e-4)
    assert changed(weights(tiny_folder), state, "model.language_model.layers.")  # the adapters were folded in


def test_resume_continues_the_same_loss_curve(tiny_folder, sources, tmp_path):
    data = [sources["mmc4"], sources["pairs"]]
    full = main(stage_argv("igpt", tiny_folder, tmp_path / "full", data, "--save_steps", "3", steps=6))
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-3", resumed_dir / "checkpoint-3")
    resumed = main(stage_argv("igpt", tiny_folder, resumed_dir, data, "--save_steps", "3",
                              "--resume_from_checkpoint", "last", steps=6))
    for key in ("loss", "lm_loss", "diffusion_loss"):
        expected = [entry[key] for entry in full.state.log_history if key in entry and entry["step"] > 3]
        got = [entry[key] for entry in resumed.state.log_history if key in entry and entry["step"] > 3]
        assert len(got) == len(expected) == 3, key
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6), key
    final_full, final_resumed = weights(tmp_path / "full"), weights(resumed_dir)
    for key in final_full:
        torch.testing.assert_close(final_resumed[key], final_full[key], rtol=1e-5, atol=1e-6)
