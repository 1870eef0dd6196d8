"""Training-step benchmark: one joint DreamLLM step (LM + diffusion) against an LM-only step plus a diffusion-only
step on the same batch, peak memory, and what the optimizer holds.

    python benchmarks/bench_train.py                      # tiny random model, CPU, about a minute
    python benchmarks/bench_train.py --folder dreamllm-7b --steps 20 --batch 4 --threads 0

The joint step runs the LLM once for both losses, so it should cost at most the two single-loss steps together
(ratio <= 1.05). The batch mixes interleaved documents with shorter caption pairs, so the trainer runs it as length
buckets; the same step as one padded forward is the baseline of that (ratio <= 1). Timings are medians over
`--steps` measured steps per mode, after warm-up, modes interleaved.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402


def build(folder: Path, data_root: Path, batch_size: int):
    from train.data import build_train_dataset
    from train.data.example_files import write_mmc4, write_pair_folder
    from train.stages import build_trainer, parse_args

    data = [write_mmc4(data_root / "mmc4"), write_pair_folder(data_root / "pairs")]
    argv = ["--stage", "igpt", "--model_name_or_path", str(folder), "--output_dir", str(data_root / "out"),
            "--per_device_train_batch_size", str(batch_size), "--bf16", str(torch.cuda.is_available()).lower(),
            "--activation_checkpointing", "false", "--report_to", "none", "--disable_tqdm", "true",
            "--creation_prob", "1.0", "--max_steps", "1"]
    for path in data:
        argv += ["--data", str(path)]
    trainer = build_trainer(*parse_args(argv))
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is bypassed here
    # Documents and pairs alternate: a batch of mixed lengths, as a mixture of sources gives.
    stories, pairs = (build_train_dataset([str(path)], trainer.processing_class, creation_prob=1.0) for path in data)
    alternating = [(stories, pairs)[index % 2] for index in range(batch_size)]
    samples = [source[index // 2 % len(source)] for index, source in enumerate(alternating)]
    return trainer, trainer.data_collator(samples)


def step_time(trainer, batch: dict, lm: bool, diffusion: bool) -> float:
    """One optimizer step on `batch` with the chosen loss terms; returns seconds."""
    inputs = dict(batch)
    # A loss weighted 0 is skipped by the trainer; the LLM forward runs in every mode.
    trainer.lm_loss_weight, trainer.diffusion_loss_weight = float(lm), 10.0 * diffusion
    device = trainer.args.device
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.training_step(trainer.model, inputs)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def count(parameters) -> tuple[int, int]:
    parameters = list(parameters)
    return len(parameters), sum(p.numel() for p in parameters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", help="a DreamLLM folder (default: a fresh tiny random one)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave the default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # tiny CPU kernels on shared cores time more stably on one thread

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder = Path(args.folder) if args.folder else scratch / "tiny"
        if not args.folder:
            from train.assemble import main as assemble

            assemble(["--preset", "tiny-random", "--output", str(folder)])
        trainer, batch = build(folder, scratch, args.batch)
        padded = {key: value for key, value in batch.items() if key != "length_buckets"}
        modes = {"joint (LM + diffusion)": (batch, True, True), "LM only": (batch, True, False),
                 "diffusion only": (batch, False, True), "joint, one padded forward": (padded, True, True)}
        times = {name: [] for name in modes}
        for _ in range(args.warmup):
            for inputs, lm, diffusion in modes.values():
                step_time(trainer, inputs, lm, diffusion)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.steps):
            for name, (inputs, lm, diffusion) in modes.items():
                times[name].append(step_time(trainer, inputs, lm, diffusion))
        medians = {name: statistics.median(values) for name, values in times.items()}
        ratio = medians["joint (LM + diffusion)"] / (medians["LM only"] + medians["diffusion only"])
        bucket_ratio = medians["joint (LM + diffusion)"] / medians["joint, one padded forward"]

        model, decoder = trainer.model, trainer.diffusion_loss
        trainable = [p for p in model.parameters() if p.requires_grad]
        frozen_model = [p for p in model.parameters() if not p.requires_grad]
        decoder_params = list(decoder.parameters())
        state_params = list(trainer.optimizer.state)
        state_bytes = sum(t.numel() * t.element_size() for s in trainer.optimizer.state.values()
                          for t in s.values() if torch.is_tensor(t))

        print(f"\nDreamLLM training step on {trainer.args.device} ({torch.get_num_threads()} threads), "
              f"batch {args.batch}, {batch['input_ids'].shape[1]} tokens, "
              f"{0 if batch.get('target_pixel_values') is None else len(batch['target_pixel_values'])} creation "
              f"blocks, {len(batch.get('length_buckets', [0]))} length buckets, {args.steps} steps per mode\n")
        print(f"{'mode':<26}{'median ms':>12}{'min ms':>10}")
        for name, values in times.items():
            print(f"{name:<26}{1000 * medians[name]:>12.2f}{1000 * min(values):>10.2f}")
        print(f"{'ratio joint / (LM + diffusion)':<38}{ratio:>10.3f}   (goal <= 1.05)")
        print(f"{'ratio length buckets / one padded':<38}{bucket_ratio:>10.3f}   (goal <= 1)")
        peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{'peak process RSS':<38}{peak_rss:>10.1f} MiB")
        if torch.cuda.is_available():
            print(f"{'peak CUDA allocated':<38}{torch.cuda.max_memory_allocated() / 2**20:>10.1f} MiB")
        print(f"\n{'parameters':<38}{'tensors':>10}{'elements':>14}")
        for name, params in (("trainable (model)", trainable), ("frozen (model: CLIP)", frozen_model),
                             ("frozen decoder (UNet + VAE)", decoder_params), ("with optimizer state", state_params)):
            tensors, elements = count(params)
            print(f"{name:<38}{tensors:>10}{elements:>14,}")
        print(f"{'optimizer state':<38}{state_bytes / 2**20:>23.2f} MiB")
        only_trainable = {id(p) for p in state_params} == {id(p) for p in trainable}
        print(f"optimizer holds state only for trainable parameters: {only_trainable}")


if __name__ == "__main__":
    main()
