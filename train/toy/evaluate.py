"""Held-out evaluation of a DreamLLM folder on the shapes world, judged by exact pixel analysis.

    python -m train.toy evaluate checkpoints/toy

- text-to-image: colour / shape / position accuracy of `pipe(caption)` (the judge reads the picture);
- understanding: exact-answer accuracy by question kind, through the chat template and `model.generate`;
- one picture on request: draw instructions ("Draw a red circle on the left.") and bare captions as a chat turn ("a
  red circle on the left") through `generate_interleaved`: the reply must be exactly one image and then `</s>`, and
  that image is judged like text-to-image;
- interleaved: story instructions through `generate_interleaved`; an image counts when it comes right after a
  sentence and shows what the story says at that point (the state is read back from the generated sentences); a
  story follows its instruction when it keeps the asked-for subject and changes only what was asked.
"""

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from train.toy.judge import score_scene
from train.toy.world import (
    ATTRIBUTES, CHANGE_PHRASES, COLORS, QA, Scene, Shape, caption, parse_caption, parse_step, render, sample_instruction,
    sample_qa, sample_scene,
)

HELD_OUT_SEED = 10_000  # training data uses seeds below this
GUIDANCE_SCALE = 3.0  # the shapes world's model is sampled and scored at this guidance (its card, the demo, generate.py)
# Held-out set sizes. The full set keeps the 95% interval of a text-to-image accuracy near +-6 points (+-11 with the
# 60 captions used before; +-12 on a request row's 40) and takes about 4 minutes on the 2 CPU cores that trained
# checkpoints/toy; the quick one is for smoke runs.
FULL = {"num_prompts": 240, "num_questions": 300, "num_requests": 40, "num_stories": 24}
QUICK = {"num_prompts": 16, "num_questions": 36, "num_requests": 4, "num_stories": 3}
AREAS = ("text_to_image", "understanding", "draw_instructions", "caption_requests", "interleaved")


@dataclass
class ToyScores:
    text_to_image: dict[str, float] = field(default_factory=dict)
    understanding: dict[str, float] = field(default_factory=dict)
    draw_instructions: dict[str, float] = field(default_factory=dict)
    caption_requests: dict[str, float] = field(default_factory=dict)
    interleaved: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {area: getattr(self, area) for area in AREAS}

    def table(self) -> str:
        rows = [(area.replace("_", "-"), k, v) for area in AREAS for k, v in getattr(self, area).items()]
        width = max(len(f"{a} / {b}") for a, b, _ in rows)
        lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
        for area, name, value in rows:
            # Counts and averages print as numbers, everything else is an accuracy.
            shown = f"{int(value):6d}" if name == "n" else f"{value:6.2f}" if "_per_" in name else f"{value:6.1%}"
            lines.append(f"{f'{area} / {name}':<{width}}  {shown}")
        return "\n".join(lines)


@torch.no_grad()
def text_to_image(pipe, num_prompts: int = FULL["num_prompts"], seed: int = HELD_OUT_SEED, steps: int = 25,
                  guidance_scale: float = GUIDANCE_SCALE, batch_size: int = 12) -> dict[str, float]:
    """Half the captions name one shape and half two; `two_shape_*` scores the second half alone (one-shape captions
    are nearly solved, so the average hides where the errors are). `all`: every attribute of every shape right."""
    rng = np.random.default_rng(seed)
    scenes = [sample_scene(rng, 1 + index % 2) for index in range(num_prompts)]
    scores = []
    for start in range(0, num_prompts, batch_size):
        batch = scenes[start : start + batch_size]
        generator = torch.Generator().manual_seed(seed + start)
        images = pipe([caption(scene) for scene in batch], num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=generator).images
        scores += [score_scene(image, scene) for image, scene in zip(images, batch)]
    two_shape = [score for scene, score in zip(scenes, scores) if len(scene.shapes) == 2]
    return (
        {name: _mean(score[name] for score in scores) for name in ATTRIBUTES}
        | {"all": _mean(all(score.values()) for score in scores)}
        | {f"two_shape_{name}": _mean(score[name] for score in two_shape) for name in ATTRIBUTES}
        | {"n": num_prompts}
    )


def _mean(values) -> float:
    values = list(values)
    return sum(values) / max(len(values), 1)


UNDERSTANDING_SEED = HELD_OUT_SEED + 1
UNDERSTANDING_MAX_NEW_TOKENS = 4


def understanding_questions(
    num_questions: int = FULL["num_questions"], seed: int = UNDERSTANDING_SEED
) -> list[tuple[Scene, QA]]:
    """The held-out questions, in order: kinds cycle colour, shape, position (also exported as lmms-eval's
    `shapes_vqa` task, see eval/lmms_tasks)."""
    rng = np.random.default_rng(seed)
    questions = []
    for index in range(num_questions):
        scene = sample_scene(rng)
        questions.append((scene, sample_qa(rng, scene, kind=ATTRIBUTES[index % len(ATTRIBUTES)])))
    return questions


def answer_is_right(answer: str, expected: str) -> bool:
    """The judge of a written answer: its first word, without a full stop and lowercased, is the expected word."""
    words = answer.strip().strip(".").lower().split()
    return bool(words) and words[0] == expected


@torch.no_grad()
def understanding(
    model, processor, num_questions: int = FULL["num_questions"], seed: int = UNDERSTANDING_SEED
) -> dict[str, float]:
    """Exact first-word answers, by question kind; `two_shape_*` covers the questions about one of two shapes ("What
    color is the circle?"), which need colour bound to shape and place."""
    results = []  # (kind, number of shapes, right)
    for scene, qa in understanding_questions(num_questions, seed):
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": qa.question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=prompt, images=[render(scene)]).to(model.device)
        output = model.generate(**inputs, max_new_tokens=UNDERSTANDING_MAX_NEW_TOKENS, do_sample=False)
        answer = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        results.append((qa.kind, len(scene.shapes), answer_is_right(answer, qa.answer)))
    return (
        {kind: _mean(right for k, _, right in results if k == kind) for kind in ATTRIBUTES}
        | {"all": _mean(right for _, _, right in results)}
        | {f"two_shape_{kind}": _mean(right for k, n, right in results if k == kind and n == 2) for kind in ATTRIBUTES}
        | {"n": num_questions}
    )


def story_states(text_before_each_image: list[str]) -> list[Scene | None]:
    """The scene the story describes at each image: the opening sentence sets it, each step sentence changes it."""
    states, current = [], None
    for text in text_before_each_image:
        opening = parse_caption(text)
        if opening.shapes:
            current = opening.shapes[0]
        step = parse_step(text)
        if current is not None and step is not None:
            current = Shape(**{**current.__dict__, step[0]: step[1]})
        states.append(Scene((current,)) if current is not None else None)
    return states


REQUEST_MAX_IMAGES = 4  # room to fail: a reply that goes on after its picture is counted, not cut off
REQUEST_MAX_NEW_TOKENS = 40


@torch.no_grad()
def one_picture_requests(pipe, kind: str, num_requests: int = FULL["num_requests"], seed: int = HELD_OUT_SEED + 3,
                         steps: int = 25, guidance_scale: float = GUIDANCE_SCALE) -> dict[str, float]:
    """Requests for one picture (`sample_instruction(kind=...)`, 'draw' or 'caption') as a chat turn. `one_image`: the
    reply is exactly one image and then `</s>` (no text, nothing after it); colour / shape / position judge the
    reply's first image against the request (a reply without an image is wrong on all three)."""
    rng = np.random.default_rng(seed)
    one_image, images_seen, scores = 0, 0, []
    for index in range(num_requests):
        instruction = sample_instruction(rng, kind=kind)
        out = pipe.generate_interleaved(
            [{"role": "user", "content": instruction.text}], max_new_tokens=REQUEST_MAX_NEW_TOKENS,
            max_images=REQUEST_MAX_IMAGES, num_inference_steps=steps, guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(seed + index),
        )
        images = [segment for segment in out.segments if not isinstance(segment, str)]
        images_seen += len(images)
        one_image += len(out.segments) == len(images) == 1 and out.finish_reason == "eos"
        scores.append(score_scene(images[0], instruction.target) if images else dict.fromkeys(ATTRIBUTES, False))
    return (
        {"one_image": one_image / num_requests, "images_per_reply": images_seen / num_requests}
        | {name: _mean(score[name] for score in scores) for name in ATTRIBUTES}
        | {"n": num_requests}
    )


_REQUEST_RE = re.compile(rf"about an? (\w+)(?: shape)? that ({'|'.join(CHANGE_PHRASES.values())})")
_CHANGE_OF_PHRASE = {phrase: attribute for attribute, phrase in CHANGE_PHRASES.items()}


def follows_instruction(instruction_text: str, story_text: str) -> bool:
    """Whether a generated story does what a story instruction asks: it opens on one shape and then changes it; for
    "about a circle that moves" (or "about a red shape that changes shape") that shape is a circle (red) and every
    step is a move (a change of shape)."""
    sentences = [part.strip() + "." for part in story_text.split(".") if part.strip()]
    opening = parse_caption(sentences[0]).shapes if sentences else ()
    steps = [parse_step(sentence) for sentence in sentences[1:]]
    if len(opening) != 1 or not steps or None in steps:
        return False
    request = _REQUEST_RE.search(instruction_text.lower())
    if request is None:  # "Tell a short story with pictures.": any subject, any changes
        return True
    subject, change = request.group(1), _CHANGE_OF_PHRASE[request.group(2)]
    named = opening[0].color if subject in COLORS else opening[0].shape
    return named == subject and all(attribute == change for attribute, _ in steps)


@torch.no_grad()
def interleaved(pipe, num_stories: int = FULL["num_stories"], seed: int = HELD_OUT_SEED + 2, steps: int = 25,
                guidance_scale: float = GUIDANCE_SCALE) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    placed = matched = images_seen = expected = followed = 0
    for index in range(num_stories):
        instruction = sample_instruction(rng, kind="story")
        expected += sum(not isinstance(segment, str) for segment in instruction.target)
        out = pipe.generate_interleaved(
            [{"role": "user", "content": instruction.text}], max_new_tokens=80, max_images=4,
            num_inference_steps=steps, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(seed + index),
        )
        text_so_far, before = "", []
        for segment in out.segments:
            if isinstance(segment, str):
                text_so_far += segment
            else:
                before.append(text_so_far)
                text_so_far = ""
        images = [segment for segment in out.segments if not isinstance(segment, str)]
        images_seen += len(images)
        followed += follows_instruction(instruction.text, "".join(s for s in out.segments if isinstance(s, str)))
        for image, state, text in zip(images, story_states(before), before):
            at_sentence = text.strip().endswith(".")
            placed += at_sentence
            matched += at_sentence and state is not None and all(score_scene(image, state).values())
    return {
        "images_per_story": images_seen / num_stories,
        "expected_images_per_story": expected / num_stories,
        "at_sentence": placed / max(images_seen, 1),
        "at_sentence_and_matching": matched / max(images_seen, 1),
        "follows_instruction": followed / num_stories,
        "n": num_stories,
    }


def evaluate(folder, quick: bool = False) -> ToyScores:
    from pipeline_dreamllm import DreamLLMPipeline

    pipe = DreamLLMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    sizes = QUICK if quick else FULL
    return ToyScores(
        text_to_image=text_to_image(pipe, num_prompts=sizes["num_prompts"]),
        understanding=understanding(pipe.llm, pipe.processor, num_questions=sizes["num_questions"]),
        draw_instructions=one_picture_requests(pipe, "draw", num_requests=sizes["num_requests"]),
        caption_requests=one_picture_requests(pipe, "caption", num_requests=sizes["num_requests"],
                                              seed=HELD_OUT_SEED + 4),
        interleaved=interleaved(pipe, num_stories=sizes["num_stories"]),
    )
