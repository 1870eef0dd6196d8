"""LoRA runs as PEFT adapters: what a run writes, resuming, merging, the card, and loading an adapter onto its base
folder through PEFT, transformers and the pipeline from a fresh process."""

import importlib.util
import json
import shutil
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

from tests.conftest import REPO_ROOT, run_isolated
from train.adapters import main as adapters_main
from train.adapters import merge_adapter, upload_folder_for
from train.data.example_files import write_example_sources
from train.errors import InputError
from train.stages import check_output_dir, load_model, main, new_token_ids

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

LORA = ("--lora_r", "4", "--learning_rate", "1e-2")


def stage_argv(folder, output, data, *extra, steps=3):
    argv = ["--stage", "sft", "--model_name_or_path", str(folder), "--output_dir", str(output)]
    for spec in data:
        argv += ["--data", str(spec)]
    argv += ["--max_steps", str(steps), "--per_device_train_batch_size", "2", "--bf16", "false",
             "--activation_checkpointing", "false", "--logging_steps", "1", "--save_steps", "2",
             "--disable_tqdm", "true", "--seed", "0", "--report_to", "none"]
    return argv + [str(item) for item in extra]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return write_example_sources(tmp_path_factory.mktemp("adapter-data"))


@pytest.fixture(scope="module")
def lora_run(tiny_folder, sources, tmp_path_factory):
    """One LoRA run (3 steps, a checkpoint at step 2), both adapters merged, and the run's own logits on a batch."""
    root = tmp_path_factory.mktemp("lora")
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    trainer = main(stage_argv(tiny_folder, root / "run", [sources["llava"], sources["instructions"]], *LORA))
    batch = next(iter(trainer.get_train_dataloader()))
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values") if key in batch}
    with torch.no_grad():
        logits = trainer.model.eval()(**inputs).logits
    save_file({**inputs, "logits": logits.contiguous()}, str(root / "expected.safetensors"))
    merge_adapter(root / "run", root / "merged")
    merge_adapter(root / "run" / "checkpoint-2", root / "merged-2")
    torch.set_num_threads(previous)
    return root, trainer


def test_a_lora_run_saves_a_peft_adapter(lora_run, tiny_folder):
    root, _ = lora_run
    run = root / "run"
    for folder in (run, run / "checkpoint-2"):
        assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in folder.iterdir()}
        assert not (folder / "model.safetensors").exists() and not (folder / "unet").exists()
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_folder.resolve())
    assert sorted(config["modules_to_save"]) == ["condition_projector", "dream_queries", "vision_projector"]
    keys = load_file(run / "adapter_model.safetensors").keys()
    assert any(".lora_A." in key and "language_model" in key for key in keys)
    assert not any("vision_tower" in key for key in keys)  # CLIP keeps no LoRA
    for part in ("vision_projector.weight", "dream_queries.weight", "condition_projector.weight"):
        assert f"base_model.model.model.{part}" in keys
    assert "base_model.model.lm_head.token_adapter.trainable_tokens_delta" in keys
    assert "base_model.model.model.language_model.embed_tokens.token_adapter.trainable_tokens_delta" in keys
    size = (run / "adapter_model.safetensors").stat().st_size
    assert size < (tiny_folder / "model.safetensors").stat().st_size / 2
    assert (run / "processor_config.json").is_file()  # the processor travels with the adapter
    card = ModelCard.load(run / "README.md")
    assert card.data.base_model == str(tiny_folder.resolve()) and card.data.library_name == "peft"


def test_merge_writes_the_plain_folder_the_run_computes(lora_run, tiny_folder):
    root, trainer = lora_run
    expected = load_file(root / "expected.safetensors")
    merged = load_model(root / "merged").eval()
    state = load_file(root / "merged" / "model.safetensors")
    assert not any("lora" in key or "base_layer" in key or "modules_to_save" in key for key in state)
    for name in ("unet", "vae", "scheduler"):
        assert (root / "merged" / name).is_dir()
    inputs = {key: value for key, value in expected.items() if key != "logits"}
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, expected["logits"], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="exists"):
        adapters_main(["merge", "--adapter", str(root / "run"), "--output", str(root / "merged")])
    with pytest.raises(InputError, match="not a PEFT adapter"):
        merge_adapter(tiny_folder, root / "never")
    assert not (root / "never").exists()


def test_resume_from_an_adapter_checkpoint_continues_the_same_curve(lora_run, tiny_folder, sources, tmp_path):
    root, full = lora_run
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(root / "run" / "checkpoint-2", resumed_dir / "checkpoint-2")
    resumed = main(stage_argv(tiny_folder, resumed_dir, [sources["llava"], sources["instructions"]], *LORA,
                              "--resume_from_checkpoint", "last"))
    expected = [entry["loss"] for entry in full.state.log_history if "loss" in entry and entry["step"] > 2]
    got = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry and entry["step"] > 2]
    assert len(got) == len(expected) == 1 and got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    final = load_file(root / "run" / "adapter_model.safetensors")
    again = load_file(resumed_dir / "adapter_model.safetensors")
    assert final.keys() == again.keys()
    for key in final:
        torch.testing.assert_close(again[key], final[key], rtol=1e-5, atol=1e-6)
    (resumed_dir / "checkpoint-2" / "adapter_model.safetensors").write_bytes(b"cut")
    with pytest.raises(InputError, match="adapter_model.safetensors"):
        main(stage_argv(tiny_folder, resumed_dir, [sources["llava"]], *LORA, "--resume_from_checkpoint",
                        str(resumed_dir / "checkpoint-2")))


def test_the_upload_folder_names_the_base_model_in_config_and_card(lora_run, tmp_path):
    root, _ = lora_run
    staging = upload_folder_for(root / "run", tmp_path / "upload", base_model="someone/dreamllm-7b")
    assert json.loads((staging / "adapter_config.json").read_text())["base_model_name_or_path"] == "someone/dreamllm-7b"
    card = ModelCard.load(staging / "README.md")
    assert card.data.base_model == "someone/dreamllm-7b" and "base_model:adapter:someone/dreamllm-7b" in card.data.tags
    assert "load_adapter" in card.text
    weights = "adapter_model.safetensors"
    assert (staging / weights).read_bytes() == (root / "run" / weights).read_bytes()
    with pytest.raises(InputError, match="no adapter_model.safetensors"):
        upload_folder_for(tmp_path / "upload" / "missing", tmp_path / "other", base_model="x/y")


def test_adapters_load_switch_and_generate_through_peft_transformers_and_the_pipeline_in_a_fresh_process(
    lora_run, tiny_folder
):
    root, _ = lora_run
    script = f"""
        import torch, peft
        torch.set_num_threads(1)
        from packaging.version import Version
        from peft import PeftModel
        from peft.functional import set_adapter
        from safetensors.torch import load_file
        from transformers import AutoModelForCausalLM

        base_dir, root = {str(tiny_folder)!r}, {str(root)!r}
        expected = load_file(root + "/expected.safetensors")
        inputs = {{k: v for k, v in expected.items() if k != "logits"}}

        def logits(model):
            with torch.no_grad():
                return model(**inputs).logits

        def load(path):
            return AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True).eval()

        early = logits(load(root + "/merged-2"))
        plain = logits(load(base_dir))
        assert (early - expected["logits"]).abs().max() > 1e-3 and (plain - expected["logits"]).abs().max() > 1e-3

        # PEFT: PeftModel.from_pretrained, a second adapter, set_adapter both ways, and the adapter disabled
        model = PeftModel.from_pretrained(load(base_dir), root + "/run")
        torch.testing.assert_close(logits(model), expected["logits"], rtol=1e-4, atol=1e-4)
        model.load_adapter(root + "/run/checkpoint-2", adapter_name="early")
        model.set_adapter("early")
        torch.testing.assert_close(logits(model), early, rtol=1e-4, atol=1e-4)
        model.set_adapter("default")
        torch.testing.assert_close(logits(model), expected["logits"], rtol=1e-4, atol=1e-4)
        with model.disable_adapter():
            torch.testing.assert_close(logits(model), plain, rtol=1e-5, atol=1e-5)

        # transformers: load_adapter twice on the plain model, switched with PEFT's functional set_adapter
        model = load(base_dir)
        model.load_adapter(root + "/run", adapter_name="final")
        torch.testing.assert_close(logits(model), expected["logits"], rtol=1e-4, atol=1e-4)
        model.load_adapter(root + "/run/checkpoint-2", adapter_name="early")
        set_adapter(model, "early")
        torch.testing.assert_close(logits(model), early, rtol=1e-4, atol=1e-4)
        set_adapter(model, "final")
        torch.testing.assert_close(logits(model), expected["logits"], rtol=1e-4, atol=1e-4)
        if Version(peft.__version__) >= Version("0.22"):  # transformers' own switch needs peft 0.22
            model.set_adapter("early")
            torch.testing.assert_close(logits(model), early, rtol=1e-4, atol=1e-4)
        else:
            try:
                model.set_adapter("early")
                raise AssertionError("transformers' set_adapter ran with peft < 0.22")
            except ValueError as error:
                assert "0.22" in str(error)

        # transformers reads the base from the adapter config
        torch.testing.assert_close(logits(load(root + "/run")), expected["logits"], rtol=1e-4, atol=1e-4)

        # the pipeline: text-to-image and interleaved generation with the adapter, as with the merged folder
        import numpy as np
        from diffusers import DiffusionPipeline

        def load_pipe(path):
            pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
            pipe.set_progress_bar_config(disable=True)
            return pipe

        def first_dream(pipe):
            dream_start = pipe.llm.config.dream_start_token_id

            def processor(input_ids, scores):  # a creation block before anything else: one image for sure
                if not (input_ids == dream_start).any():
                    scores = torch.full_like(scores, -1e4)
                    scores[:, dream_start] = 0
                return scores
            return processor

        def generate(pipe):
            image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                         output_type="np").images
            out = pipe.generate_interleaved("Draw", max_new_tokens=4, max_images=1, num_inference_steps=2,
                                            generator=torch.Generator().manual_seed(0),
                                            logits_processor=first_dream(pipe))
            images = [np.asarray(s, dtype=np.float32) for s in out.segments if not isinstance(s, str)]
            return image, out.token_ids.tolist(), images

        adapted = load_pipe(base_dir)
        adapted.llm.load_adapter(root + "/run")
        with_adapter = generate(adapted)
        merged = generate(load_pipe(root + "/merged"))
        plain_out = generate(load_pipe(base_dir))
        np.testing.assert_allclose(with_adapter[0], merged[0], atol=1e-4)
        assert with_adapter[1] == merged[1] and len(with_adapter[2]) == len(merged[2]) == 1
        np.testing.assert_allclose(with_adapter[2][0], merged[2][0], atol=1.0)  # uint8 pictures: one level
        assert np.abs(with_adapter[0] - plain_out[0]).max() > 1e-3  # the adapter changed the picture
        print("ok")
    """
    assert run_isolated(script, cwd=root).strip().endswith("ok")


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_adapter_sizes_are_the_saved_files_and_agree_with_the_memory_table(tiny_folder):
    sizes, memory_table = load_script("adapter_sizes"), load_script("memory_table")
    params, size = sizes.measured(tiny_folder, sizes.sft_adapter, 4)
    assert params * 4 < size < params * 4 + 64_000  # fp32 tensors plus the safetensors header
    model = load_model(tiny_folder)
    projectors = sum(p.numel() for name in ("vision_projector", "dream_queries", "condition_projector")
                     for p in getattr(model.model, name).parameters())
    assert params == memory_table.lora_parameters(model, 4) + projectors
    dpo_params, _ = sizes.measured(tiny_folder, sizes.dpo_adapter, 4)
    token_rows = 2 * len(new_token_ids(model.config)) * model.config.text_config.hidden_size
    assert dpo_params == memory_table.lora_parameters(model, 4) - token_rows  # LoRA only


def test_an_output_folder_holding_an_adapter_is_not_overwritten_unasked(lora_run, tmp_path):
    root, _ = lora_run
    held = tmp_path / "held"
    held.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(root / "run" / name, held / name)
    with pytest.raises(InputError, match="holds another run"):
        check_output_dir(held, resume=False, overwrite=False)
    check_output_dir(held, resume=False, overwrite=True)  # asked: replaced at the final save
