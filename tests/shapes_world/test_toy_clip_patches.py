"""The small CLIP's patch-level phase (train.toy.stage0_clip_patches, train.toy.stage0_clip.align_patches)."""

import numpy as np
import torch

from train.toy.stage0_clip import align_patches, train_contrastive
from train.toy.stage0_clip_patches import IGNORE, PatchHead, patch_labels
from train.toy.world import ATTRIBUTE_VALUES, ATTRIBUTES, Scene, place, render


def coverage(scene: Scene, shape_index: int) -> np.ndarray:
    """Share of each 8 px patch (row-major, as CLIP orders them) that one shape of the scene covers."""
    mask = np.asarray(render(Scene((scene.shapes[shape_index],)))).sum(-1) > 0
    return mask.reshape(8, 8, 8, 8).mean(axis=(1, 3)).reshape(-1)


def test_patch_labels_name_the_object_under_each_patch():
    rng = np.random.default_rng(0)
    pair = place(rng, [("red", "square", "left"), ("blue", "triangle", "right")])
    scenes = [pair, place(rng, [("green", "circle", "top")])]
    labels = patch_labels(scenes)
    assert labels.shape == (2, 64, 3)
    background = torch.tensor([len(ATTRIBUTE_VALUES[a]) for a in ATTRIBUTES])
    for i, scene in enumerate(scenes):
        shares = np.stack([coverage(scene, k) for k in range(len(scene.shapes))])
        for k, shape in enumerate(scene.shapes):
            expected = torch.tensor([ATTRIBUTE_VALUES[a].index(getattr(shape, a)) for a in ATTRIBUTES])
            inside = np.flatnonzero(shares[k] >= 0.25)  # shapes never touch: no patch is shared
            assert len(inside) > 0
            assert (labels[i, inside] == expected).all()
        empty = np.flatnonzero(shares.sum(0) == 0)
        assert (labels[i, empty] == background).all()
        edges = np.flatnonzero((shares.max(0) > 0) & (shares.max(0) < 0.25))
        assert (labels[i, edges] == IGNORE).all()


def test_patch_head_loss_ignores_unowned_patches_and_scores_owned_ones():
    head = PatchHead(hidden_size=8)
    patches = torch.randn(2, 64, 8)
    labels = torch.full((2, 64, 3), IGNORE)
    labels[0, 5] = torch.tensor([1, 2, 3])
    loss = head.loss(patches, labels)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert head.proj.weight.grad.abs().sum() > 0
    with torch.no_grad():  # make the head right on the one owned patch
        head.proj.weight.zero_()
        head.proj.bias.zero_()
        for offset, target in zip(np.cumsum([0] + head.sizes[:-1]), (1, 2, 3)):
            head.proj.bias[offset + target] = 1.0
    assert head.accuracy(patches, labels) == {name: 1.0 for name in ATTRIBUTES}


def test_align_patches_trains_the_vision_tower_and_leaves_the_text_tower_unchanged():
    log = {}
    model, tokenizer = train_contrastive(0, 0.01, log)
    assert not model.training
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model = align_patches(model, tokenizer, 0, 0.01, log, steps=500)
    after = model.state_dict()
    text = [k for k in before if k.startswith(("text_model.", "text_projection.")) or k == "logit_scale"]
    vision = [k for k in before if k.startswith("vision_model.encoder.")]
    assert text and vision
    assert all(torch.equal(before[k], after[k]) for k in text)
    assert sum(not torch.equal(before[k], after[k]) for k in vision) > len(vision) // 2
    assert set(log["clip_patch_accuracy"]) == set(ATTRIBUTES) and log["clip_patch_loss"]
    assert not model.training and all(p.requires_grad for p in model.parameters())
