"""Research probes of the shapes world's parts, apart from the recipe (`python -m train.toy`):

    python -m train.probes decoder runs/toy/stage0/diffusion   # where in the noise schedule the decoder reads each word
    python -m train.probes decoder runs/toy/stage0/diffusion --dreamllm runs/toy/sft   # conditions vs the text tower's
    python -m train.probes binding runs/toy/stage0/clip      # can a small LLaMA bind colour to shape over CLIP patches?
"""

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["decoder"]:
        parser = argparse.ArgumentParser(prog="python -m train.probes decoder", description="per timestep band, how "
                                         "much the decoder's loss rises when one caption attribute is wrong")
        parser.add_argument("diffusion", type=Path, help="a stage-0 Stable Diffusion folder (DIR/stage0/diffusion)")
        parser.add_argument("--dreamllm", type=Path, default=None, help="a DreamLLM folder on that decoder "
                            "(DIR/sft): compare its conditions with the text tower's on two-shape pictures")
        args = parser.parse_args(argv[1:])
        from diffusers import StableDiffusionPipeline

        from train.probes.decoder_conditions import (
            comparison_table,
            condition_comparison,
            sensitivity_table,
            timestep_sensitivity,
        )

        pipeline = StableDiffusionPipeline.from_pretrained(args.diffusion)
        if args.dreamllm is None:
            print(sensitivity_table(timestep_sensitivity(pipeline)))
        else:
            from pipeline_dreamllm import DreamLLMPipeline

            print(comparison_table(condition_comparison(pipeline, DreamLLMPipeline.from_pretrained(args.dreamllm))))
        return
    if argv[:1] == ["binding"]:
        parser = argparse.ArgumentParser(prog="python -m train.probes binding", description="train a fresh world-sized "
                                         "LLaMA to name the colour of one of two shapes from frozen CLIP patches")
        parser.add_argument("clip", type=Path, help="a stage-0 CLIP folder (DIR/stage0/clip)")
        parser.add_argument("--tasks", default=None, help="comma-separated (default: every task)")
        parser.add_argument("--steps", type=int, default=1000)
        parser.add_argument("--batch", type=int, default=24, help="samples per step: the plateau's main lever")
        parser.add_argument("--seed", type=int, default=0)
        args = parser.parse_args(argv[1:])
        from transformers import CLIPVisionModel

        from train.probes.binding import TASKS, binding_table, train_binding

        clip = CLIPVisionModel.from_pretrained(args.clip)
        tasks = args.tasks.split(",") if args.tasks else TASKS
        curves = {task: train_binding(clip, task, steps=args.steps, batch=args.batch, seed=args.seed) for task in tasks}
        print(binding_table(curves))
        return
    sys.exit("usage: python -m train.probes {decoder,binding} ... (see --help of each)")


if __name__ == "__main__":
    main()
