"""COCO FID protocol pieces: seeded manifest, FID preprocessing, best-of-N selection against each prompt, and the
torchmetrics FID / CLIPScore with small local feature extractors."""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from eval.coco_fid import (
    build_manifest, candidate_path, clip_score, fid_preprocess, frechet_distance, select, write_reference,
)


def fake_annotations(path, num_images=20):
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in range(num_images)]
    annotations = [{"image_id": i, "caption": f"caption {c} of image {i}"} for i in range(num_images) for c in range(5)]
    path.write_text(json.dumps({"images": images, "annotations": annotations}))


def test_manifest_is_seeded_one_caption_per_image(tmp_path):
    fake_annotations(tmp_path / "captions.json")
    first = build_manifest(tmp_path / "captions.json", num_prompts=10, seed=42)
    assert first == build_manifest(tmp_path / "captions.json", num_prompts=10, seed=42)
    assert first != build_manifest(tmp_path / "captions.json", num_prompts=10, seed=43)
    assert len({row["image_id"] for row in first}) == 10
    assert all(row["caption"].endswith(f"of image {row['image_id']}") for row in first)


def test_fid_preprocess_is_bilinear_short_side_then_center_crop():
    image = Image.new("RGB", (512, 384), (255, 0, 0))
    image.paste((0, 0, 255), (0, 0, 48, 384))  # a blue band on the left that the crop removes
    out = fid_preprocess(image)
    assert out.size == (256, 256)
    assert np.asarray(out)[:, :, 2].max() == 0


def save_tiny_clip(folder):
    """A random CLIP small enough for CPU tests, saved like a Hub checkpoint; returns its processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from train.tiny_random import build_tiny_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=320),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8,
    )
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    CLIPModel(config).save_pretrained(folder)
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer)
    processor.save_pretrained(folder)
    return processor


def test_select_ranks_candidates_against_their_own_prompt(tmp_path):
    from transformers import CLIPModel

    clip = tmp_path / "clip"
    processor = save_tiny_clip(clip)

    manifest = [{"image_id": 7, "caption": "a red square"}, {"image_id": 9, "caption": "a blue circle"}]
    samples = tmp_path / "samples"
    samples.mkdir()
    rng = np.random.default_rng(0)
    for row in manifest:
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(candidate_path(samples, row["image_id"], k))
    chosen = select(samples, manifest, str(clip), tmp_path / "selected", candidates=3)

    model = CLIPModel.from_pretrained(clip).eval()
    for row, best in zip(manifest, chosen):
        images = [Image.open(candidate_path(samples, row["image_id"], k)) for k in range(3)]
        with torch.no_grad():
            logits = model(**processor(text=[row["caption"]], images=images, return_tensors="pt", padding=True)).logits_per_image
        assert best == int(logits[:, 0].argmax())
        assert Image.open(tmp_path / "selected" / f"{row['image_id']:012d}.png").size == (256, 256)


class SmallFeatures(torch.nn.Module):
    """A stand-in for Inception pool3 (whose weights need the network): uint8 images to 16 features."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8)

    def forward(self, images):
        return self.conv(images.float() / 255).mean(dim=(2, 3)).double()


def write_images(folder, count, rng, low, high):
    folder.mkdir(parents=True)
    for index in range(count):
        pixels = rng.integers(low, high, (300, 280, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:012d}.png")


def test_fid_is_torchmetrics_frechet_distance_of_the_given_features(tmp_path):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "real", 40, rng, 0, 256)
    write_images(tmp_path / "fake", 40, rng, 40, 200)
    extractor = SmallFeatures()

    fid = frechet_distance(tmp_path / "fake", tmp_path / "real", feature=extractor, batch_size=16)

    def stats(folder):
        images = [np.asarray(fid_preprocess(Image.open(path))) for path in sorted(folder.iterdir())]
        with torch.no_grad():
            features = extractor(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)).numpy()
        return features.mean(0), np.cov(features, rowvar=False)

    (mu1, sigma1), (mu2, sigma2) = stats(tmp_path / "real"), stats(tmp_path / "fake")
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(sigma1 + sigma2 - 2 * scipy.linalg.sqrtm(sigma1 @ sigma2).real)
    assert fid == pytest.approx(expected, rel=1e-3) and fid > 1e-3
    assert frechet_distance(tmp_path / "real", tmp_path / "real", feature=extractor) == pytest.approx(0, abs=1e-4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .png/.jpg images"):
        frechet_distance(tmp_path / "fake", tmp_path / "empty", feature=extractor)


def test_clip_score_is_torchmetrics_clipscore_against_each_caption(tmp_path):
    from transformers import CLIPModel

    clip = tmp_path / "clip"
    processor = save_tiny_clip(clip)
    manifest = [{"image_id": 3, "caption": "a red square"}, {"image_id": 5, "caption": "a blue circle"},
                {"image_id": 8, "caption": "two cats"}]
    rng = np.random.default_rng(1)
    (tmp_path / "selected").mkdir()
    for row in manifest:
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
            tmp_path / "selected" / f"{row['image_id']:012d}.png")

    score = clip_score(tmp_path / "selected", manifest, str(clip), batch_size=2)

    model = CLIPModel.from_pretrained(clip).eval()
    images = [Image.open(tmp_path / "selected" / f"{row['image_id']:012d}.png") for row in manifest]
    with torch.no_grad():
        inputs = processor(text=[row["caption"] for row in manifest], images=images, return_tensors="pt", padding=True)
        image_features = torch.nn.functional.normalize(model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, dim=-1)
        text_features = torch.nn.functional.normalize(
            model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output,
            dim=-1)
    expected = (100 * (image_features * text_features).sum(-1)).clamp(min=0).mean()
    assert score == pytest.approx(float(expected), abs=0.05)


def test_reference_images_are_the_manifests_crops_and_missing_ones_are_named(tmp_path):
    rng = np.random.default_rng(2)
    (tmp_path / "val2014").mkdir()
    manifest = [{"image_id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "caption": "x"} for i in (1, 2)]
    for row in manifest:
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "val2014" / row["file_name"])
    assert write_reference(tmp_path / "val2014", manifest, tmp_path / "ref") == 2
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == ["000000000001.png", "000000000002.png"]
    assert Image.open(tmp_path / "ref" / "000000000001.png").size == (256, 256)
    with pytest.raises(FileNotFoundError, match="COCO_val2014_000000000009.jpg"):
        write_reference(tmp_path / "val2014", [{"image_id": 9, "file_name": "COCO_val2014_000000000009.jpg"}], tmp_path / "r2")
