"""Can the world's LLM learn to bind a colour to a shape? A synthetic lookup over the frozen CLIP's patches that
isolates the one skill two-shape questions need ("What color is the circle?"), without the rest of DreamLLM.

    python -m train.probes binding runs/toy/stage0/clip --steps 1000

    from train.probes.binding import TASKS, train_binding
    curve = train_binding(clip, "two_hop", steps=1000)   # [(250, 0.51), (500, 0.49), ...]: held-out accuracy

A fresh LLaMA of the world LM's size reads a two-shape picture's penultimate-layer CLIP patches (CLS dropped, through
a linear projector, as DreamLLM reads them) and a key word naming one shape by its kind or place, and is trained to
name that shape's colour. The tasks differ only in where the colour must be read:

- `one_hop`: at the key word itself: a single attention lookup, query = the key word.
- `two_hop`: two tokens after the key word (`circle ? : -> red`), as a chat answer is: the answer position must
  first fetch the key word, then look the colour up.
- `two_hop_echo`: `two_hop`, with half the samples answered in a sentence that first repeats the key
  (`circle . : -> the circle is red .`); accuracy is on the one-word form.
- `chat`: DreamLLM's real layout: the chat template's prefix, the patches, `what color is the circle ? assistant :`.
- `chat_echo`: `chat` with half the samples asking "tell what color the circle is ." -> "the circle is red .".
- `chat_key_first`: `chat` with half the samples asking "tell what color the circle is ." -> "circle red .": the
  reply's first word is the key itself, so the answer position is taught to fetch it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPVisionModel, PreTrainedTokenizerFast

from train.toy.stage0_clip_patches import patch_features
from train.toy.stage0_common import build_lm_tokenizer
from train.toy.stage0_lm import build_lm
from train.toy.world import CHAT_TEXT, POSITION_PHRASES, Scene, sample_scene, words

TASKS = ("one_hop", "two_hop", "two_hop_echo", "chat", "chat_echo", "chat_key_first")


def lookup_set(rng: np.random.Generator, size: int) -> list[tuple[Scene, int]]:
    """Two-shape scenes, each with the index of the shape a question asks about."""
    return [(sample_scene(rng, 2), int(rng.integers(2))) for _ in range(size)]


def _subject(scene: Scene, index: int, rng: np.random.Generator) -> str:
    """'the circle' (when the kinds differ, half the time) or 'the shape on the left': shape `index`, as the world's
    Q&A names it."""
    asked, other = scene.shapes[index], scene.shapes[1 - index]
    if asked.shape != other.shape and rng.random() < 0.5:
        return f"the {asked.shape}"
    return f"the shape {POSITION_PHRASES[asked.position]}"


def task_tokens(
    task: str, scene: Scene, index: int, rng: np.random.Generator, tokenizer: PreTrainedTokenizerFast, sentence: bool
) -> tuple[list[int], list[int], list[int]]:
    """(ids before the patches, ids after them, the label of each id after them: the next id, or -100) of one
    sample; a one-word sample's first label is the colour."""
    def ids(text: str) -> list[int]:
        return tokenizer.convert_tokens_to_ids(words(text))

    subject, color = _subject(scene, index, rng), scene.shapes[index].color
    if task.startswith("chat"):
        before = [tokenizer.bos_token_id, *ids(CHAT_TEXT.rsplit(" USER:", 1)[0] + " USER:")]
        question = f"Tell what color {subject} is." if sentence else f"What color is {subject}?"
        prompt = ids(f"{question} ASSISTANT:")
        if not sentence:
            reply = ids(color)
        elif task == "chat_key_first":
            reply = ids(subject)[-1:] + ids(f"{color} .")
        else:
            reply = ids(f"{subject} is {color}.")
        reply += [tokenizer.eos_token_id]
        return before, prompt + reply, [-100] * (len(prompt) - 1) + reply + [-100]
    key = ids(subject)[-1:]  # 'circle' or 'left'
    if task == "one_hop":
        return [], key, ids(color)
    if sentence:
        reply = ids(f"{subject} is {color} .")
        return [], key + ids(". :") + reply, [-100, -100, *reply, -100]
    return [], key + ids("? :"), [-100, -100, *ids(color)]


def _batch(task: str, samples: list, features: torch.Tensor, rng: np.random.Generator, tokenizer, echo_share: float):
    """Padded (before ids, after ids, their labels, patch features, before mask, after mask) of `samples`."""
    rows = []
    for scene, index in samples:
        sentence = task.endswith(("echo", "key_first")) and rng.random() < echo_share
        before, after, labels = task_tokens(task, scene, index, rng, tokenizer, sentence)
        rows.append((before, after, labels))
    width_before = max(len(r[0]) for r in rows)
    width_after = max(len(r[1]) for r in rows)
    pad = tokenizer.eos_token_id
    before = torch.tensor([[pad] * (width_before - len(b)) + b for b, _, _ in rows], dtype=torch.long)  # left pad
    after = torch.tensor([a + [pad] * (width_after - len(a)) for _, a, _ in rows], dtype=torch.long)
    labels = torch.tensor([l + [-100] * (width_after - len(l)) for _, _, l in rows], dtype=torch.long)
    mask_before = torch.tensor([[0] * (width_before - len(b)) + [1] * len(b) for b, _, _ in rows])
    mask_after = torch.tensor([[1] * len(a) + [0] * (width_after - len(a)) for _, a, _ in rows])
    return before, after, labels, features, mask_before, mask_after


class BindingModel(torch.nn.Module):
    """The world LM's LLaMA (fresh) with a linear projector for CLIP patches spliced between two id spans."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast, feature_size: int):
        super().__init__()
        self.lm = build_lm(tokenizer)
        self.projector = torch.nn.Linear(feature_size, self.lm.config.hidden_size)

    def forward(self, before, after, features, mask_before, mask_after) -> torch.Tensor:
        embed = self.lm.get_input_embeddings()
        inputs = torch.cat([embed(before), self.projector(features), embed(after)], 1)
        mask = torch.cat([mask_before, torch.ones(features.shape[:2], dtype=torch.long), mask_after], 1)
        logits = self.lm(inputs_embeds=inputs, attention_mask=mask).logits
        return logits[:, -after.shape[1] :]


def train_binding(
    clip: CLIPVisionModel, task: str, steps: int = 1000, batch: int = 24, lr: float = 1e-3, seed: int = 0,
    num_train: int = 6000, num_test: int = 1000, eval_every: int = 250, echo_share: float = 0.5,
) -> list[tuple[int, float]]:
    """Train one task; returns (step, held-out accuracy of the one-word colour answer) every `eval_every` steps."""
    if task not in TASKS:
        raise ValueError(f"unknown binding task {task!r}; expected one of {TASKS}")
    tokenizer = build_lm_tokenizer()
    train_set = lookup_set(np.random.default_rng(seed + 1), num_train)
    test_set = lookup_set(np.random.default_rng(seed + 2), num_test)
    clip = clip.eval()
    train_features = patch_features(clip, [scene for scene, _ in train_set])
    test_features = patch_features(clip, [scene for scene, _ in test_set])
    torch.manual_seed(seed)
    model = BindingModel(tokenizer, train_features.shape[-1]).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng, test_rng = np.random.default_rng(seed + 3), np.random.default_rng(seed + 4)
    test_batch = _batch(task, test_set, test_features, test_rng, tokenizer, echo_share=0.0)
    curve = []
    for step in range(1, steps + 1):
        picks = rng.integers(0, num_train, batch)
        before, after, labels, features, mask_b, mask_a = _batch(
            task, [train_set[i] for i in picks], train_features[picks], rng, tokenizer, echo_share
        )
        logits = model(before, after, features, mask_b, mask_a)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, accuracy(model, test_batch)))
    return curve


@torch.no_grad()
def accuracy(model: BindingModel, batch) -> float:
    """Share of one-word rows whose first labelled token, the colour, is predicted right."""
    before, after, labels, features, mask_b, mask_a = batch
    model.eval()
    predicted = model(before, after, features, mask_b, mask_a).argmax(-1)
    model.train()
    first = (labels != -100).float().argmax(1, keepdim=True)
    return float((predicted.gather(1, first) == labels.gather(1, first)).float().mean())


def binding_table(curves: dict[str, list[tuple[int, float]]]) -> str:
    steps = sorted({step for curve in curves.values() for step, _ in curve})
    lines = ["task          " + "".join(f"{f'step {s}':>11}" for s in steps)]
    for task, curve in curves.items():
        by_step = dict(curve)
        lines.append(f"{task:<14}" + "".join(f"{by_step[s]:>10.1%} " if s in by_step else " " * 11 for s in steps))
    return "\n".join(lines)


__all__ = ["TASKS", "BindingModel", "binding_table", "lookup_set", "task_tokens", "train_binding"]
