"""The shapes world, end to end: stage 0 (the world's own CLIP, Stable Diffusion and LM), `train.assemble`, the three
DreamLLM stages with the project's trainer, and a held-out evaluation.

    python -m train.toy --output runs/toy                 # everything (about an hour on 2 CPU cores)
    python -m train.toy --output runs/toy --scale 0.05    # a quick smoke run of the same code paths
    python -m train.toy evaluate checkpoints/toy          # the accuracy table of any DreamLLM folder

The run writes `DIR/stage0/`, `DIR/data/`, `DIR/assembled/`, one folder per stage (`DIR/sft` is the final model),
`DIR/losses.json`, `DIR/losses.png` and `DIR/scores.txt`. Deterministic under `--seed`.
"""

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

STAGE_ORDER = ("alignment", "igpt", "sft")


@dataclass(frozen=True)
class StagePlan:
    """Steps (at scale 1), learning rate and data of one DreamLLM stage of the toy run."""

    steps: int
    learning_rate: float
    data: tuple[str, ...]  # keys of `write_world_data`'s result, optionally ':weight'
    creation_prob: float = 0.5  # share of image-text pairs used for creation


# The LLM is frozen in alignment, so its dream-query states hardly depend on the caption yet: alignment mostly
# trains the vision projector. Creation is learned in I-GPT, where the LLM itself learns to steer the decoder, so
# it gets most of the steps and most pairs are creation pairs; SFT then teaches the chat formats.
PLANS = {
    "alignment": StagePlan(steps=300, learning_rate=2e-3, data=("pairs",)),
    "igpt": StagePlan(steps=1500, learning_rate=1e-3, data=("stories", "pairs"), creation_prob=0.8),
    "sft": StagePlan(steps=600, learning_rate=3e-4, data=("qa", "instructions", "stories:0.5", "pairs:0.5")),
}
BATCH_SIZE = 8
NUM_DREAM_QUERIES = 16
SNR_GAMMA = 5.0  # Min-SNR weighting of the diffusion loss: the noisier steps, where layout and colour are decided


def _data_arguments(files: dict[str, Path], keys: tuple[str, ...]) -> list[str]:
    arguments = []
    for key in keys:
        name, _, weight = key.partition(":")
        arguments += ["--data", f"{files[name]}:{weight}" if weight else str(files[name])]
    return arguments


def run_stage(stage: str, model: Path, output: Path, files: dict, scale: float, seed: int) -> list[dict]:
    """One DreamLLM stage through `python -m train`'s own code; returns its log history."""
    from train.stages import main as train_stage

    plan = PLANS[stage]
    argv = [
        "--stage", stage, "--model_name_or_path", str(model), "--output_dir", str(output),
        "--max_steps", str(max(2, round(plan.steps * scale))), "--learning_rate", str(plan.learning_rate),
        "--per_device_train_batch_size", str(BATCH_SIZE), "--logging_steps", "5", "--save_strategy", "no",
        "--seed", str(seed), "--dataloader_num_workers", "0", "--warmup_steps", "0.05",
        "--activation_checkpointing", "false", "--creation_prob", str(plan.creation_prob),
        "--snr_gamma", str(SNR_GAMMA), *_data_arguments(files, plan.data),
    ]
    return train_stage(argv).state.log_history


def plot_losses(losses: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3), squeeze=False)
    for axis, (stage, history) in zip(axes[0], losses.items()):
        for key in ("lm_loss", "diffusion_loss", "loss"):
            points = [(row["step"], row[key]) for row in history if key in row]
            if points:
                axis.plot(*zip(*points), label=key)
        axis.set_title(stage)
        axis.set_xlabel("step")
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def run(output: Path, seed: int = 0, scale: float = 1.0, stage0: Path | None = None) -> Path:
    from train.assemble import assemble
    from train.toy import stage0 as stage0_module
    from train.toy.data import write_world_data
    from train.toy.evaluate import evaluate

    output.mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.time()
    if stage0 is None:
        stage0 = output / "stage0"
        print(f"[toy] stage 0: the world's CLIP, Stable Diffusion and LM -> {stage0}", flush=True)
        stage0_module.run(stage0, seed=seed, steps_scale=scale)
        timings["stage0"] = time.time() - started
    print("[toy] writing the world's training files", flush=True)
    counts = dict(num_pairs=2000, num_stories=600, num_qa=2000, num_instructions=600)
    files = write_world_data(output / "data", seed=seed, **{k: max(16, round(v * min(1.0, scale * 4))) for k, v in counts.items()})

    model = output / "assembled"
    if not model.exists():
        torch.manual_seed(seed)
        assemble(stage0 / "lm", stage0 / "clip", stage0 / "diffusion", model, num_dream_queries=NUM_DREAM_QUERIES)
    losses = {}
    for stage in STAGE_ORDER:
        begin = time.time()
        print(f"[toy] DreamLLM stage {stage}", flush=True)
        losses[stage] = run_stage(stage, model, output / stage, files, scale, seed)
        model = output / stage
        timings[stage] = time.time() - begin
    (output / "losses.json").write_text(json.dumps({"losses": losses, "seconds": timings}, indent=1))
    plot_losses(losses, output / "losses.png")
    print("[toy] evaluating", flush=True)
    scores = evaluate(model, quick=scale < 0.5)
    (output / "scores.txt").write_text(scores.table() + "\n")
    print(scores.table())
    print(f"[toy] done in {time.time() - started:.0f} s; the final model is {model}")
    return model


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["evaluate"]:
        parser = argparse.ArgumentParser(prog="python -m train.toy evaluate")
        parser.add_argument("folder", type=Path)
        parser.add_argument("--quick", action="store_true", help="a quarter of the held-out set")
        args = parser.parse_args(argv[1:])
        from train.toy.evaluate import evaluate

        print(evaluate(args.folder, quick=args.quick).table())
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step count (and data size)")
    parser.add_argument("--stage0", type=Path, default=None, help="reuse a stage-0 folder instead of training one")
    args = parser.parse_args(argv)
    run(args.output, args.seed, args.scale, args.stage0)


if __name__ == "__main__":
    main()
