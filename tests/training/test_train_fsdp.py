"""FSDP2 for real on two CPU processes (gloo), launched with the shipped `fsdp2.yaml` and CPU flags: the LLM's
decoder layers are sharded while CLIP, UNet and VAE are not, the folders written are plain DreamLLM folders, and a run
resumed from a sharded checkpoint ends where the uninterrupted one does. (FSDP2 against DDP, ZeRO-2 and ZeRO-3:
tests/training/test_train_engines.py.)"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safetensors.torch import load_file

from train.data.example_files import write_mmc4, write_pair_folder

REPO_ROOT = Path(__file__).resolve().parents[2]
STEPS = 4

# Each rank runs this: a full run with a checkpoint at step 2, then (FSDP only) a second run resumed from it. A
# TrainerCallback, added through `Trainer.add_callback`, records what the prepared model holds during training.
RUN_AND_RECORD = """
import json, os, sys
sys.path.insert(0, os.environ["PYTHONPATH"])
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback
from train.stages import build_trainer, parse_args


class RecordSharding(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.record = trainer, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.record is not None:
            return
        # FSDP's activation checkpointing (on in fsdp2.yaml) wraps each decoder layer; names without the wrapper
        params = {name.replace("._checkpoint_wrapped_module", ""): p for name, p in model.named_parameters()}
        decoder = self.trainer.diffusion_loss
        self.record = {
            "distributed_type": str(self.trainer.accelerator.distributed_type),
            "world": self.trainer.accelerator.num_processes,
            "trainable": sorted(name for name, p in params.items() if p.requires_grad),
            "dtensor": sorted(name for name, p in params.items() if isinstance(p, DTensor)),
            "split": sorted(name for name, p in params.items()
                            if isinstance(p, DTensor) and p.to_local().numel() < p.numel()),
            "fsdp_modules": sorted(name for name, m in model.named_modules() if isinstance(m, FSDPModule)),
            "decoder_dtensor": sum(isinstance(p, DTensor) for p in decoder.parameters()),
            "decoder_params": sum(1 for _ in decoder.parameters()),
        }


def run(argv):
    trainer = build_trainer(*parse_args(argv))
    recorder = RecordSharding(trainer)
    trainer.add_callback(recorder)
    resume = argv[argv.index("--resume_from_checkpoint") + 1] if "--resume_from_checkpoint" in argv else None
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_final(trainer.args.output_dir)
    losses = [{k: e[k] for k in ("step", "loss", "lm_loss", "diffusion_loss")} for e in trainer.state.log_history
              if "lm_loss" in e]
    return {**recorder.record, "losses": losses}


mode, output, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
report = {"full": run(argv + ["--output_dir", output + "/full"])}
if mode == "fsdp":
    report["resumed"] = run(argv + ["--output_dir", output + "/resumed",
                                    "--resume_from_checkpoint", output + "/full/checkpoint-2"])
rank = os.environ["RANK"]
with open(f"{output}/report-{rank}.json", "w") as handle:
    json.dump(report, handle)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(mode: str, tiny_folder: Path, data: list[Path], output: Path, script: Path) -> list[dict]:
    """`accelerate launch` on 2 CPU processes: FSDP2 through the shipped config with CPU flags (the command of
    docs/scaling.md)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    launcher += ["--config_file", str(REPO_ROOT / "train" / "accelerate_configs" / "fsdp2.yaml")]
    launcher += ["--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port())]
    training = ["--stage", "igpt", "--model_name_or_path", str(tiny_folder), "--data", str(data[0]),
                "--data", str(data[1]), "--max_steps", str(STEPS), "--per_device_train_batch_size", "1",
                "--use_cpu", "true", "--bf16", "false", "--activation_checkpointing", "false", "--logging_steps", "1",
                "--save_steps", "2", "--disable_tqdm", "true", "--learning_rate", "1e-3", "--seed", "0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    command = launcher + [str(script), mode, str(output)] + training
    result = subprocess.run(command, cwd=output.parent, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads((output / f"report-{rank}.json").read_text()) for rank in (0, 1)]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def test_fsdp2_shards_the_llm_saves_plain_folders_and_resumes(tiny_folder, tmp_path):
    script = tmp_path / "run_and_record.py"
    script.write_text(textwrap.dedent(RUN_AND_RECORD))
    data = [write_pair_folder(tmp_path / "pairs"), write_mmc4(tmp_path / "mmc4")]
    fsdp = tmp_path / "fsdp"
    fsdp.mkdir()
    fsdp_reports = _launch("fsdp", tiny_folder, data, fsdp, script)

    # Sharded during training: every trained parameter is a DTensor, split across the two ranks; each decoder
    # layer is its own FSDP unit besides the root; CLIP (ignored module) and the decoder (outside the model) are
    # plain tensors.
    for report in fsdp_reports:
        for run in (report["full"], report["resumed"]):
            assert run["distributed_type"] == "DistributedType.FSDP" and run["world"] == 2
            trainable = set(run["trainable"])
            assert trainable and trainable <= set(run["dtensor"])
            assert {"model.language_model.layers.0.self_attn.q_proj.weight", "lm_head.weight",
                    "model.language_model.embed_tokens.weight"} <= set(run["split"])
            units = set(run["fsdp_modules"])
            assert {"", "model.language_model.layers.0", "model.language_model.layers.1"} <= units
            assert "model.language_model.layers.0._checkpoint_wrapped_module" in units  # FSDP's checkpointing
            assert not any(name.startswith("model.vision_tower") for name in units)
            assert not any(name.startswith("model.vision_tower.") for name in run["trainable"] + run["dtensor"])
            assert run["decoder_dtensor"] == 0 and run["decoder_params"] > 0

    # Plain DreamLLM folders: the final model and every checkpoint have the assembled folder's keys, its code files
    # and auto_map (not the FSDP wrapper class), and the decoder.
    initial = _weights(tiny_folder)
    for folder in (fsdp / "full", fsdp / "full" / "checkpoint-2", fsdp / "full" / "checkpoint-4", fsdp / "resumed"):
        assert set(_weights(folder)) == set(initial), folder
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_dreamllm.DreamLLMForConditionalGeneration"
        assert not list(folder.glob("_fsdp*.py"))
        for name in ("unet", "vae", "scheduler", "model_index.json", "modeling_dreamllm.py"):
            assert (folder / name).exists(), (folder, name)
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(fsdp / "full", trust_remote_code=True)
    assert type(loaded).__name__ == "DreamLLMForConditionalGeneration"

    full, resumed = _weights(fsdp / "full"), _weights(fsdp / "resumed")
    for key in initial:
        if key.startswith("model.vision_tower."):
            assert torch.equal(full[key], initial[key]), key  # frozen, and saved whole
    assert any(not torch.equal(full[key], initial[key]) for key in initial if key.startswith("model.language_model."))
    # Resumed from the sharded checkpoint at step 2 (model, optimizer, scheduler, RNG): the same steps 3-4.
    for key in full:
        torch.testing.assert_close(resumed[key], full[key], rtol=1e-5, atol=1e-6)
    resumed_losses = [e for e in fsdp_reports[0]["resumed"]["losses"] if e["step"] > 2]
    full_losses = [e for e in fsdp_reports[0]["full"]["losses"] if e["step"] > 2]
    assert len(resumed_losses) == len(full_losses) == STEPS - 2
    for got, expected in zip(resumed_losses, full_losses):
        for name in ("loss", "lm_loss", "diffusion_loss"):
            assert abs(got[name] - expected[name]) <= 1e-5 * max(1.0, abs(expected[name])), (name, got, expected)
