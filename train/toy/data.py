"""The shapes world as real-format training files, read by `python -m train` like any other data:

- `pairs/`: `NAME.png` + `NAME.txt` captions (understanding or creation, 50/50);
- `stories.jsonl` + `images/`: MMC4-style interleaved documents (`text_list`, `image_info`);
- `qa.json`: LLaVA-style multi-turn conversations with `<image>` (understanding Q&A, every attribute per picture);
- `instructions.jsonl`: text-to-image instructions (`instruction`, `image`) and story instructions
  (`instruction`, `text_list`, `image_info`).

    from train.toy.data import write_world_data
    files = write_world_data("runs/toy/data", seed=0, num_pairs=2000, num_stories=600, num_qa=2000)
"""

import json
from pathlib import Path

import numpy as np

from train.toy.world import Scene, caption, render, sample_conversation, sample_instruction, sample_scene, sample_story


class _ImageStore:
    """Writes each rendered scene once under `images/` and returns its file name."""

    def __init__(self, root: Path):
        self.folder = root / "images"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def add(self, scene: Scene) -> str:
        name = f"{self.count:06d}.png"
        render(scene).save(self.folder / name)
        self.count += 1
        return name


def _mmc4_record(story: list, images: _ImageStore) -> dict:
    """A story (sentences and the scenes drawn at them) as an MMC4 document; each image matches its sentence."""
    text_list, image_info = [], []
    for segment in story:
        if isinstance(segment, str):
            text_list.append(segment)
        else:
            image_info.append({"image_name": images.add(segment), "matched_text_index": len(text_list) - 1, "matched_sim": 1.0})
    return {"text_list": text_list, "image_info": image_info}


def world_data_paths(root: str | Path) -> dict[str, Path]:
    """Where `write_world_data(root, ...)` puts each kind of file."""
    root = Path(root)
    names = {"pairs": "pairs", "stories": "stories.jsonl", "qa": "qa.json", "instructions": "instructions.jsonl"}
    return {kind: root / name for kind, name in names.items()}


def write_world_data(
    root: str | Path, seed: int = 0, num_pairs: int = 2000, num_stories: int = 600, num_qa: int = 2000,
    num_instructions: int = 600, qa_two_shape_share: float = 0.5, pair_two_shape_share: float = 0.5,
) -> dict[str, Path]:
    """Write every file under `root` (deterministic in `seed`); returns the paths by kind. `qa_two_shape_share` of
    the Q&A pictures show two shapes (the rest one), whose questions need colour bound to shape and place;
    `pair_two_shape_share` of the caption pairs do, whose pictures need each colour and shape drawn at its place."""
    root = Path(root)
    paths = world_data_paths(root)
    rng = np.random.default_rng(seed)
    images = _ImageStore(root)

    pairs = paths["pairs"]
    pairs.mkdir(parents=True, exist_ok=True)
    for index in range(num_pairs):
        scene = sample_scene(rng, two_shape_share=pair_two_shape_share)
        render(scene).save(pairs / f"{index:06d}.png")
        (pairs / f"{index:06d}.txt").write_text(caption(scene))

    records = [_mmc4_record(sample_story(rng), images) for _ in range(num_stories)]
    paths["stories"].write_text("".join(json.dumps(record) + "\n" for record in records))

    conversations = []
    for _ in range(num_qa):
        scene = sample_scene(rng, two_shape_share=qa_two_shape_share)
        turns = []
        for index, (question, answer) in enumerate(sample_conversation(rng, scene)):
            turns += [{"from": "human", "value": f"<image>\n{question}" if index == 0 else question},
                      {"from": "gpt", "value": answer}]
        conversations.append({"image": f"images/{images.add(scene)}", "conversations": turns})
    paths["qa"].write_text(json.dumps(conversations))

    lines = []
    for _ in range(num_instructions):
        instruction = sample_instruction(rng)
        if isinstance(instruction.target, Scene):  # one picture, the whole answer
            lines.append({"instruction": instruction.text, "image": f"images/{images.add(instruction.target)}"})
        else:
            lines.append({"instruction": instruction.text, **_mmc4_record(instruction.target, images)})
    paths["instructions"].write_text("".join(json.dumps(line) + "\n" for line in lines))  # last: marks completion
    return paths
