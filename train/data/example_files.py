"""Write small data sources in every supported format (for smoke runs, tests and benchmarks).

    paths = write_example_sources("/tmp/dreamllm-data")
    # {"pairs": .../pairs, "webdataset": .../shards, "mmc4": .../mmc4/docs.jsonl, "llava": .../llava/chat.json,
    #  "instructions": .../instruct/instructions.jsonl}
    python -m train --stage sft --data /tmp/dreamllm-data/pairs --data /tmp/dreamllm-data/mmc4/docs.jsonl ...

Pictures are coloured shapes on black with captions that describe them, so the formats carry real signal.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def shape_image(color: str, shape: str, size: int = 48) -> Image.Image:
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLORS[color])
    return image


def shape_items(count: int) -> list[tuple[str, Image.Image]]:
    names = [(color, shape) for shape in SHAPES for color in COLORS]
    return [(f"a {c} {s}", shape_image(c, s)) for c, s in (names[i % len(names)] for i in range(count))]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_pair_folder(folder: Path, count: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (caption, image) in enumerate(shape_items(count)):
        image.save(folder / f"{index:05d}.png")
        (folder / f"{index:05d}.txt").write_text(caption)
    return folder


def write_webdataset(folder: Path, count: int = 4, shards: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    items = shape_items(count)
    for shard in range(shards):
        with tarfile.open(folder / f"shard-{shard:05d}.tar", "w") as archive:
            for index in range(shard, count, shards):
                caption, image = items[index]
                members = {"jpg" if index % 2 else "png": _png(image), "json" if index % 2 else "txt": (
                    json.dumps({"caption": caption}) if index % 2 else caption).encode()}
                for extension, data in members.items():
                    info = tarfile.TarInfo(f"{index:06d}.{extension}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    return folder


def write_mmc4(folder: Path, count: int = 3) -> Path:
    """`docs.jsonl` (MMC4 fields) + `images/`; the third image of each document is below the similarity threshold."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for doc in range(count):
        items = shape_items(doc + 3)[doc:]
        infos, sentences = [], []
        for index, (caption, image) in enumerate(items[:3]):
            name = f"doc{doc}_{index}.png"
            image.save(images / name)
            sentences.append(f"Here is {caption}.")
            infos.append({"image_name": name, "matched_text_index": index, "matched_sim": 0.3 if index < 2 else 0.1})
        sentences.append("That is all.")
        lines.append(json.dumps({"text_list": sentences, "image_info": infos, "url": f"https://example.com/{doc}"}))
    path = folder / "docs.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_llava(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (caption, image) in enumerate(shape_items(count)):
        image.save(folder / f"{index}.png")
        records.append({
            "id": str(index),
            "image": f"{index}.png",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is in the picture?"},
                {"from": "gpt", "value": f"It is {caption}."},
            ],
        })
    path = folder / "chat.json"
    path.write_text(json.dumps(records))
    return path


def write_instructions(folder: Path) -> Path:
    """Text-to-image instructions and an instruction with an interleaved answer, one per line."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (caption, image) in enumerate(shape_items(2)):
        image.save(images / f"t2i_{index}.png")
        lines.append({"instruction": f"Draw {caption}.", "image": f"t2i_{index}.png"})
    lines.append({
        "instruction": "Show two shapes, one after the other.",
        "text_list": ["First a red circle.", "Then a green circle."],
        "image_info": [{"image_name": "t2i_0.png", "matched_text_index": 0, "matched_sim": 0.4},
                       {"image_name": "t2i_1.png", "matched_text_index": 1, "matched_sim": 0.4}],
    })
    path = folder / "instructions.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def write_example_sources(root: str | Path) -> dict[str, Path]:
    root = Path(root)
    return {
        "pairs": write_pair_folder(root / "pairs"),
        "webdataset": write_webdataset(root / "shards"),
        "mmc4": write_mmc4(root / "mmc4"),
        "llava": write_llava(root / "llava"),
        "instructions": write_instructions(root / "instruct"),
    }


__all__ = ["write_example_sources", "write_pair_folder", "write_webdataset", "write_mmc4", "write_llava",
           "write_instructions", "shape_image"]
