"""`python -m train --stage alignment|igpt|sft --model_name_or_path DIR --output_dir DIR --data PATH ...`
(also under `accelerate launch -m train ...`); see `train.stages`. A bad input ends in one line saying what to do."""

import sys

from train.errors import InputError
from train.stages import main

if __name__ == "__main__":
    try:
        main()
    except InputError as error:
        sys.exit(f"error: {error}")
