"""Small synthetic copies of the real datasets, laid out exactly as the tools that prepare them write them.

    root = write_recipe_data(tmp_path)   # every path the DreamLLM-7B recipes name, under one data_root

- `write_img2dataset_shards`: img2dataset's `--output_format webdataset` output: `00000.tar` with `KEY.jpg`,
  `KEY.txt`, `KEY.json` members (KEY = 5-digit shard number + the index within the shard, padded to
  ceil(log10(number_sample_per_shard)) digits; members in webdataset's TarWriter order, mode 0o444, user
  "bigdata"), beside `00000.parquet` (every url, failed ones too) and `00000_stats.json`. Failed downloads are
  absent from the tar. The `.json` holds img2dataset's metadata: url, caption, key, status,
  error_message, width, height, original_width, original_height, exif, sha256.
- `write_mmc4_core`: MMC4's `docs_no_face_shard_N_v3.jsonl` lines (url, text_list, image_info with image_name,
  raw_url, matched_text_index, matched_sim; similarity_matrix, could_have_url_duplicate) and the downloaded images
  under `images/`.
- `write_llava_instruct`: LLaVA-1.5's `llava_v1_5_mix665k.json` (id, image "coco/train2017/....jpg", conversations
  of from/value; text-only ShareGPT items have no image) with the COCO images in `coco/train2017/`.
- `write_llava_pretrain`: LLaVA-Pretrain's `blip_laion_cc_sbu_558k.json` (image "00000/000000012.jpg", `<image>`
  after the instruction) with `images/00000/...` as its images.zip unpacks.
- `write_instruct_mmc4`: instruction + interleaved answer documents (instruction, text_list, image_info).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from train.data.example_files import shape_items


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # as webdataset's TarWriter: read-only members owned by "bigdata"
    info.size, info.mode, info.uname, info.gname, info.mtime = len(data), 0o444, "bigdata", "bigdata", 1_700_000_000
    archive.addfile(info, io.BytesIO(data))


def write_img2dataset_shards(
    folder: Path, count: int = 6, per_shard: int = 4, failed: tuple[int, ...] = (1,), caption_file: bool = True,
    size: int = 48,
) -> Path:
    """img2dataset's webdataset output for `count` urls of `size` px pictures (the `failed` ones did not
    download)."""
    folder.mkdir(parents=True, exist_ok=True)
    items = [(caption, image.resize((size, size))) for caption, image in shape_items(count)]
    sample_digits = math.ceil(math.log10(per_shard))
    for shard in range(-(-count // per_shard)):
        rows = []
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as archive:
            for index in range(shard * per_shard, min(count, (shard + 1) * per_shard)):
                caption, image = items[index]
                key = f"{shard:05d}{index - shard * per_shard:0{sample_digits}d}"  # img2dataset's compute_key
                url = f"https://images.example.com/{index}.jpg"
                meta = {"url": url, "caption": caption, "key": key, "status": "success", "error_message": None,
                        "width": image.width, "height": image.height, "original_width": image.width,
                        "original_height": image.height, "exif": "{}", "sha256": None}
                if index in failed:
                    meta.update(status="failed_to_download", error_message="HTTP Error 404: Not Found", width=None,
                                height=None, original_width=None, original_height=None, exif=None)
                    rows.append(meta)
                    continue
                data = _jpeg(image)
                meta["sha256"] = hashlib.sha256(data).hexdigest()
                rows.append(meta)
                sample = {"jpg": data, "json": json.dumps(meta, indent=4).encode()}
                if caption_file:
                    sample["txt"] = caption.encode()
                for extension in sorted(sample):  # TarWriter writes a sample's fields in sorted order
                    _add(archive, f"{key}.{extension}", sample[extension])
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{shard:05d}.parquet")
        successes = sum(row["status"] == "success" for row in rows)
        stats = {"count": len(rows), "successes": successes, "failed_to_download": len(rows) - successes,
                 "failed_to_resize": 0, "status_dict": {"success": successes}}
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=4))
    return folder


def write_mmc4_core(folder: Path, count: int = 2) -> Path:
    """One MMC4-core shard (`docs_no_face_shard_0_v3.jsonl`) and its images; each document's last image has a
    CLIP similarity below 0.25."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    for doc in range(count):
        items = shape_items(doc + 3)[doc:]
        sentences = [f"Sentence {n} of document {doc} about {caption}." for n, (caption, _) in enumerate(items)]
        sentences.append("The end.")
        infos = []
        for index, (caption, image) in enumerate(items):
            url = f"https://example.org/{doc}/{index}.jpg"
            name = hashlib.sha256(url.encode()).hexdigest()[:12] + ".jpg"
            image.save(images / name, format="JPEG", quality=95)
            infos.append({"image_name": name, "raw_url": url, "matched_text_index": index,
                          "matched_sim": 0.31 if index < len(items) - 1 else 0.21})
        similarity = [[0.3 if i == j else 0.1 for j in range(len(sentences))] for i in range(len(items))]
        lines.append({"url": f"https://example.org/{doc}", "text_list": sentences, "image_info": infos,
                      "similarity_matrix": similarity, "could_have_url_duplicate": 0})
    path = folder / "docs_no_face_shard_0_v3.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def write_llava_instruct(folder: Path, count: int = 3) -> Path:
    """`llava_v1_5_mix665k.json` with COCO images under `coco/train2017/` and one text-only conversation."""
    coco = folder / "coco" / "train2017"
    coco.mkdir(parents=True, exist_ok=True)
    records = []
    for index, (caption, image) in enumerate(shape_items(count)):
        image_id = f"{33471 + index:012d}"
        image.save(coco / f"{image_id}.jpg", format="JPEG", quality=95)
        records.append({"id": image_id, "image": f"coco/train2017/{image_id}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is shown in the image?"},
            {"from": "gpt", "value": f"The image shows {caption}."},
            {"from": "human", "value": "Is it on a black background?"},
            {"from": "gpt", "value": "Yes, the background is black."},
        ]})
    records.append({"id": "i6IyJda_0", "model": "", "conversations": [
        {"from": "human", "value": "Tell me a short fact about circles."},
        {"from": "gpt", "value": "A circle has no corners."},
    ]})
    path = folder / "llava_v1_5_mix665k.json"
    path.write_text(json.dumps(records, indent=2))
    return path


def write_llava_pretrain(folder: Path, count: int = 3, name: str = "blip_laion_cc_sbu_558k.json") -> Path:
    """LLaVA-Pretrain's conversation json and `images/00000/...` (as its images.zip unpacks)."""
    (folder / "images" / "00000").mkdir(parents=True, exist_ok=True)
    records = []
    for index, (caption, image) in enumerate(shape_items(count)):
        image_id = f"{12 + index:09d}"
        image.save(folder / "images" / "00000" / f"{image_id}.jpg", format="JPEG", quality=95)
        records.append({"id": image_id, "image": f"00000/{image_id}.jpg", "conversations": [
            {"from": "human", "value": "Render a clear and concise summary of the photo.\n<image>"},
            {"from": "gpt", "value": caption},
        ]})
    path = folder / name
    path.write_text(json.dumps(records))
    return path


def write_instruct_mmc4(folder: Path, count: int = 2) -> Path:
    """Instruction + interleaved answer documents (`instruction`, `text_list`, `image_info`) and their images."""
    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    records = []
    for doc in range(count):
        items = shape_items(doc + 2)[doc:]
        infos = []
        for index, (_, image) in enumerate(items):
            image.save(images / f"{doc}_{index}.jpg", format="JPEG", quality=95)
            infos.append({"image_name": f"{doc}_{index}.jpg", "matched_text_index": index, "matched_sim": 0.3})
        records.append({"instruction": "Write a short illustrated note about two shapes.",
                        "text_list": [f"Here is {caption}." for caption, _ in items], "image_info": infos})
    path = folder / "instruct_mmc4.json"
    path.write_text(json.dumps(records))
    return path


def write_recipe_data(root: Path) -> Path:
    """Every dataset path the DreamLLM-7B recipes name, relative to one `data_root`, in its tool's layout."""
    for name in ("laion400m-20m", "laion-coco", "blip-laion"):
        write_img2dataset_shards(root / name, size=160)  # over the SFT recipe's pair_min_size (128)
    write_llava_pretrain(root / "llava-pretrain")
    write_llava_pretrain(root / "gqa", name="gqa_sft_train_short_filtered.json")
    write_mmc4_core(root / "mmc4-core")
    write_llava_instruct(root / "llava-v1.5")
    write_instruct_mmc4(root / "instruct-mmc4")
    return root


__all__ = [
    "write_img2dataset_shards",
    "write_instruct_mmc4",
    "write_llava_instruct",
    "write_llava_pretrain",
    "write_mmc4_core",
    "write_recipe_data",
]
