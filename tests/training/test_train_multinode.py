"""The several-node launch line of docs/scaling.md, run as two machines of one process each on this host: two
`accelerate launch --num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1` commands with the shipped FSDP2
config, which meet at the rendezvous, train together and write one checkpoint and one plain final folder."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.data.example_files import write_pair_folder

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_machines_on_localhost_train_one_run(tiny_folder, tmp_path):
    pairs, output, port = write_pair_folder(tmp_path / "pairs"), tmp_path / "run", str(_free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}

    def machine(rank: int) -> subprocess.Popen:
        command = [sys.executable, "-m", "accelerate.commands.launch",
                   "--config_file", str(REPO_ROOT / "train" / "accelerate_configs" / "fsdp2.yaml"),
                   "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                   "--main_process_ip", "127.0.0.1", "--main_process_port", port, "--mixed_precision", "no",
                   "-m", "train", "--stage", "igpt", "--model_name_or_path", str(tiny_folder), "--output_dir",
                   str(output), "--data", str(pairs), "--use_cpu", "true", "--bf16", "false",
                   "--activation_checkpointing", "false", "--max_steps", "2", "--save_steps", "2",
                   "--per_device_train_batch_size", "1", "--learning_rate", "1e-3", "--disable_tqdm", "true"]
        return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    machines = [machine(0), machine(1)]
    try:
        logs = [process.communicate(timeout=400)[0] for process in machines]
    finally:
        for process in machines:
            process.kill()
    for rank, (process, log) in enumerate(zip(machines, logs, strict=True)):
        assert process.returncode == 0, f"machine {rank}:\n{log[-4000:]}"

    # One FSDP run of world size 2: the checkpoint holds each rank's RNG state and FSDP's own (full) model and
    # optimizer files besides the plain folder.
    checkpoint = output / "checkpoint-2"
    assert {path.name for path in checkpoint.glob("rng_state_*.pth")} == {"rng_state_0.pth", "rng_state_1.pth"}
    assert (checkpoint / "pytorch_model_fsdp.bin").is_file() and (checkpoint / "optimizer.bin").is_file()
    initial, final = load_file(tiny_folder / "model.safetensors"), load_file(output / "model.safetensors")
    assert set(final) == set(initial)
    assert any(not torch.equal(final[key], initial[key]) for key in initial if "language_model" in key)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    assert type(loaded).__name__ == "DreamLLMForConditionalGeneration"
