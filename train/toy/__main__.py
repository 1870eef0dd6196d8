"""The shapes world, end to end: stage 0 (the world's own CLIP, Stable Diffusion and LM), `train.assemble`, the three
DreamLLM stages with the project's trainer, and a held-out evaluation.

    python -m train.toy --output runs/toy                 # everything (58-123 min on 2 CPU cores)
    python -m train.toy --output runs/toy --scale 0.05    # a quick smoke run of the same code paths
    python -m train.toy evaluate checkpoints/toy          # the accuracy table of any DreamLLM folder
    python -m train.toy synergy --run runs/toy            # joint vs comprehension-only vs creation-only, 2 seeds
    python -m train.toy preferences --output runs/toy/preferences --num 2000   # DPO pairs (python -m train dpo)

The run writes `DIR/stage0/`, `DIR/data/`, `DIR/assembled/`, one folder per stage (`DIR/sft` is the final model),
`DIR/losses.json`, `DIR/losses.png`, `DIR/scores.txt`, `DIR/scores.json` and `DIR/run.json` (seed, scale, seconds).
Deterministic under `--seed` on a given thread count. The research probes of the world's parts are in `train.probes`.
"""

import argparse
import sys
from pathlib import Path


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
    if argv[:1] == ["synergy"]:
        parser = argparse.ArgumentParser(prog="python -m train.toy synergy", description="joint vs comprehension-only "
                                         "vs creation-only training with the same budget, next to a main run")
        parser.add_argument("--run", required=True, type=Path, help="the --output folder of a main run")
        parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="DreamLLM-stage seeds of every arm")
        parser.add_argument("--scale", type=float, default=1.0, help="multiplies every arm's step counts")
        parser.add_argument("--quick", action="store_true", help="score on the quick held-out set (smoke runs)")
        args = parser.parse_args(argv[1:])
        from train.toy.synergy import run_synergy

        print(run_synergy(args.run, tuple(args.seeds), args.scale, quick=args.quick))
        return
    if argv[:1] == ["preferences"]:
        parser = argparse.ArgumentParser(prog="python -m train.toy preferences", description="question, right "
                                         "answer, wrong colour or shape: a preference dataset for python -m train dpo")
        parser.add_argument("--output", required=True, type=Path)
        parser.add_argument("--num", type=int, default=2000)
        parser.add_argument("--seed", type=int, default=None)
        args = parser.parse_args(argv[1:])
        from train.toy.preferences import PREFERENCE_SEED, write_preferences

        seed = PREFERENCE_SEED if args.seed is None else args.seed
        print(f"{args.num} preference pairs written to {write_preferences(args.output, args.num, seed)}")
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiplies every step count and data size (below 0.1, batch sizes too)")
    parser.add_argument("--stage0", type=Path, default=None, help="reuse a stage-0 folder instead of training one")
    args = parser.parse_args(argv)
    from train.toy.recipe import run

    run(args.output, args.seed, args.scale, args.stage0)


if __name__ == "__main__":
    main()
