"""The binding diagnostic (train.probes.binding): its token layouts and its training loop."""

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from train.probes.binding import TASKS, BindingModel, accuracy, lookup_set, task_tokens, train_binding
from train.toy.stage0_clip_patches import patch_features
from train.toy.stage0_common import build_lm_tokenizer
from train.toy.world import CHAT_TEXT, POSITION_PHRASES, words


def tiny_clip() -> CLIPVisionModel:
    torch.manual_seed(0)
    config = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                              image_size=64, patch_size=8)
    return CLIPVisionModel(config).eval()


@pytest.mark.parametrize("task", TASKS)
def test_one_word_samples_label_the_asked_shapes_colour_once(task):
    tokenizer = build_lm_tokenizer()
    rng = np.random.default_rng(0)
    for scene, index in lookup_set(rng, 40):
        asked = scene.shapes[index]
        before, after, labels = task_tokens(task, scene, index, rng, tokenizer, sentence=False)
        assert len(after) == len(labels)
        scored = [(i, label) for i, label in enumerate(labels) if label != -100]
        first, label = scored[0]
        assert tokenizer.convert_ids_to_tokens(label) == asked.color
        key = tokenizer.convert_ids_to_tokens(after[: first + 1])
        # The asked shape is named before the colour is due, by its kind or by its place.
        assert asked.shape in key or words(POSITION_PHRASES[asked.position])[-1] in key
        if task.startswith("chat"):
            prefix = words(CHAT_TEXT.rsplit(" USER:", 1)[0])
            assert tokenizer.convert_ids_to_tokens(before) == ["<s>", *prefix, "user", ":"]
            assert key[-2:] == ["assistant", ":"]
        else:
            assert before == [] and (first == 0) == (task == "one_hop")


@pytest.mark.parametrize("task", ["two_hop_echo", "chat_echo"])
def test_sentence_samples_repeat_the_subject_before_the_colour(task):
    tokenizer = build_lm_tokenizer()
    rng = np.random.default_rng(1)
    for scene, index in lookup_set(rng, 40):
        _, after, labels = task_tokens(task, scene, index, rng, tokenizer, sentence=True)
        reply = tokenizer.convert_ids_to_tokens([label for label in labels if label != -100])
        subject = reply[: reply.index("is")]
        assert subject[0] == "the" and subject[-1] in (scene.shapes[index].shape, scene.shapes[index].position)
        assert reply[len(subject) + 1] == scene.shapes[index].color


def test_accuracy_reads_the_first_label_of_each_row():
    tokenizer = build_lm_tokenizer()
    model = BindingModel(tokenizer, feature_size=16)
    before = torch.zeros(2, 0, dtype=torch.long)
    after = torch.tensor([[5, 6, 7], [5, 6, 7]])
    features = torch.randn(2, 4, 16)
    mask_b, mask_a = torch.zeros(2, 0, dtype=torch.long), torch.ones(2, 3, dtype=torch.long)
    predicted = model(before, after, features, mask_b, mask_a).argmax(-1)
    labels = torch.full((2, 3), -100)
    labels[0, 1] = predicted[0, 1]  # right
    labels[1, 0] = (predicted[1, 0] + 1) % model.lm.config.vocab_size  # wrong
    labels[1, 2] = predicted[1, 2]  # a later label is not scored
    assert accuracy(model, (before, after, labels, features, mask_b, mask_a)) == 0.5


def test_train_binding_reports_held_out_accuracy_and_rejects_unknown_tasks():
    clip = tiny_clip()
    scenes = [scene for scene, _ in lookup_set(np.random.default_rng(2), 3)]
    assert patch_features(clip, scenes).shape == (3, 64, 16)
    curve = train_binding(clip, "chat_echo", steps=4, batch=4, num_train=16, num_test=8, eval_every=2)
    assert [step for step, _ in curve] == [2, 4]
    assert all(0.0 <= value <= 1.0 and value * 8 == round(value * 8) for _, value in curve)
    with pytest.raises(ValueError, match="unknown binding task"):
        train_binding(clip, "three_hop", steps=1)
