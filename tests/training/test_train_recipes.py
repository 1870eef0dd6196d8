"""The DreamLLM-7B recipes (train/recipes/dreamllm-7b): their resolved settings read against the official release,
and each of them run for two steps on a tiny random model with the datasets as their tools write them."""

import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from dataset_formats import write_recipe_data
from train.errors import InputError
from train.merge_alignment import merge_alignment
from train.recipe import check_formats, load_recipe
from train.stages import main, parse_args, resolve_max_steps

RECIPES = Path(__file__).resolve().parents[2] / "train" / "recipes" / "dreamllm-7b"
PROJECTORS = ["model.vision_projector", "model.dream_queries", "model.condition_projector"]
LLM = ["model.language_model", "lm_head"]

# The official release (projects/dreamllm/configs: stage1/base.py, stage1/..._comprehension_only.py,
# stage2/base.py, sft/base.py).
OFFICIAL_COMMON = {
    "num_train_epochs": 1, "per_device_train_batch_size": 16, "gradient_accumulation_steps": 1,
    "lr_scheduler_type": "cosine", "warmup_steps": 3e-3, "weight_decay": 0.0, "optim": "adamw_torch",
    "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1e-8, "max_grad_norm": 1.0, "bf16": True, "tf32": True,
    "activation_checkpointing": True, "max_length": 2048, "seed": 42, "dataloader_num_workers": 8,
    "save_steps": 2000, "logging_steps": 10,
}
OFFICIAL = {
    "alignment-creation": dict(
        stage="alignment", learning_rate=2e-3, lm=0, diffusion=1, creation_prob=1.0,
        trained=["model.dream_queries", "model.condition_projector"],
        sizes={"laion400m_orig": 20_000_000, "laion_coco": 20_000_000, "blip_laion": 20_000_000},
    ),
    "alignment-comprehension": dict(
        stage="alignment", learning_rate=2e-3, lm=1, diffusion=0, creation_prob=0.0,
        trained=["model.vision_projector"],
        sizes={"llava_pretrain": 558_000, "laion400m_orig": 20_000_000, "laion_coco": 20_000_000,
               "blip_laion": 20_000_000, "gqa": 13_532_530},
    ),
    "igpt": dict(
        stage="igpt", learning_rate=2e-5, lm=1, diffusion=10, creation_prob=0.5, trained=PROJECTORS + LLM,
        sizes={"mmc4_core": 7_000_000, "blip_laion": 10_000_000},
    ),
    "sft": dict(
        stage="sft", learning_rate=4e-5, lm=1, diffusion=10, creation_prob=0.5, trained=PROJECTORS + LLM,
        sizes={"llavav1.5_instruct": 665_298, "blip_laion": 600_000, "mmc4_instruct_filtered224": 20_231},
    ),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_print_config_reads_as_the_official_recipe(name, capsys):
    # the recipe's model path is a placeholder: printing loads no model and reads no data
    assert main(["--recipe", str(RECIPES / f"{name}.yaml"), "--print_config"]) is None
    printed = yaml.safe_load(capsys.readouterr().out)
    official, training = OFFICIAL[name], printed["training_arguments"]
    assert {key: training[key] for key in OFFICIAL_COMMON} == OFFICIAL_COMMON
    assert training["learning_rate"] == official["learning_rate"] and printed["stage"] == official["stage"]
    assert printed["loss_weights"] == {"lm": official["lm"], "diffusion": official["diffusion"]}
    assert printed["trained"] == official["trained"]
    assert set(printed["frozen"]) == set(PROJECTORS + LLM + ["model.vision_tower", "unet", "vae"]) - set(
        official["trained"])
    data_format = printed["data_format"]
    assert (data_format["pair_labels"], data_format["reply_dream_labels"]) == ("none", "none")
    assert data_format["creation_prob"] == official["creation_prob"] and data_format["min_similarity"] is None
    assert data_format["condition_drop_prob"] == 0.1  # kept on purpose (docs/differences.md)
    assert data_format["pair_min_size"] == (128 if name == "sft" else 0)  # the official SFT's min_size
    sizes = {entry["name"]: entry["size"] for entry in printed["mixture"]}
    assert sizes == official["sizes"]
    total = sum(sizes.values())
    for entry in printed["mixture"]:  # officially each dataset is drawn in proportion to its size
        assert entry["probability"] == pytest.approx(entry["size"] / total, abs=1e-5)
        assert entry["path"].startswith("/PATH/TO/dreamllm-data/")
    assert printed["schedule"]["samples_per_epoch"] == total
    assert printed["schedule"]["max_steps_for_processes"][8] == -(-total // (16 * 8))


def test_recipe_options_and_errors(tmp_path):
    args, training = parse_args(["--recipe", str(RECIPES / "igpt.yaml"), "--learning_rate", "1e-5",
                                 "--data_root", str(tmp_path), "--output_dir", str(tmp_path), "--bf16", "false",
                                 "--tf32", "false"])
    assert training.learning_rate == 1e-5 and args.data == load_recipe(RECIPES / "igpt.yaml").data_specs()
    resolve_max_steps(args, training)  # one process: the epoch's 17M samples in batches of 16
    assert (args.samples_per_epoch, training.max_steps) == (17_000_000, 1_062_500)
    # the project's defaults are unchanged without a recipe (the shapes-world recipe relies on them)
    args, _ = parse_args(["--stage", "alignment", "--model_name_or_path", "m", "--output_dir", str(tmp_path)])
    assert (args.alignment, args.pair_labels, args.reply_dream_labels, args.creation_prob, args.min_similarity) == (
        "joint", "caption", "dream_start", 0.5, 0.25)
    with pytest.raises(ValueError, match="variant of the alignment stage"):
        parse_args(["--stage", "igpt", "--alignment", "creation", "--model_name_or_path", "m"])
    with pytest.raises(ValueError, match="uses creation_prob 1.0"):
        parse_args(["--stage", "alignment", "--alignment", "creation", "--creation_prob", "0.5",
                    "--model_name_or_path", "m"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"stage": "sft", "model_name_or_path": "m", "learning_rat": 1e-4}))
    with pytest.raises(ValueError, match="unknown settings.*learning_rat"):
        parse_args(["--recipe", str(bad)])
    bad.write_text(yaml.safe_dump({"stage": "sft", "mixture": [{"name": "x", "format": "laion", "path": "x",
                                                                "size": 3}]}))
    with pytest.raises(ValueError, match="mixture entry 1.*format 'laion'"):
        parse_args(["--recipe", str(bad)])
    # a run checks each entry's declared format against what the readers find there
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.jsonl").write_text("{}\n")
    bad.write_text(yaml.safe_dump({"mixture": [{"name": "x", "format": "img2dataset", "path": "docs", "size": 3}]}))
    with pytest.raises(InputError, match="x is declared img2dataset .* reads as json"):
        check_formats(load_recipe(bad), str(tmp_path))


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(Path(folder) / "model.safetensors")


def _changed(before: dict, after: dict) -> set[str]:
    """Top-level parts (PROJECTORS + LLM + CLIP) whose tensors differ."""
    parts = PROJECTORS + LLM + ["model.vision_tower"]
    return {part for part in parts for key in before if key.startswith(part + ".")
            and not torch.equal(before[key], after[key])}


def _losses(trainer, key) -> list[float]:
    return [entry[key] for entry in trainer.state.log_history if key in entry]


def test_every_recipe_trains_on_its_datasets_and_merge_assembles_igpt(tmp_path):
    from train.assemble import main as assemble

    init = tmp_path / "init"
    assemble(["--preset", "tiny-random", "--output", str(init), "--projector-init", "pytorch"])
    start = _weights(init)
    bias, weight = start["model.vision_projector.bias"], start["model.vision_projector.weight"]
    bound = weight.shape[1] ** -0.5  # nn.Linear's own init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert bias.abs().max() > 0 and bias.abs().max() <= bound and weight.abs().max() <= bound

    data_root = write_recipe_data(tmp_path / "data")
    runs = tmp_path / "runs"

    def run(name, model):
        return main(["--recipe", str(RECIPES / f"{name}.yaml"), "--model_name_or_path", str(model),
                     "--output_dir", str(runs / name), "--data_root", str(data_root), "--max_steps", "2",
                     "--per_device_train_batch_size", "2", "--bf16", "false", "--tf32", "false",
                     "--dataloader_num_workers", "0", "--save_strategy", "no", "--logging_steps", "1",
                     "--disable_tqdm", "true", "--shuffle_buffer", "8"])

    creation = run("alignment-creation", init)
    assert _losses(creation, "lm_loss") == [0.0, 0.0] and min(_losses(creation, "diffusion_loss")) > 0
    assert _changed(start, _weights(runs / "alignment-creation")) == {"model.dream_queries",
                                                                      "model.condition_projector"}
    comprehension = run("alignment-comprehension", init)
    assert _losses(comprehension, "diffusion_loss") == [0.0, 0.0] and min(_losses(comprehension, "lm_loss")) > 0
    assert _changed(start, _weights(runs / "alignment-comprehension")) == {"model.vision_projector"}

    merged = merge_alignment(runs / "alignment-creation", runs / "alignment-comprehension", runs / "merged")
    weights = _weights(merged)
    assert _changed(_weights(runs / "alignment-creation"), weights) == {"model.vision_projector"}
    assert _changed(_weights(runs / "alignment-comprehension"), weights) == {"model.dream_queries",
                                                                             "model.condition_projector"}
    for name in ("unet", "vae", "scheduler", "processor_config.json", "tokenizer.json", "modeling_dreamllm.py"):
        assert (merged / name).exists(), name

    igpt = run("igpt", merged)
    # a batch of official text-to-image pairs learns no token, one of image-to-text pairs creates nothing
    assert max(_losses(igpt, "lm_loss")) > 0 and max(_losses(igpt, "diffusion_loss")) > 0
    assert {"model.language_model", "lm_head"} <= _changed(weights, _weights(runs / "igpt"))
    sft = run("sft", runs / "igpt")
    assert max(_losses(sft, "lm_loss")) > 0 and max(_losses(sft, "diffusion_loss")) > 0
    assert "model.vision_tower" not in _changed(start, _weights(runs / "sft"))

    # runs that did not start from the same folder are refused, and nothing is written
    other = tmp_path / "other-comprehension"
    shutil.copytree(runs / "alignment-comprehension", other)
    tampered = _weights(other)
    tampered["model.language_model.norm.weight"] = tampered["model.language_model.norm.weight"] + 1
    save_file(tampered, other / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.language_model.norm.weight differs"):
        merge_alignment(runs / "alignment-creation", other, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with pytest.raises(InputError, match="exists"):
        merge_alignment(runs / "alignment-creation", runs / "alignment-comprehension", runs / "merged")


def test_module_entry_point_prints_a_recipe_and_dispatches_merge(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    printed = subprocess.run([sys.executable, "-m", "train", "--recipe", str(RECIPES / "sft.yaml"), "--print_config",
                              "--data_root", str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
    assert printed.returncode == 0, printed.stderr[-3000:]
    settings = yaml.safe_load(printed.stdout)
    assert settings["training_arguments"]["learning_rate"] == 4e-5
    assert settings["mixture"][0]["path"] == str(tmp_path / "llava-v1.5" / "llava_v1_5_mix665k.json")
    merge = subprocess.run([sys.executable, "-m", "train", "merge", "--creation", str(tmp_path / "missing"),
                            "--comprehension", str(tmp_path), "--output", str(tmp_path / "out")], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=300)
    assert merge.returncode != 0 and "is not a DreamLLM folder (no config.json)" in merge.stderr
    assert not (tmp_path / "out").exists()
