"""The toy run's recipe: the DreamLLM stage plans and the steps of `python -m train.toy` (stage 0, the world's
files, `train.assemble`, the three stages through `python -m train`'s code, the held-out evaluation).

    from train.toy.recipe import run
    final_folder = run(Path("runs/toy"), seed=0, scale=1.0)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from train.toy.stage0_common import scaled_batch

STAGE_ORDER = ("alignment", "igpt", "sft")


@dataclass(frozen=True)
class StagePlan:
    """Steps (at scale 1), learning rate and data of one DreamLLM stage of the toy run."""

    steps: int
    learning_rate: float
    data: tuple[str, ...]  # keys of `write_world_data`'s result, optionally ':weight'
    creation_prob: float = 0.5  # share of image-text pairs used for creation
    batch_size: int = 12
    # Noise draws per created image: the condition's gradient through one draw is mostly noise, and averaging draws is
    # what lets the LLM learn to steer the decoder within the budget (4 took colour from 23% to 43% under an early
    # recipe). Each draw is one more UNet pass (no LLM work), and here the decoder is most of a step: two draws instead
    # of four cut I-GPT's step from 0.91 to 0.72 s, and text-to-image and understanding held up (README).
    noise_samples_per_image: int = 2

    def source_weights(self) -> dict[str, float]:
        """`data` as {source: sampling weight} ('qa:13' -> {'qa': 13.0}; no weight is 1)."""
        return {name: float(weight or 1) for name, _, weight in (key.partition(":") for key in self.data)}


# The LLM is frozen in alignment, so its dream-query states hardly depend on the caption yet: alignment mostly
# trains the vision projector. Creation is learned in I-GPT, where the LLM itself learns to steer the decoder, so
# it gets most of the steps and most pairs are creation pairs. I-GPT batches also carry 24 Q&A conversations around
# the 12 stories and pairs: with the trainer's length buckets they add ~20% to a step, and the LLM learns to read
# pictures and to steer the decoder together for the whole stage (README, "Q&A in I-GPT"). SFT then teaches the
# chat formats. A step's cost is the decoder's, paid per created image, and a Q&A conversation costs far less: SFT
# fills a large batch with Q&A (39 of 56) around six instructions, and keeps drawing with 9 caption pairs, every one a
# creation sample (1.5 pairs took text-to-image 4-5 points lower on colour and shape; drawing half of the 9 took
# colour 4 points lower on seed 0 and 1 point higher on seed 1: README "More caption pairs in SFT"), and 1.5 stories.
# Two-shape questions ("What color is the circle?") need a two-step lookup that small batches leave stuck at chance
# (README, "binding"); large batches learn it. Instructions keep six per batch (one sample in nine): with
# one in 16, stories stopped following the change they were asked for. Colour needs both a well-trained decoder
# (stage 0) and a long SFT: 900 SFT steps instead of 600 are what took it past 90% (README, "The colour target"), and
# two noise draws per created image in I-GPT and SFT pay for them. Alignment keeps four: its 300 steps cost a minute.
PLANS = {
    "alignment": StagePlan(steps=300, learning_rate=2e-3, data=("pairs",), noise_samples_per_image=4),
    "igpt": StagePlan(steps=1500, learning_rate=1e-3, data=("qa:4", "stories", "pairs"), creation_prob=0.8,
                      batch_size=36),
    "sft": StagePlan(steps=900, learning_rate=1e-3, data=("qa:13", "instructions:2", "stories:0.5", "pairs:3"),
                     creation_prob=1.0, batch_size=56),
}
QA_TWO_SHAPE_SHARE = 0.75  # one-shape questions are easy; the Q&A pictures lean on the two-shape ones
# One-shape captions are drawn nearly always right and the stories already create one-shape pictures (three per
# story), so every caption pair shows two shapes: in I-GPT that doubles the two-shape pictures created per step.
PAIR_TWO_SHAPE_SHARE = 1.0
NUM_DREAM_QUERIES = 16
SNR_GAMMA = 5.0  # Min-SNR weighting of the diffusion loss: the noisier steps, where layout and colour are decided
# The frozen decoder's noise-prediction loss changes with an object's position only at t >= ~600 (colour and shape
# matter at every t): drawing creation timesteps from [700, 1000) alone raised position accuracy, and shape with it.
MIN_TIMESTEP = 700


def _data_arguments(files: dict[str, Path], plan: StagePlan) -> list[str]:
    arguments = []
    for name, weight in plan.source_weights().items():
        arguments += ["--data", str(files[name]) if weight == 1 else f"{files[name]}:{weight:g}"]
    return arguments


def run_stage(
    stage: str, model: Path, output: Path, files: dict, scale: float, seed: int, plan: StagePlan | None = None
) -> list[dict]:
    """One DreamLLM stage through `python -m train`'s own code; returns its log history."""
    from train.stages import main as train_stage

    plan = plan or PLANS[stage]
    argv = [
        "--stage", stage, "--model_name_or_path", str(model), "--output_dir", str(output),
        "--max_steps", str(max(2, round(plan.steps * scale))), "--learning_rate", str(plan.learning_rate),
        "--per_device_train_batch_size", str(scaled_batch(plan.batch_size, scale)), "--logging_steps", "5",
        "--save_strategy", "no",
        "--seed", str(seed), "--dataloader_num_workers", "0", "--warmup_steps", "0.05",
        "--activation_checkpointing", "false", "--creation_prob", str(plan.creation_prob),
        "--snr_gamma", str(SNR_GAMMA), "--noise_samples_per_image", str(plan.noise_samples_per_image),
        "--min_timestep", str(MIN_TIMESTEP),
        *_data_arguments(files, plan),
    ]
    return train_stage(argv).state.log_history


def train_dreamllm(
    model: Path, output: Path, files: dict, scale: float, seed: int, plans: dict[str, StagePlan] = PLANS
) -> tuple[Path, dict, dict]:
    """The three stages in order from the assembled folder `model`; returns (final folder, losses, seconds)."""
    losses, seconds = {}, {}
    for stage in STAGE_ORDER:
        begin = time.time()
        print(f"[toy] DreamLLM stage {stage} -> {output / stage}", flush=True)
        losses[stage] = run_stage(stage, model, output / stage, files, scale, seed, plans[stage])
        model = output / stage
        # The Trainer's pickled arguments would travel with the published folder; the plan is in the model card.
        (model / "training_args.bin").unlink(missing_ok=True)
        seconds[stage] = round(time.time() - begin, 1)
    return model, losses, seconds


def write_world_files(output: Path, seed: int, scale: float) -> dict[str, Path]:
    """The world's training files under `output/data` (smaller below scale 0.25, for smoke runs)."""
    from train.toy.data import write_world_data

    counts = dict(num_pairs=2000, num_stories=600, num_qa=6000, num_instructions=600)
    sizes = {k: max(16, round(v * min(1.0, scale * 4))) for k, v in counts.items()}
    return write_world_data(output / "data", seed=seed, qa_two_shape_share=QA_TWO_SHAPE_SHARE,
                            pair_two_shape_share=PAIR_TWO_SHAPE_SHARE, **sizes)


def plot_losses(losses: dict[str, list[dict]], path: Path) -> None:
    """One column per stage; the LM and diffusion losses in separate rows (their scales differ ~50x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("lm_loss", "diffusion_loss")
    figure, axes = plt.subplots(len(keys), len(losses), figsize=(4 * len(losses), 5), squeeze=False, sharex="col")
    for column, (stage, history) in enumerate(losses.items()):
        for row, key in enumerate(keys):
            points = [(entry["step"], entry[key]) for entry in history if key in entry]
            axis = axes[row][column]
            if points:
                axis.plot(*zip(*points), color=f"C{row}")
            axis.set_ylabel(key if column == 0 else "")
            axis.set_title(stage if row == 0 else "")
        axes[-1][column].set_xlabel("step")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def run(output: Path, seed: int = 0, scale: float = 1.0, stage0: Path | None = None) -> Path:
    from train.assemble import assemble
    from train.toy import stage0 as stage0_module
    from train.toy.evaluate import evaluate
    from train.toy.model_card import write_model_card

    output.mkdir(parents=True, exist_ok=True)
    timings, started = {}, time.time()
    if stage0 is None:
        stage0 = output / "stage0"
        print(f"[toy] stage 0: the world's CLIP, Stable Diffusion and LM -> {stage0}", flush=True)
        stage0_module.run(stage0, seed=seed, steps_scale=scale)
        timings["stage0"] = round(time.time() - started, 1)
    print("[toy] writing the world's training files", flush=True)
    files = write_world_files(output, seed, scale)

    model = output / "assembled"
    if not model.exists():
        torch.manual_seed(seed)
        assemble(stage0 / "lm", stage0 / "clip", stage0 / "diffusion", model, num_dream_queries=NUM_DREAM_QUERIES)
    model, losses, seconds = train_dreamllm(model, output, files, scale, seed)
    timings.update(seconds)
    (output / "losses.json").write_text(json.dumps({"losses": losses, "seconds": timings}, indent=1))
    plot_losses(losses, output / "losses.png")
    print("[toy] evaluating", flush=True)
    evaluation_started = time.time()
    quick = scale < 0.5
    scores = evaluate(model, quick=quick)
    timings["evaluation"] = round(time.time() - evaluation_started, 1)
    (output / "scores.txt").write_text(scores.table() + "\n")
    (output / "scores.json").write_text(json.dumps(scores.as_dict(), indent=1))
    stage0_log = stage0 / "stage0_log.json"
    write_model_card(model, scores.table(), timings, seed, scale,
                     json.loads(stage0_log.read_text()) if stage0_log.exists() else None)
    total = round(time.time() - started, 1)
    (output / "run.json").write_text(json.dumps({"seed": seed, "scale": scale, "quick_evaluation": quick,
                                                 "seconds": total, "threads": torch.get_num_threads()}, indent=1))
    print(scores.table())
    print(f"[toy] done in {total:.0f} s; the final model is {model}")
    return model
