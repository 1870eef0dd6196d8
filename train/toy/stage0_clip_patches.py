"""Stage 0, part 1b: the dense (patch-level) objective of the small CLIP's second training phase.

DreamLLM reads CLIP's penultimate-layer *patches*, not its pooled embedding. A real ViT-L/14's patches carry what the
object under them is (the reason patch features segment zero-shot); this world's tiny CLIP, trained only on pooled
embeddings, barely does: a linear probe reads the shape kind of the object under a patch at 60% (43% chance). The
phase (`--clip-patch-steps`, 3000 by default) keeps the contrastive loss and adds a dense one: from the
features DreamLLM reads, a throwaway linear head predicts each patch's object (colour, kind, position, or
background). After 500 steps the probe reads 78%; after 3000 the head reads every held-out patch of a shape right.
The text tower is frozen, so the decoder's conditioning (trained on it in stage 0) does not depend on this phase.
With it, DreamLLM answers every held-out question right (90.7% without); its cost to drawing is measured in the
README.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from configuration_dreamllm import DreamLLMConfig

from .stage0_common import clip_normalize, render_batch
from .world import ATTRIBUTE_VALUES, ATTRIBUTES, Scene

FEATURE_LAYER = DreamLLMConfig.vision_feature_layer  # the hidden state DreamLLM reads (CLS dropped)
OWNED = 0.25  # a patch belongs to the object covering at least this share of it; uncovered patches are background
IGNORE = -100


@torch.no_grad()
def patch_features(vision_tower: torch.nn.Module, scenes: list[Scene], batch: int = 256) -> torch.Tensor:
    """(N, num_patches, hidden) patches of `FEATURE_LAYER`, CLS dropped, as DreamLLM's vision path reads them.
    `vision_tower` is a `CLIPVisionModel` or a `CLIPModel`'s `vision_model`."""
    chunks = []
    for start in range(0, len(scenes), batch):
        pixels = clip_normalize(render_batch(scenes[start : start + batch]))
        chunks.append(vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[FEATURE_LAYER][:, 1:])
    return torch.cat(chunks)


def patch_labels(scenes: list[Scene], patch_size: int = 8) -> torch.Tensor:
    """(B, num_patches, 3) class ids per patch and attribute (ATTRIBUTES order). Background is the class after the
    attribute's values; partly covered patches (under OWNED) are IGNORE."""
    singles = [Scene((shape,)) for scene in scenes for shape in scene.shapes]
    covered = (render_batch(singles).sum(1, keepdim=True) > 0).float()
    coverage = F.avg_pool2d(covered, patch_size).flatten(1)  # (num shapes, num patches)
    background = torch.tensor([len(ATTRIBUTE_VALUES[a]) for a in ATTRIBUTES])
    labels = torch.full((len(scenes), coverage.shape[1], len(ATTRIBUTES)), IGNORE, dtype=torch.long)
    start = 0
    for i, scene in enumerate(scenes):
        share, owner = coverage[start : start + len(scene.shapes)].max(0)
        start += len(scene.shapes)
        classes = torch.tensor(
            [[ATTRIBUTE_VALUES[a].index(getattr(shape, a)) for a in ATTRIBUTES] for shape in scene.shapes]
        )
        labels[i, share >= OWNED] = classes[owner[share >= OWNED]]
        labels[i, share == 0] = background
    return labels


class PatchHead(torch.nn.Module):
    """Per-patch logits for each attribute (its values + background); discarded after stage 0."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.sizes = [len(ATTRIBUTE_VALUES[a]) + 1 for a in ATTRIBUTES]
        self.proj = torch.nn.Linear(hidden_size, sum(self.sizes))

    def loss(self, patches: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.proj(patches).split(self.sizes, dim=-1)
        pairs = zip(logits, labels.unbind(-1))
        return sum(F.cross_entropy(logit.flatten(0, 1), y.flatten(), ignore_index=IGNORE) for logit, y in pairs)

    @torch.no_grad()
    def accuracy(self, patches: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        logits = self.proj(patches).split(self.sizes, dim=-1)
        out = {}
        for name, logit, y in zip(ATTRIBUTES, logits, labels.unbind(-1)):
            owned = (y != IGNORE) & (y < logit.shape[-1] - 1)  # patches of an object: background is the easy part
            out[name] = float((logit.argmax(-1)[owned] == y[owned]).float().mean())
        return out
