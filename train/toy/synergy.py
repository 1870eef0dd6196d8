"""The paper's synergy experiment in miniature: joint training of comprehension and creation against either alone,
from the same assembled model and stage-0 parts, with the same steps, two seeds each.

    python -m train.toy synergy --run runs/toy                 # reuses runs/toy/{assembled,data}, seeds 0 and 1
    python -m train.toy synergy --run runs/toy --scale 0.25    # every arm on a quarter of the steps

- joint: `PLANS`, the main run's recipe;
- comprehension-only: the samples of each joint batch that read images and learn text about them (Q&A, the pairs
  that are captioned); no creation blocks, no diffusion loss;
- creation-only: the samples of each joint batch that create images (the pairs that are drawn, stories,
  instructions); no Q&A, no captioning. Stories keep the CLIP read-back of their images, as generation reads every
  created image back.

Each single-skill arm keeps its skill's share of every joint batch (same sources, weights and creation share, batch
size cut to that share) for the same number of steps at the same learning rates, so it sees exactly the samples of
its skill that the joint arm sees; the joint arm sees both. Every arm is scored by `evaluate` on the full held-out
set. Results go to `DIR/synergy.json` (every metric per arm and seed) and `DIR/synergy.md` (the table).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from train.toy.data import world_data_paths
from train.toy.recipe import PLANS, STAGE_ORDER, StagePlan, train_dreamllm

ARMS = ("joint", "comprehension-only", "creation-only")
COMPREHENSION_SOURCES = ("qa",)  # + the captioned share of the pairs
CREATION_SOURCES = ("stories", "instructions")  # + the drawn share of the pairs
SEEDS = (0, 1)


def _single_skill(plan: StagePlan, sources: tuple[str, ...], pair_share: float, creation_prob: float) -> StagePlan:
    """`plan` cut to one skill: its sources, plus `pair_share` of the pairs' weight; the batch keeps that share."""
    weights = plan.source_weights()
    kept = {name: weight for name, weight in weights.items() if name in sources}
    if "pairs" in weights and pair_share > 0:
        kept["pairs"] = weights["pairs"] * pair_share
    share = sum(kept.values()) / sum(weights.values())
    data = tuple(f"{name}:{weight:g}" for name, weight in kept.items())
    return replace(plan, data=data, creation_prob=creation_prob, batch_size=max(1, round(plan.batch_size * share)))


def arm_plans(arm: str, plans: dict[str, StagePlan] = PLANS) -> dict[str, StagePlan]:
    """The stage plans of one arm (same steps and learning rates as `plans`)."""
    if arm == "joint":
        return dict(plans)
    if arm == "comprehension-only":
        return {stage: _single_skill(plan, COMPREHENSION_SOURCES, 1 - plan.creation_prob, 0.0)
                for stage, plan in plans.items()}
    if arm == "creation-only":
        return {stage: _single_skill(plan, CREATION_SOURCES, plan.creation_prob, 1.0) for stage, plan in plans.items()}
    raise ValueError(f"unknown synergy arm {arm!r}: expected one of {ARMS}")


TABLE_ROWS = (
    ("text_to_image", ("color", "shape", "position", "all")),
    ("understanding", ("color", "shape", "position", "all")),
    ("draw_instructions", ("one_image", "color", "shape", "position")),
    ("caption_requests", ("one_image", "color", "shape", "position")),
    ("interleaved", ("at_sentence_and_matching", "follows_instruction")),
)


def synergy_table(results: dict[str, dict[str, dict]]) -> str:
    """Markdown table from `synergy.json`'s `results` (arm -> seed -> `ToyScores.as_dict()`): one row per metric, one
    column per arm and seed, then each arm's mean over its seeds."""
    arms = [arm for arm in ARMS if arm in results]
    columns = [(arm, seed) for arm in arms for seed in sorted(results[arm], key=int)]
    header = [f"{arm} s{seed}" for arm, seed in columns] + [f"{arm} mean" for arm in arms]
    lines = ["| metric | " + " | ".join(header) + " |", "|---|" + "---:|" * len(header)]
    for area, keys in TABLE_ROWS:
        for key in keys:
            values = [results[arm][seed].get(area, {}).get(key) for arm, seed in columns]
            if all(value is None for value in values):
                continue
            means = []
            for arm in arms:
                seen = [value for (of_arm, _), value in zip(columns, values) if of_arm == arm and value is not None]
                means.append(sum(seen) / len(seen) if seen else None)
            cells = ["-" if value is None else f"{value:.1%}" for value in values + means]
            lines.append(f"| {area.replace('_', '-')} {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _main_run(run: Path) -> dict:
    path = run / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run_synergy(
    run: Path, seeds: tuple[int, ...] = SEEDS, scale: float = 1.0, arms: tuple[str, ...] = ARMS, quick: bool = False
) -> str:
    """Train and evaluate the missing arms next to a main run's folders; write `synergy.json` / `synergy.md` in `run`
    and return the table. An arm already trained (or the main run itself, for joint at its seed and scale) is reused.
    `quick` scores on `evaluate`'s quick set (smoke runs; the main run's own scores are reused only at full size)."""
    from train.toy.evaluate import evaluate

    assembled, files = run / "assembled", world_data_paths(run / "data")  # the main run's, reused as they are
    missing = [str(path) for path in (assembled, *files.values()) if not path.exists()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} missing: run `python -m train.toy --output {run}` first")
    main_run = _main_run(run)
    results: dict[str, dict[str, dict]] = {}
    for seed in seeds:
        for arm in arms:
            reuse_main = arm == "joint" and (
                (main_run.get("seed"), main_run.get("scale"), main_run.get("quick_evaluation")) == (seed, scale, quick)
            )
            folder = run if reuse_main else run / "synergy" / f"scale-{scale:g}" / f"{arm}-seed{seed}"
            final, saved = folder / STAGE_ORDER[-1], folder / "scores.json"
            if not final.exists():
                print(f"[toy] synergy: training {arm}, seed {seed}, scale {scale:g}", flush=True)
                _, losses, seconds = train_dreamllm(assembled, folder, files, scale, seed, arm_plans(arm))
                (folder / "losses.json").write_text(json.dumps({"losses": losses, "seconds": seconds}, indent=1))
            if not saved.exists():
                print(f"[toy] synergy: evaluating {arm}, seed {seed}", flush=True)
                saved.write_text(json.dumps(evaluate(final, quick=quick).as_dict(), indent=1))
            results.setdefault(arm, {})[str(seed)] = json.loads(saved.read_text())
    plans = {arm: {stage: {"steps": max(2, round(plan.steps * scale)), "batch_size": plan.batch_size,
                           "data": list(plan.data), "creation_prob": plan.creation_prob}
                   for stage, plan in arm_plans(arm).items()} for arm in arms}
    table = synergy_table(results)
    (run / "synergy.json").write_text(json.dumps({"scale": scale, "seeds": list(seeds), "quick": quick, "plans": plans,
                                                  "results": results}, indent=1))
    (run / "synergy.md").write_text(table + "\n")
    return table
