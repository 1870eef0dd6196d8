"""Held-out evaluation of a DreamLLM folder on the shapes world, judged by exact pixel analysis.

    python -m train.toy evaluate checkpoints/toy

- text-to-image: colour / shape / position accuracy of `pipe(caption)` (the judge reads the picture);
- understanding: exact-answer accuracy by question kind, through the chat template and `model.generate`;
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
    ATTRIBUTES, CHANGE_PHRASES, COLORS, Scene, Shape, caption, parse_caption, parse_step, render, sample_instruction,
    sample_qa, sample_scene,
)

HELD_OUT_SEED = 10_000  # training data uses seeds below this


@dataclass
class ToyScores:
    text_to_image: dict[str, float] = field(default_factory=dict)
    understanding: dict[str, float] = field(default_factory=dict)
    interleaved: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {"text_to_image": self.text_to_image, "understanding": self.understanding, "interleaved": self.interleaved}

    def table(self) -> str:
        rows = [("text-to-image", k, v) for k, v in self.text_to_image.items()]
        rows += [("understanding", k, v) for k, v in self.understanding.items()]
        rows += [("interleaved", k, v) for k, v in self.interleaved.items()]
        width = max(len(f"{a} / {b}") for a, b, _ in rows)
        lines = [f"{'metric':<{width}}  value", f"{'-' * width}  ------"]
        for area, name, value in rows:
            # Counts and averages print as numbers, everything else is an accuracy.
            shown = f"{int(value):6d}" if name == "n" else f"{value:6.2f}" if name.endswith("per_story") else f"{value:6.1%}"
            lines.append(f"{f'{area} / {name}':<{width}}  {shown}")
        return "\n".join(lines)


@torch.no_grad()
def text_to_image(pipe, num_prompts: int = 60, seed: int = HELD_OUT_SEED, steps: int = 25, guidance_scale: float = 3.0,
                  batch_size: int = 12) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    captions = [caption(sample_scene(rng)) for _ in range(num_prompts)]
    hits = {name: 0 for name in ATTRIBUTES}
    for start in range(0, num_prompts, batch_size):
        batch = captions[start : start + batch_size]
        generator = torch.Generator().manual_seed(seed + start)
        images = pipe(batch, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator).images
        for text, image in zip(batch, images):
            for name, ok in score_scene(image, parse_caption(text)).items():
                hits[name] += ok
    return {name: hits[name] / num_prompts for name in ATTRIBUTES} | {"n": num_prompts}


@torch.no_grad()
def understanding(model, processor, num_questions: int = 150, seed: int = HELD_OUT_SEED + 1) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    correct, total = {k: 0 for k in ATTRIBUTES}, {k: 0 for k in ATTRIBUTES}
    for index in range(num_questions):
        scene = sample_scene(rng)
        qa = sample_qa(rng, scene, kind=ATTRIBUTES[index % len(ATTRIBUTES)])
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": qa.question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=prompt, images=[render(scene)]).to(model.device)
        output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        answer = processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
        words = answer.strip().strip(".").lower().split()
        correct[qa.kind] += bool(words) and words[0] == qa.answer
        total[qa.kind] += 1
    scores = {k: correct[k] / total[k] for k in ATTRIBUTES}
    return scores | {"all": sum(correct.values()) / num_questions, "n": num_questions}


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
def interleaved(pipe, num_stories: int = 12, seed: int = HELD_OUT_SEED + 2, steps: int = 25,
                guidance_scale: float = 3.0) -> dict[str, float]:
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
    scale = 0.25 if quick else 1.0
    return ToyScores(
        text_to_image=text_to_image(pipe, num_prompts=max(4, int(60 * scale))),
        understanding=understanding(pipe.llm, pipe.processor, num_questions=max(6, int(150 * scale))),
        interleaved=interleaved(pipe, num_stories=max(2, int(12 * scale))),
    )
