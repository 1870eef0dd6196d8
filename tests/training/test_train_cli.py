"""The `python -m train` entry point: stage presets, YAML configs, precedence, and a 2-process data-parallel run."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from train.data.example_files import write_mmc4, write_pair_folder
from train.stages import parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict:
    # One thread per process: two processes on two shared cores, and tiny convolutions spin-wait on two threads.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}


def test_stage_presets_and_precedence(tmp_path):
    args, training = parse_args(["--stage", "alignment", "--model_name_or_path", "m", "--output_dir", str(tmp_path)])
    assert (args.stage, training.learning_rate, training.lr_scheduler_type.value) == ("alignment", 2e-3, "cosine")
    assert training.remove_unused_columns is False and training.dataset_kwargs["skip_prepare_dataset"] is True
    _, training = parse_args(["--stage", "igpt", "--model_name_or_path", "m", "--output_dir", str(tmp_path)])
    assert training.learning_rate == 2e-5
    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({"stage": "sft", "model_name_or_path": "m", "output_dir": str(tmp_path),
                                      "data": ["a", "b:2"], "warmup_steps": 0.1, "lora_r": 8}))
    args, training = parse_args(["--config", str(config), "--data", "c", "--learning_rate", "1e-4"])
    assert args.stage == "sft" and args.lora_r == 8 and training.warmup_steps == 0.1  # YAML over the preset
    assert training.learning_rate == 1e-4  # command line over everything
    assert args.data == ["c"]  # the command line replaces the YAML's list
    _, training = parse_args(["--config", str(config)])
    assert training.learning_rate == 4e-5  # the SFT preset


def test_module_entry_point_with_a_yaml_config(tiny_folder, tmp_path):
    pairs = write_pair_folder(tmp_path / "pairs")
    config = tmp_path / "alignment.yaml"
    config.write_text(yaml.safe_dump({
        "stage": "alignment", "model_name_or_path": str(tiny_folder), "output_dir": str(tmp_path / "out"),
        "data": [str(pairs)], "max_steps": 2, "per_device_train_batch_size": 2, "bf16": False,
        "activation_checkpointing": True, "logging_steps": 1, "save_strategy": "no", "disable_tqdm": True,
    }))
    result = subprocess.run([sys.executable, "-m", "train", "--config", str(config)], cwd=REPO_ROOT, env=_env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'lm_loss'" in result.stdout and "'diffusion_loss'" in result.stdout
    for name in ("config.json", "model.safetensors", "processor_config.json", "unet", "vae", "scheduler"):
        assert (tmp_path / "out" / name).exists(), name


RUN_AND_HASH = """
import hashlib, os, sys
sys.path.insert(0, os.environ["PYTHONPATH"])
from train.stages import main
trainer = main(sys.argv[1:])
model = trainer.accelerator.unwrap_model(trainer.model)
digest = hashlib.sha256()
for name, param in sorted(model.named_parameters()):
    if param.requires_grad:
        digest.update(name.encode())
        digest.update(param.detach().cpu().float().numpy().tobytes())
rank, world = trainer.accelerator.process_index, trainer.accelerator.num_processes
with open(os.path.join(trainer.args.output_dir, f"trainable-rank{rank}.sha256"), "w") as handle:
    handle.write(f"{world} {digest.hexdigest()}")
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_stay_in_sync(tiny_folder, tmp_path):
    """Data parallel on CPU (gloo): `accelerate launch --cpu` would start one process, so launch through torchrun
    (`--multi_gpu`) with `--use_cpu true` (see docs/scaling.md)."""
    script = tmp_path / "run_and_hash.py"
    script.write_text(textwrap.dedent(RUN_AND_HASH))
    data = [write_pair_folder(tmp_path / "pairs"), write_mmc4(tmp_path / "mmc4")]
    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(script),
        "--stage", "igpt", "--model_name_or_path", str(tiny_folder), "--output_dir", str(output),
        "--data", str(data[0]), "--data", str(data[1]), "--max_steps", "3", "--per_device_train_batch_size", "1",
        "--use_cpu", "true", "--bf16", "false", "--activation_checkpointing", "false", "--logging_steps", "1",
        "--save_strategy", "no", "--disable_tqdm", "true", "--learning_rate", "1e-3",
        "--creation_prob", "0",  # pairs for understanding only: some steps of a rank have no creation block
    ]
    result = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    digests = [(output / f"trainable-rank{rank}.sha256").read_text().split() for rank in (0, 1)]
    assert digests[0][0] == digests[1][0] == "2"  # two ranks of one run, not two single-process runs
    assert digests[0][1] == digests[1][1]  # gradients were averaged: the trained weights match bit for bit
    assert (output / "model.safetensors").is_file()
