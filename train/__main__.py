"""`python -m train --stage alignment|igpt|sft --model_name_or_path DIR --output_dir DIR --data PATH ...`
(also under `accelerate launch -m train ...`); see `train.stages`. A bad input ends in one line saying what to do.
`python -m train --recipe train/recipes/dreamllm-7b/igpt.yaml [overrides] [--print_config]`: a recipe file's
settings and data mixture (docs/recipes.md).
`python -m train merge --creation DIR --comprehension DIR --output DIR`: I-GPT's start from the two official
alignment runs; see `train.merge_alignment`.
`python -m train merge --adapter DIR --output DIR`: a LoRA run's adapter merged into a plain folder;
`python -m train push --adapter DIR --repo_id ID`: the adapter uploaded with its card; see `train.adapters`.
`python -m train dpo --model_name_or_path DIR --output_dir DIR --data PAIRS`: preference tuning; see `train.dpo`."""

import sys

from train.errors import InputError

if __name__ == "__main__":
    try:
        if sys.argv[1:2] == ["push"] or (sys.argv[1:2] == ["merge"] and "--adapter" in sys.argv[2:]):
            from train.adapters import main as adapters_main

            adapters_main(sys.argv[1:])
        elif sys.argv[1:2] == ["dpo"]:
            from train.dpo import main as dpo_main

            dpo_main(sys.argv[2:])
        elif sys.argv[1:2] == ["merge"]:
            from train.merge_alignment import main as merge_main

            merge_main(sys.argv[2:])
        else:
            from train.stages import main

            main()
    except InputError as error:
        sys.exit(f"error: {error}")
