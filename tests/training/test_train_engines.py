"""DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 on two CPU processes, launched with the shipped accelerate configs and the
CPU flags of docs/scaling.md, on one mixed dataset (LLaVA-style rows with and without an image, image-text pairs used
for creation): the same seed gives the same logged losses and gradient norms step by step, the
same final weights, plain folders that load, and a run resumed from a checkpoint ends where the uninterrupted one does.

Batches of 2 rows per rank: in most steps one rank has no input image or no creation block while the other has.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from train.data.example_files import shape_items, write_pair_folder

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install -r requirements.txt)")

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "train" / "accelerate_configs"
STEPS = 4
# Tolerances against DDP (float32 on CPU; only the reduction order differs, and AdamW's handling of a parameter no rank
# used in a step, see below): relative on every logged loss and gradient norm, absolute on every weight after STEPS
# steps at learning rate 1e-3; a resumed run against the uninterrupted one of the same engine.
LOSS_RTOL, NORM_RTOL, WEIGHT_ATOL, RESUME_RTOL = 1e-4, 1e-4, 1e-5, 1e-5

LAUNCH = {  # accelerate launch flags and the Trainer's device flags per engine, as in docs/scaling.md
    "ddp": (["--multi_gpu", "--num_machines", "1", "--dynamo_backend", "no"], ["--use_cpu", "true"]),
    "fsdp2": (["--config_file", str(CONFIGS / "fsdp2.yaml")], ["--use_cpu", "true"]),
    "zero2": (["--config_file", str(CONFIGS / "zero2.yaml")], ["--ddp_backend", "gloo"]),
    "zero3": (["--config_file", str(CONFIGS / "zero3.yaml")], ["--ddp_backend", "gloo"]),
}

# Each rank runs this: a full run with checkpoints at steps 2 and 4, then a run resumed from checkpoint-2. It records
# the logged values and, per step, how many input images and creation targets this rank's batch held.
RUN_AND_RECORD = """
import json, os, sys
sys.path.insert(0, os.environ["PYTHONPATH"])
from train.stages import build_trainer, parse_args


def run(argv):
    trainer = build_trainer(*parse_args(argv))
    batches, compute_loss = [], trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        if model.training:
            count = lambda key: 0 if inputs.get(key) is None else len(inputs[key])
            batches.append([count("pixel_values"), count("target_pixel_values")])
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    resume = argv[argv.index("--resume_from_checkpoint") + 1] if "--resume_from_checkpoint" in argv else None
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_final(trainer.args.output_dir)
    keys = ("step", "loss", "lm_loss", "diffusion_loss", "grad_norm")
    logs = [{key: entry[key] for key in keys} for entry in trainer.state.log_history if "lm_loss" in entry]
    return {"distributed_type": str(trainer.accelerator.distributed_type), "logs": logs, "batches": batches}


output, argv = sys.argv[1], sys.argv[2:]
report = {"full": run(argv + ["--output_dir", output + "/full"])}
report["resumed"] = run(argv + ["--output_dir", output + "/resumed", "--resume_from_checkpoint",
                                output + "/full/checkpoint-2"])
with open(f"{output}/report-{os.environ['RANK']}.json", "w") as handle:
    json.dump(report, handle)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_llava_mix(folder: Path, count: int = 8) -> Path:
    """LLaVA-style conversations, every other one about an image, the others text only."""
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (caption, image) in enumerate(shape_items(count)):
        if index % 2:
            records.append({"id": str(index), "conversations": [
                {"from": "human", "value": f"Name shape number {index}."},
                {"from": "gpt", "value": f"Shape {index} is {caption}."}]})
            continue
        image.save(folder / f"{index}.png")
        records.append({"id": str(index), "image": f"{index}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the picture?"}, {"from": "gpt", "value": f"It is {caption}."}]})
    path = folder / "chat.json"
    path.write_text(json.dumps(records))
    return path


def _launch(engine: str, tiny_folder: Path, data: list[Path], output: Path, script: Path) -> list[dict]:
    launcher, device = LAUNCH[engine]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2",
               "--mixed_precision", "no", "--main_process_port", str(_free_port()), str(script), str(output),
               "--stage", "igpt", "--model_name_or_path", str(tiny_folder), "--bf16", "false",
               "--activation_checkpointing", "false", *device, "--max_steps", str(STEPS),
               "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--warmup_steps", "0", "--creation_prob", "1",
               "--logging_steps", "1", "--save_steps", "2", "--disable_tqdm", "true", "--seed", "0"]
    for path in data:
        command += ["--data", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "TOKENIZERS_PARALLELISM": "false"}
    output.mkdir()
    result = subprocess.run(command, cwd=output, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{engine}: {result.stderr[-4000:]}"
    return [json.loads((output / f"report-{rank}.json").read_text()) for rank in (0, 1)]


def _close(got: float, expected: float, rtol: float) -> bool:
    return abs(got - expected) <= rtol * max(1.0, abs(expected))


@pytest.mark.slow
def test_every_engine_equals_ddp_on_mixed_batches_and_resumes(tiny_folder, tmp_path):
    script = tmp_path / "run_and_record.py"
    script.write_text(textwrap.dedent(RUN_AND_RECORD))
    data = [write_llava_mix(tmp_path / "llava"), write_pair_folder(tmp_path / "pairs")]
    reports = {engine: _launch(engine, tiny_folder, data, tmp_path / engine, script) for engine in LAUNCH}

    ddp = reports["ddp"][0]["full"]
    # The data really is mixed across ranks: some step has an input image on one rank only, and some step has a
    # created image on one rank only.
    per_step = list(zip(reports["ddp"][0]["full"]["batches"], reports["ddp"][1]["full"]["batches"], strict=True))
    assert any((a[0] == 0) != (b[0] == 0) for a, b in per_step), per_step
    assert any((a[1] == 0) != (b[1] == 0) for a, b in per_step), per_step
    assert len(ddp["logs"]) == STEPS and all(entry["diffusion_loss"] is not None for entry in ddp["logs"])

    initial = load_file(tiny_folder / "model.safetensors")
    ddp_weights = load_file(tmp_path / "ddp" / "full" / "model.safetensors")
    # AdamW skips a parameter that has no gradient, and DDP leaves one unused on every rank without gradient, while the
    # sharded engines reduce a zero for it, which still decays AdamW's moments: the visual projector (creation path)
    # can only be compared after steps in which some rank had an input image (a creation block).
    no_image_anywhere = any(a[0] == b[0] == 0 for a, b in per_step)
    no_creation_anywhere = any(a[1] == b[1] == 0 for a, b in per_step)
    skipped_by_adamw = ("model.vision_projector.",) * no_image_anywhere + (
        "model.dream_queries.", "model.condition_projector.") * no_creation_anywhere

    for engine, (rank0, rank1) in reports.items():
        full, resumed = rank0["full"], rank0["resumed"]
        if engine != "ddp":
            assert [r["full"]["batches"] for r in (rank0, rank1)] == [r["full"]["batches"] for r in reports["ddp"]]
        expected_type = {"ddp": "MULTI_CPU", "fsdp2": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}[engine]
        assert full["distributed_type"] == f"DistributedType.{expected_type}", engine
        # Step by step, the logged losses and gradient norms of DDP.
        assert [entry["step"] for entry in full["logs"]] == list(range(1, STEPS + 1)), engine
        for got, expected in zip(full["logs"], ddp["logs"], strict=True):
            for name in ("loss", "lm_loss", "diffusion_loss"):
                assert _close(got[name], expected[name], LOSS_RTOL), (engine, name, got, expected)
            assert _close(got["grad_norm"], expected["grad_norm"], NORM_RTOL), (engine, got, expected)
        # Resumed from checkpoint-2: the same steps 3-4 as the uninterrupted run, and the same final weights.
        resumed_logs = [entry for entry in resumed["logs"] if entry["step"] > 2]  # 1-2 come with the checkpoint
        assert [entry["step"] for entry in resumed_logs] == list(range(3, STEPS + 1)), engine
        assert resumed["batches"] == full["batches"][2:], engine
        for got, expected in zip(resumed_logs, full["logs"][2:], strict=True):
            for name in ("loss", "lm_loss", "diffusion_loss", "grad_norm"):
                assert _close(got[name], expected[name], RESUME_RTOL), (engine, name, got, expected)
        folder = tmp_path / engine / "full"
        weights = load_file(folder / "model.safetensors")
        assert set(weights) == set(initial), engine  # a plain DreamLLM folder: the assembled folder's keys
        for name in ("unet", "vae", "scheduler", "model_index.json", "modeling_dreamllm.py", "checkpoint-2"):
            assert (folder / name).exists(), (engine, name)
        for key, value in load_file(tmp_path / engine / "resumed" / "model.safetensors").items():
            torch.testing.assert_close(value, weights[key], rtol=0, atol=1e-6, msg=f"{engine} resumed {key}")
        for key in initial:
            if key.startswith("model.vision_tower."):
                assert torch.equal(weights[key], initial[key]), (engine, key)  # frozen, saved whole
            elif not key.startswith(skipped_by_adamw):
                torch.testing.assert_close(weights[key], ddp_weights[key], rtol=0, atol=WEIGHT_ATOL,
                                           msg=f"{engine} {key}")
        assert any(not torch.equal(weights[key], initial[key]) for key in initial if "language_model" in key)

    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "zero3" / "full", trust_remote_code=True)
    assert type(loaded).__name__ == "DreamLLMForConditionalGeneration"
