"""Preference pairs on the shapes world for DPO: a question about a picture, the world's answer as `chosen`, a wrong
colour or shape as `rejected`, in the format TRL documents for vision-language preference data.

    rows = preference_pairs(200, seed=0)
    rows[0]["prompt"]    # [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What ..."}]}]
    rows[0]["chosen"]    # [{"role": "assistant", "content": [{"type": "text", "text": "red"}]}]
    rows[0]["rejected"]  # [{"role": "assistant", "content": [{"type": "text", "text": "blue"}]}]
    write_preferences("runs/toy/preferences", 2000)   # a saved `datasets` folder for `python -m train dpo --data`

On a two-shape picture half the rejected answers are the other shape's value ("What color is the circle?" -> the
square's colour): the binding error the model actually makes; the rest are a random other value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from train.toy.world import ATTRIBUTE_VALUES, render, sample_qa, sample_scene

PREFERENCE_KINDS = ("color", "shape")
PREFERENCE_SEED = 20_000  # apart from the training data's seeds and the held-out set's (10_000 and up)
OTHER_SHAPE_SHARE = 0.5


def _message(role: str, text: str, image: bool = False) -> list[dict]:
    content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
    return [{"role": role, "content": content}]


def preference_pairs(num_pairs: int, seed: int = PREFERENCE_SEED) -> list[dict]:
    """`num_pairs` rows with `images` (one PIL picture), `prompt`, `chosen`, `rejected`; kinds alternate colour and
    shape questions; scenes are half one-shape, half two-shape."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(num_pairs):
        scene = sample_scene(rng)
        kind = PREFERENCE_KINDS[index % len(PREFERENCE_KINDS)]
        qa = sample_qa(rng, scene, kind=kind)
        others = [getattr(shape, kind) for shape in scene.shapes if getattr(shape, kind) != qa.answer]
        if others and rng.random() < OTHER_SHAPE_SHARE:
            rejected = others[0]
        else:
            choices = [value for value in ATTRIBUTE_VALUES[kind] if value != qa.answer]
            rejected = choices[int(rng.integers(len(choices)))]
        rows.append({
            "images": [render(scene)],
            "prompt": _message("user", qa.question, image=True),
            "chosen": _message("assistant", qa.answer),
            "rejected": _message("assistant", rejected),
        })
    return rows


def write_preferences(output: str | Path, num_pairs: int, seed: int = PREFERENCE_SEED) -> Path:
    """Save `preference_pairs` as a `datasets` folder (published whole; an existing folder is refused)."""
    from datasets import Dataset

    from dreamllm_common.folders import staged_folder

    output = Path(output)
    with staged_folder(output) as staging:
        Dataset.from_list(preference_pairs(num_pairs, seed)).save_to_disk(str(staging))
    return output


__all__ = ["PREFERENCE_KINDS", "preference_pairs", "write_preferences"]
