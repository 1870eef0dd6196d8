"""The paper's synergy experiment in miniature: the same DreamLLM budget spent on joint training, on comprehension
only, or on creation only, from the same assembled model and stage-0 parts.

    python -m train.toy synergy --run runs/toy     # reuses runs/toy/{stage0,data,assembled} and its joint scores

- joint: `PLANS` as the main run (pairs for creation and captioning, stories, Q&A, instructions);
- comprehension-only: every image is an input (pairs as captioning, Q&A); no creation blocks, no diffusion loss;
- creation-only: every image is created (pairs as text-to-image, stories, instructions); no Q&A.

Each variant keeps every stage's step count, batch size and learning rate, so all three see the same number of
samples. The table compares text-to-image and understanding accuracy on the held-out set of `evaluate`.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from train.toy.data import world_data_paths
from train.toy.recipe import PLANS, STAGE_ORDER, StagePlan, train_dreamllm

COMPREHENSION_SOURCES = ("pairs", "qa")
CREATION_SOURCES = ("pairs", "stories", "instructions")
VARIANTS = ("joint", "comprehension-only", "creation-only")


def _keep(plan: StagePlan, sources: tuple[str, ...], creation_prob: float) -> StagePlan:
    data = tuple(key for key in plan.data if key.partition(":")[0] in sources)
    if not data:  # a stage whose sources are all excluded trains on the variant's pairs
        data = ("pairs",)
    return replace(plan, data=data, creation_prob=creation_prob)


def variant_plans(variant: str, plans: dict[str, StagePlan] = PLANS) -> dict[str, StagePlan]:
    """The stage plans of one synergy variant (same steps and learning rates as `plans`)."""
    if variant == "joint":
        return dict(plans)
    if variant == "comprehension-only":
        return {stage: _keep(plan, COMPREHENSION_SOURCES, 0.0) for stage, plan in plans.items()}
    if variant == "creation-only":
        return {stage: _keep(plan, CREATION_SOURCES, 1.0) for stage, plan in plans.items()}
    raise ValueError(f"unknown synergy variant {variant!r}: expected one of {VARIANTS}")


def synergy_table(scores: dict[str, dict]) -> str:
    """Markdown table: one row per metric, one column per variant (from `ToyScores.as_dict()` results)."""
    rows = [("text-to-image", key) for key in ("color", "shape", "position")]
    rows += [("understanding", key) for key in ("color", "shape", "position", "all")]
    names = [variant for variant in VARIANTS if variant in scores]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for area, key in rows:
        cells = [f"{scores[name][area.replace('-', '_')][key]:.1%}" for name in names]
        lines.append(f"| {area} {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_synergy(run: Path, seed: int = 0, scale: float = 1.0, variants: tuple[str, ...] = VARIANTS) -> str:
    """Train the missing variants next to a main run's folders, evaluate them, write and return the table."""
    from train.toy.evaluate import evaluate

    assembled, files = run / "assembled", world_data_paths(run / "data")  # the main run's, reused as they are
    missing = [str(path) for path in (assembled, *files.values()) if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: run `python -m train.toy --output {run}` first")
    scores = {}
    for variant in variants:
        folder = run if variant == "joint" else run / "synergy" / variant
        final = folder / STAGE_ORDER[-1]
        saved = folder / "scores.json"
        if not final.exists():
            print(f"[toy] synergy: training {variant}", flush=True)
            _, losses, seconds = train_dreamllm(assembled, folder, files, scale, seed, variant_plans(variant))
            (folder / "losses.json").write_text(json.dumps({"losses": losses, "seconds": seconds}, indent=1))
        if not saved.exists():
            print(f"[toy] synergy: evaluating {variant}", flush=True)
            saved.write_text(json.dumps(evaluate(final, quick=scale < 0.5).as_dict(), indent=1))
        scores[variant] = json.loads(saved.read_text())
    table = synergy_table(scores)
    (run / "synergy.md").write_text(table + "\n")
    return table
