"""MS-COCO zero-shot FID for DreamLLM, with the official best-of-N CLIP selection done right.

The official protocol (30k val2014 images, one random caption each, 8 samples per prompt, best by CLIP ViT-L/14,
bilinear resize 256 + center crop 256, pytorch-fid against val2014 statistics) scores candidates that came from
different prompts, because its caption dump and sampling runs shuffle differently. Here one fixed manifest drives
every step: each prompt gets its N candidates, and they are ranked against that prompt.

    python -m eval.coco_fid manifest --captions annotations/captions_val2014.json --output coco30k.jsonl
    python -m eval.coco_fid sample --model DIR --manifest coco30k.jsonl --output samples/ --candidates 8 \
        --steps 150 --guidance 2.0 --scheduler ddpm          # the paper's settings
    python -m eval.coco_fid select --samples samples/ --manifest coco30k.jsonl --clip openai/clip-vit-large-patch14 \
        --output selected/
    python -m eval.coco_fid reference --images val2014/ --manifest coco30k.jsonl --output reference256/
    python -m eval.coco_fid fid --generated selected/ --reference reference256/     # torchmetrics FID, Inception pool3
    python -m eval.coco_fid clipscore --images selected/ --manifest coco30k.jsonl --clip openai/clip-vit-large-patch14

Report the number of candidates with the FID (`--candidates 1` gives the single-sample number, 2-3 points worse).
FID and CLIPScore are torchmetrics' `FrechetInceptionDistance` and `CLIPScore`; the FID's default Inception comes
from torch-fidelity (docs/evaluation.md), and `frechet_distance(..., feature=module)` takes any feature extractor.
"""

import argparse
import json
import random
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image

FID_RESOLUTION = 256


def build_manifest(captions_json: str | Path, num_prompts: int = 30_000, seed: int = 42) -> list[dict]:
    """A seeded draw of `num_prompts` val2014 images with one of their captions each."""
    data = json.loads(Path(captions_json).read_text())
    files = {image["id"]: image["file_name"] for image in data["images"]}
    captions: dict[int, list[str]] = {}
    for annotation in data["annotations"]:
        captions.setdefault(annotation["image_id"], []).append(annotation["caption"].strip())
    rng = random.Random(seed)
    image_ids = sorted(captions)
    if num_prompts > len(image_ids):
        raise ValueError(f"asked for {num_prompts} prompts but the annotations hold {len(image_ids)} images")
    chosen = rng.sample(image_ids, num_prompts)
    return [{"image_id": i, "file_name": files[i], "caption": rng.choice(captions[i])} for i in chosen]


def read_manifest(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def fid_preprocess(image: Image.Image) -> Image.Image:
    """Bilinear resize of the short side to 256, then a center crop: the official pre-Inception transform."""
    width, height = image.size
    scale = FID_RESOLUTION / min(width, height)
    image = image.convert("RGB").resize((round(width * scale), round(height * scale)), Image.BILINEAR)
    left, top = (image.width - FID_RESOLUTION) // 2, (image.height - FID_RESOLUTION) // 2
    return image.crop((left, top, left + FID_RESOLUTION, top + FID_RESOLUTION))


def candidate_path(samples: Path, image_id: int, index: int) -> Path:
    return samples / f"{image_id:012d}_{index}.png"


def sample(pipe, manifest: list[dict], output: Path, candidates: int = 8, seed: int = 42, batch_size: int = 8, **call_kwargs):
    """Generate `candidates` images per prompt; candidate k of prompt p is seeded by (seed, k, p), so runs can be
    split across machines and resumed (existing files are kept)."""
    output.mkdir(parents=True, exist_ok=True)
    jobs = [(row, k) for row in manifest for k in range(candidates) if not candidate_path(output, row["image_id"], k).exists()]
    for start in range(0, len(jobs), batch_size):
        batch = jobs[start : start + batch_size]
        generators = [torch.Generator().manual_seed(seed * 1_000_003 + k * 100_003 + row["image_id"]) for row, k in batch]
        images = pipe([row["caption"] for row, _ in batch], generator=generators, **call_kwargs).images
        for (row, k), image in zip(batch, images):
            image.save(candidate_path(output, row["image_id"], k))


@torch.no_grad()
def select(samples: Path, manifest: list[dict], clip_path: str, output: Path, candidates: int) -> list[int]:
    """Keep, for each prompt, the candidate with the highest CLIP image-text logit against *that* prompt; the kept
    images are written FID-ready (256 px). Returns the chosen candidate index per prompt."""
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(clip_path).eval(), CLIPProcessor.from_pretrained(clip_path)
    output.mkdir(parents=True, exist_ok=True)
    chosen = []
    for row in manifest:
        images = [Image.open(candidate_path(samples, row["image_id"], k)).convert("RGB") for k in range(candidates)]
        inputs = processor(text=[row["caption"]], images=images, return_tensors="pt", padding=True, truncation=True)
        best = int(model(**inputs).logits_per_image[:, 0].argmax())
        fid_preprocess(images[best]).save(output / f"{row['image_id']:012d}.png")
        chosen.append(best)
    return chosen


def write_reference(images: Path, manifest: list[dict], output: Path) -> int:
    """The real side of the FID: each manifest image from `images` (COCO val2014), through the same 256-px bilinear
    resize and center crop as the generated side. Returns how many were written (existing files are kept)."""
    output.mkdir(parents=True, exist_ok=True)
    missing = [row["file_name"] for row in manifest if not (images / row["file_name"]).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} manifest images are not in {images}, e.g. {missing[:3]}")
    written = 0
    for row in manifest:
        target = output / f"{row['image_id']:012d}.png"
        if not target.exists():
            fid_preprocess(Image.open(images / row["file_name"])).save(target)
            written += 1
    return written


def _image_batches(folder: Path, batch_size: int, names: list[str] | None = None) -> Iterator[torch.Tensor]:
    """uint8 (N, 3, 256, 256) batches of a folder's PNG/JPEG images (sorted), FID-preprocessed."""
    paths = [folder / name for name in names] if names is not None else sorted(
        path for path in folder.iterdir() if path.suffix.lower() in {".png", ".jpg", ".jpeg"}
    )
    if not paths:
        raise FileNotFoundError(f"no .png/.jpg images in {folder}")
    for start in range(0, len(paths), batch_size):
        arrays = [np.asarray(fid_preprocess(Image.open(path))) for path in paths[start : start + batch_size]]
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


@torch.no_grad()
def frechet_distance(
    generated: Path, reference: Path, feature: int | torch.nn.Module = 2048, batch_size: int = 50,
    device: str | None = None,
) -> float:
    """FID between two image folders with torchmetrics' `FrechetInceptionDistance`. `feature=2048` is the Inception
    pool3 of the paper's protocol (weights through torch-fidelity); an `nn.Module` mapping uint8 (N, 3, H, W) images
    to (N, D) features replaces it.

    Example:

    ```python
    >>> frechet_distance(Path("selected"), Path("reference256"))
    ```
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    metric = FrechetInceptionDistance(feature=feature, normalize=False).to(device)
    for real, folder in ((True, reference), (False, generated)):
        for batch in _image_batches(Path(folder), batch_size):
            metric.update(batch.to(device), real=real)
    return float(metric.compute())


def _clip_for_torchmetrics(clip_path: str):
    """(model, processor) for torchmetrics' CLIPScore, which normalises what `get_image_features` /
    `get_text_features` return: transformers 5 wraps the projected embeddings in an output object, so this CLIPModel
    hands back the embeddings themselves."""
    from transformers import CLIPModel, CLIPProcessor

    class EmbeddingCLIPModel(CLIPModel):
        def get_image_features(self, *args, **kwargs) -> torch.Tensor:
            return super().get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs) -> torch.Tensor:
            return super().get_text_features(*args, **kwargs).pooler_output

    return EmbeddingCLIPModel.from_pretrained(clip_path).eval(), CLIPProcessor.from_pretrained(clip_path)


@torch.no_grad()
def clip_score(
    images: Path, manifest: list[dict], clip_path: str, batch_size: int = 50, device: str | None = None
) -> float:
    """torchmetrics' `CLIPScore` (mean of 100 x max(cos, 0)) of each kept image (`{image_id:012d}.png`) against its
    manifest caption, with the CLIP at `clip_path` (a Hub id or a local folder)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    metric = CLIPScore(model_name_or_path=lambda: _clip_for_torchmetrics(clip_path)).to(device)
    names = [f"{row['image_id']:012d}.png" for row in manifest]
    batches = _image_batches(Path(images), batch_size, names)
    for start, batch in zip(range(0, len(manifest), batch_size), batches):
        metric.update(list(batch.to(device)), [row["caption"] for row in manifest[start : start + batch_size]])
    return float(metric.compute())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("manifest")
    make.add_argument("--captions", required=True)
    make.add_argument("--output", required=True)
    make.add_argument("--num-prompts", type=int, default=30_000)
    make.add_argument("--seed", type=int, default=42)
    run = commands.add_parser("sample")
    run.add_argument("--model", required=True)
    run.add_argument("--manifest", required=True)
    run.add_argument("--output", required=True)
    run.add_argument("--candidates", type=int, default=8)
    run.add_argument("--steps", type=int, default=150)
    run.add_argument("--guidance", type=float, default=2.0)
    run.add_argument("--scheduler", choices=["default", "ddpm"], default="ddpm")
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--seed", type=int, default=42)
    pick = commands.add_parser("select")
    pick.add_argument("--samples", required=True)
    pick.add_argument("--manifest", required=True)
    pick.add_argument("--clip", default="openai/clip-vit-large-patch14")
    pick.add_argument("--output", required=True)
    pick.add_argument("--candidates", type=int, default=8)
    real = commands.add_parser("reference")
    real.add_argument("--images", required=True, help="the COCO val2014 image folder")
    real.add_argument("--manifest", required=True)
    real.add_argument("--output", required=True)
    fid = commands.add_parser("fid")
    fid.add_argument("--generated", required=True)
    fid.add_argument("--reference", required=True)
    fid.add_argument("--batch-size", type=int, default=50)
    score = commands.add_parser("clipscore")
    score.add_argument("--images", required=True)
    score.add_argument("--manifest", required=True)
    score.add_argument("--clip", default="openai/clip-vit-large-patch14")
    score.add_argument("--batch-size", type=int, default=50)
    args = parser.parse_args(argv)

    if args.command == "manifest":
        rows = build_manifest(args.captions, args.num_prompts, args.seed)
        Path(args.output).write_text("".join(json.dumps(row) + "\n" for row in rows))
        print(f"{len(rows)} prompts written to {args.output}")
    elif args.command == "sample":
        from diffusers import DDPMScheduler

        from pipeline_dreamllm import DreamLLMPipeline

        pipe = DreamLLMPipeline.from_pretrained(args.model)
        if args.scheduler == "ddpm":  # the scheduler the paper sampled with
            pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        pipe.to("cuda" if torch.cuda.is_available() else "cpu")
        pipe.set_progress_bar_config(disable=True)
        sample(pipe, read_manifest(args.manifest), Path(args.output), args.candidates, args.seed, args.batch_size,
               num_inference_steps=args.steps, guidance_scale=args.guidance)
    elif args.command == "select":
        chosen = select(Path(args.samples), read_manifest(args.manifest), args.clip, Path(args.output), args.candidates)
        print(f"selected {len(chosen)} images into {args.output}")
    elif args.command == "reference":
        written = write_reference(Path(args.images), read_manifest(args.manifest), Path(args.output))
        print(f"{written} reference images written to {args.output}")
    elif args.command == "fid":
        print(f"FID {frechet_distance(Path(args.generated), Path(args.reference), batch_size=args.batch_size):.3f}")
    else:
        manifest = read_manifest(args.manifest)
        score = clip_score(Path(args.images), manifest, args.clip, args.batch_size)
        print(f"CLIPScore {score:.3f} ({len(manifest)} images)")


if __name__ == "__main__":
    main()
