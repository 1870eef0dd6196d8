"""`python -m train --stage alignment|igpt|sft --model_name_or_path DIR --output_dir DIR --data PATH ...`
(also under `accelerate launch -m train ...`); see `train.stages`."""

from train.stages import main

if __name__ == "__main__":
    main()
