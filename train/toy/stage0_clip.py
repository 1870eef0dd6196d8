"""Stage 0, part 1: a small CLIP trained contrastively on (picture, caption) pairs of the shapes world, optionally
followed by a patch-level phase (`stage0_clip_patches`)."""

from __future__ import annotations

from dataclasses import replace
from itertools import product
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, PILImageResampling

from .stage0_common import (
    CLIP_MAX_LENGTH,
    build_clip_tokenizer,
    clip_input_ids,
    clip_normalize,
    progress,
    render_batch,
    scaled,
    scaled_batch,
    smooth,
    warmup_cosine,
)
from .stage0_clip_patches import FEATURE_LAYER, PatchHead, patch_features, patch_labels
from .world import (
    ATTRIBUTE_VALUES, COLORS, POSITIONS, SHAPES, Scene, Shape, as_rng, caption, place, sample_scene, shapes_apart,
)

STEPS = 1200
BATCH = 32  # small batches, many steps: what trains fastest per CPU second here
LR = 1e-3
POSITION_INIT_STD = 0.5
# The patch-level phase (`stage0_clip_patches`): DreamLLM reads patches, which contrastive training alone leaves
# unsure what shape they belong to. 3,000 steps make every patch of a shape readable (README, "patch-level CLIP").
PATCH_STEPS = 3000


def build_clip(tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    """64 px images in 8 px patches (64 patches); both towers tiny."""
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=CLIP_MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            image_size=64,
            patch_size=8,
            hidden_size=96,
            intermediate_size=384,
            num_hidden_layers=3,
            num_attention_heads=4,
        ),
        projection_dim=64,
    )
    model = CLIPModel(config)
    # World pictures are mostly black patches, identical but for their position embedding: start that embedding as
    # strong as the patch content (not CLIP's 0.02) so that where a shape sits is learnt in a few hundred steps.
    with torch.no_grad():
        model.vision_model.embeddings.position_embedding.weight.normal_(std=POSITION_INIT_STD)
    return model


def image_processor() -> CLIPImageProcessorPil:
    """64 px in, 64 px out: the resize and crop are identities on world pictures; OpenAI's mean/std."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
        resample=PILImageResampling.BICUBIC,
        image_mean=list(OPENAI_CLIP_MEAN),
        image_std=list(OPENAI_CLIP_STD),
    )


def twin(rng: np.random.Generator, scene: Scene) -> Scene:
    """A hard negative: the scene with one attribute of one shape changed, geometry kept; mostly the shape, which is
    what random in-batch negatives teach slowest."""
    options = _variants(scene)
    attribute = str(rng.choice(["shape", "color", "position"], p=[0.5, 0.25, 0.25]))

    def shuffled(scenes: list[Scene]) -> list[Scene]:
        return [scenes[i] for i in rng.permutation(len(scenes))]

    for candidate in shuffled(options[attribute]) + shuffled(options["shape"]):
        if len(candidate.shapes) == 1 or shapes_apart(*candidate.shapes):  # a moved shape may now touch the other
            return candidate
    return scene


def _contrastive_loss(logits_per_image: torch.Tensor, captions: list[str]) -> torch.Tensor:
    """Symmetric InfoNCE; pairs in the batch that share a caption are all positives (soft targets)."""
    same = np.array(captions)[:, None] == np.array(captions)[None, :]
    targets = torch.from_numpy(same / same.sum(1, keepdims=True)).float()
    return (F.cross_entropy(logits_per_image, targets) + F.cross_entropy(logits_per_image.T, targets)) / 2


def _train_phase(
    model: CLIPModel, tokenizer, rng: np.random.Generator, steps: int, batch: int, desc: str,
    patch_head: PatchHead | None = None,
) -> list[float]:
    """AdamW on the parameters that require grad; the loss is contrastive, plus the dense loss when `patch_head` is
    given. Returns the per-step losses (the dense ones in the dense phase)."""
    params = [p for p in model.parameters() if p.requires_grad]
    params += list(patch_head.parameters()) if patch_head is not None else []
    optimizer = torch.optim.AdamW(params, lr=LR, weight_decay=0.05)
    schedule = warmup_cosine(optimizer, steps, warmup=50)
    losses = []
    for _, bar in progress(steps, desc):
        scenes = [sample_scene(rng) for _ in range(batch // 2)]
        scenes += [twin(rng, scene) for scene in scenes]
        captions = [caption(s) for s in scenes]
        pixels = render_batch(scenes)
        out = model(
            input_ids=clip_input_ids(tokenizer, captions), pixel_values=clip_normalize(pixels),
            output_hidden_states=patch_head is not None,
        )
        loss = _contrastive_loss(out.logits_per_image, captions)
        if patch_head is not None:
            patches = out.vision_model_output.hidden_states[FEATURE_LAYER][:, 1:]  # CLS dropped, as DreamLLM does
            dense = patch_head.loss(patches, patch_labels(scenes))
            loss = loss + dense
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        shown = dense if patch_head is not None else loss
        losses.append(shown.item())
        bar.set_postfix(loss=f"{shown.item():.3f}", refresh=False)
    return losses


def train_clip(
    seed: int, steps_scale: float, log: dict, patch_steps: int = PATCH_STEPS
) -> tuple[CLIPModel, PreTrainedTokenizerFast]:
    """Contrastive training from scratch, then `patch_steps` of the patch-level phase (0 skips it). Loss curves go
    to log['clip_loss'] and log['clip_patch_loss']."""
    model, tokenizer = train_contrastive(seed, steps_scale, log)
    if patch_steps > 0:
        model = align_patches(model, tokenizer, seed, steps_scale, log, steps=patch_steps)
    return model, tokenizer


def train_contrastive(seed: int, steps_scale: float, log: dict) -> tuple[CLIPModel, PreTrainedTokenizerFast]:
    tokenizer = build_clip_tokenizer()
    torch.manual_seed(seed)
    model = build_clip(tokenizer).train()
    steps = scaled(STEPS, steps_scale)
    losses = _train_phase(model, tokenizer, as_rng(seed + 11), steps, scaled_batch(BATCH, steps_scale), "clip")
    log["clip_loss"] = smooth(losses, max(1, steps // 50))
    log["clip_final_loss"] = float(np.mean(losses[-20:]))
    return model.eval(), tokenizer


def align_patches(
    model: CLIPModel, tokenizer, seed: int, steps_scale: float, log: dict, steps: int = PATCH_STEPS
) -> CLIPModel:
    """The patch-level phase (`stage0_clip_patches`): vision tower only. The decoder is conditioned on the text tower,
    so that is frozen and comes out unchanged. The dense head's held-out accuracy goes to log['clip_patch_accuracy']."""
    for frozen in (model.text_model, model.text_projection):
        frozen.requires_grad_(False)
    model.logit_scale.requires_grad_(False)
    torch.manual_seed(seed + 12)
    head = PatchHead(model.config.vision_config.hidden_size)
    rng = as_rng(seed + 13)
    steps = scaled(steps, steps_scale)
    batch = scaled_batch(BATCH, steps_scale)
    losses = _train_phase(model.train(), tokenizer, rng, steps, batch, "clip patches", patch_head=head)
    log["clip_patch_loss"] = smooth(losses, max(1, steps // 50))
    held_out = [sample_scene(rng) for _ in range(256)]
    log["clip_patch_accuracy"] = head.accuracy(patch_features(model.vision_model, held_out), patch_labels(held_out))
    return model.eval().requires_grad_(True)


@torch.no_grad()
def _text_embeds(model: CLIPModel, tokenizer, captions: list[str]) -> torch.Tensor:
    return F.normalize(model.get_text_features(input_ids=clip_input_ids(tokenizer, captions)).pooler_output, dim=-1)


@torch.no_grad()
def _image_embeds(model: CLIPModel, scenes: list[Scene]) -> torch.Tensor:
    pixels = clip_normalize(render_batch(scenes))
    return F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)


def _variants(scene: Scene) -> dict[str, list[Scene]]:
    """Scenes that differ from `scene` in one attribute of one shape, by attribute (positions stay distinct)."""
    out = {"color": [], "shape": [], "position": []}
    for i, s in enumerate(scene.shapes):
        taken = [o.position for j, o in enumerate(scene.shapes) if j != i]
        for attribute, values in ATTRIBUTE_VALUES.items():
            for value in values:
                if value == getattr(s, attribute) or (attribute == "position" and value in taken):
                    continue
                changed = list(scene.shapes)
                changed[i] = replace(s, **{attribute: value})
                if len(changed) == 2 and changed[0].color == changed[1].color:
                    continue
                out[attribute].append(Scene(tuple(changed)))
    return out


def zero_shot(model: CLIPModel, tokenizer, seed: int, num_images: int = 300) -> dict[str, float]:
    """Retrieval accuracy. One shape: the top caption of all 90 single-shape captions, per attribute. Two shapes: how
    often the true caption beats every caption that changes that attribute of one shape."""
    rng = as_rng(seed)
    all_attributes = list(product(COLORS, SHAPES, POSITIONS))
    candidates = [caption(Scene((Shape(*a),))) for a in all_attributes]
    text = _text_embeds(model, tokenizer, candidates)
    scenes = [place(rng, [all_attributes[int(rng.integers(len(all_attributes)))]]) for _ in range(num_images)]
    best = (_image_embeds(model, scenes) @ text.T).argmax(-1)
    result = {}
    for k, name in enumerate(("color", "shape", "position")):
        hits = [all_attributes[int(b)][k] == s.shapes[0].attributes[k] for b, s in zip(best, scenes)]
        result[f"single_{name}"] = float(np.mean(hits))
    pairs = [sample_scene(rng, 2) for _ in range(num_images // 3)]
    images = _image_embeds(model, pairs)
    hits = {"color": [], "shape": [], "position": []}
    for image, scene in zip(images, pairs):
        true = float(_text_embeds(model, tokenizer, [caption(scene)])[0] @ image)
        for attribute, scenes_ in _variants(scene).items():
            other = _text_embeds(model, tokenizer, [caption(s) for s in scenes_]) @ image
            hits[attribute].append(bool(true > other.max()))
    result.update({f"pair_{k}": float(np.mean(v)) for k, v in hits.items()})
    return result


def save_clip(model: CLIPModel, tokenizer: PreTrainedTokenizerFast, path: Path) -> None:
    """CLIPModel + CLIPImageProcessorPil + tokenizer, each loadable on its own from `path`."""
    model.save_pretrained(path)
    image_processor().save_pretrained(path)
    tokenizer.save_pretrained(path)
