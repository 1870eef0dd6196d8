"""Understanding benchmarks of a DreamLLM folder through lmms-eval's evaluator (its tasks, metrics and table).

    python -m eval.understanding --model checkpoints/toy --tasks shapes_vqa            # the shapes world, offline
    python -m eval.understanding --model checkpoints/toy --tasks shapes_vqa,shapes_vqa_mc --limit 30
    python -m eval.understanding --model DIR --tasks mmbench_en_dev,vqav2_val --dtype bfloat16 --output results/

The `dreamllm` model is registered with lmms-eval here (from this checkout, no install needed) and the project's own
tasks (eval/lmms_tasks: shapes_vqa, shapes_vqa_mc) are added to lmms-eval's; any lmms-eval task name works. `--output`
writes the results as JSON (per-sample answers too, with `--log-samples`). Installed (`pip install -e .`), the same
model is `lmms-eval --model dreamllm` (see eval/lmms_dreamllm.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent / "lmms_tasks"


def register_dreamllm() -> None:
    """Add the `dreamllm` manifest to lmms-eval's model registry unless the installed entry point already did."""
    from lmms_eval.models import MODEL_REGISTRY_V2

    from eval.lmms_dreamllm import MANIFEST

    if MANIFEST.model_id not in MODEL_REGISTRY_V2.list_model_names():
        MODEL_REGISTRY_V2.register_manifest(MANIFEST)


def evaluate(
    model: str | Path,
    tasks: list[str],
    limit: int | float | None = None,
    device: str | None = None,
    dtype: str = "float32",
    log_samples: bool = False,
    seed: int = 0,
    include_paths: list[str | Path] = (),
) -> dict:
    """lmms-eval's `simple_evaluate` of the `dreamllm` model on `tasks`; returns its results dict.

    Example:

    ```python
    >>> evaluate("checkpoints/toy", ["shapes_vqa"])["results"]["shapes_vqa"]["accuracy,none"]
    ```
    """
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    if not Path(model).is_dir():
        raise FileNotFoundError(f"--model {model}: not a DreamLLM folder")
    register_dreamllm()
    paths = [str(TASKS_DIR), *map(str, include_paths)]
    task_manager = TaskManager("WARNING", include_path=paths, model_name="dreamllm")
    unknown = [task for task in tasks if not task_manager.match_tasks([task])]
    if unknown:
        raise ValueError(f"--tasks: unknown lmms-eval task(s) {unknown} (local ones: shapes_vqa, shapes_vqa_mc)")
    model_args = f"pretrained={model},dtype={dtype}" + (f",device={device}" if device else "")
    return simple_evaluate(
        model="dreamllm",
        model_args=model_args,
        tasks=tasks,
        limit=limit,
        batch_size=1,
        task_manager=task_manager,
        log_samples=log_samples,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a DreamLLM folder")
    parser.add_argument("--tasks", required=True, help="comma-separated lmms-eval task names")
    parser.add_argument("--limit", type=float, default=None, help="first N documents per task (a fraction if < 1)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--output", type=Path, default=None, help="folder for results.json")
    parser.add_argument("--log-samples", action="store_true", help="keep every answer in the results")
    parser.add_argument("--include-path", action="append", default=[], help="another folder of lmms-eval task "
                        "YAMLs, e.g. lmms-eval's own lmms_eval/tasks from its source (its 0.7 wheel ships none)")
    args = parser.parse_args(argv)
    from lmms_eval.utils import make_table
    from lmms_eval.loggers.utils import _handle_non_serializable

    limit = None if args.limit is None else int(args.limit) if args.limit >= 1 else args.limit
    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    results = evaluate(args.model, tasks, limit, args.device, args.dtype, args.log_samples,
                       include_paths=args.include_path)
    print(make_table(results))
    if args.output is not None:
        args.output.mkdir(parents=True, exist_ok=True)
        path = args.output / "results.json"
        path.write_text(json.dumps(results, indent=2, default=_handle_non_serializable))
        print(f"results written to {path}")
    return results


if __name__ == "__main__":
    main()
