"""COCO FID protocol pieces: seeded manifest, FID preprocessing, best-of-N selection against each prompt."""

import json

import numpy as np
import torch
from PIL import Image

from eval.coco_fid import build_manifest, candidate_path, fid_preprocess, select


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


def test_select_ranks_candidates_against_their_own_prompt(tmp_path):
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPImageProcessor

    from train.tiny_random import build_tiny_tokenizer

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=320),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8,
    )
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.eos_token
    clip = tmp_path / "clip"
    CLIPModel(config).save_pretrained(clip)
    processor = CLIPProcessor(CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer)
    processor.save_pretrained(clip)

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
