"""The shapes world: 64x64 pictures of one or two coloured shapes on black, their captions, questions and answers,
picture stories and instructions, all procedural and deterministic under a `numpy.random.Generator`.

    rng = np.random.default_rng(0)
    scene = sample_scene(rng)                 # Scene(shapes=(Shape('red', 'circle', 'left', 21, 1, -2),))
    image = render(scene)                     # PIL.Image, 64x64 RGB
    caption(scene)                            # 'a red circle on the left'
    parse_caption('a red circle on the left') # Scene with the same (colour, shape, position) attributes
    sample_qa(rng, scene)                     # QA('What color is the shape?', 'red', kind='color')
    sample_conversation(rng, scene)           # [QA(... 'shape' ...), QA(... 'color' ...), QA(... 'position' ...)]
    sample_story(rng)                         # ['A red circle is on the left.', Scene, 'Then it turns blue.', Scene]
    sample_instruction(rng)                   # Instruction('Draw a green triangle in the center.', Scene, 'draw')

World text uses sentence case; its tokenizer (see `stage0_lm`) lowercases, so every word of `WORLD_WORDS` is lowercase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64
# Pure, well separated colours: the nearest one to any pixel's chromaticity is unambiguous.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 255),
    "orange": (255, 128, 0),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Anchor (x, y) of each position; shapes are centred there up to a small jitter.
POSITIONS: dict[str, tuple[int, int]] = {
    "left": (12, 32),
    "right": (52, 32),
    "top": (32, 12),
    "bottom": (32, 52),
    "center": (32, 32),
}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "position")
ATTRIBUTE_VALUES: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "shape": SHAPES, "position": tuple(POSITIONS)}
SINGLE_SIZE_RANGE = (18, 24)  # one shape has the canvas to itself
PAIR_SIZE_RANGE = (14, 20)  # two shapes must fit side by side without touching
JITTER = 2  # max offset (px) of a shape's centre from its anchor
MIN_GAP = 3  # min distance (px) between two shapes' bounding boxes: they never touch


@dataclass(frozen=True)
class Shape:
    """One filled shape: its attributes, its side length in px and its centre's offset from the position anchor."""

    color: str
    shape: str
    position: str
    size: int = 20
    dx: int = 0
    dy: int = 0

    @property
    def attributes(self) -> tuple[str, str, str]:
        return (self.color, self.shape, self.position)

    def box(self) -> tuple[int, int, int, int]:
        """Inclusive pixel bounding box (x0, y0, x1, y1), kept inside the canvas."""
        ax, ay = POSITIONS[self.position]
        x0 = min(max(ax + self.dx - self.size // 2, 0), IMAGE_SIZE - self.size)
        y0 = min(max(ay + self.dy - self.size // 2, 0), IMAGE_SIZE - self.size)
        return x0, y0, x0 + self.size - 1, y0 + self.size - 1


@dataclass(frozen=True)
class Scene:
    """What a picture shows: one or two shapes at distinct positions."""

    shapes: tuple[Shape, ...]

    @property
    def attributes(self) -> tuple[tuple[str, str, str], ...]:
        return tuple(s.attributes for s in self.shapes)


@dataclass(frozen=True)
class QA:
    """A question about a scene, its one-word answer and which attribute it asks (`q, a = qa` unpacks the pair)."""

    question: str
    answer: str
    kind: str

    def __iter__(self):
        return iter((self.question, self.answer))


@dataclass(frozen=True)
class Instruction:
    """A request and what answers it: a Scene to draw (`kind='draw'`, "Draw a red circle.", or `kind='caption'`, the
    caption alone as a chat turn) or a story (`kind='story'`)."""

    text: str
    target: Scene | list
    kind: str


Story = list  # ordered segments: sentences (str) and the Scenes drawn at them


def as_rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    """Accept a Generator (used as is) or a seed."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def other_value(rng: np.random.Generator, shape: Shape, attribute: str) -> str:
    """A value of `attribute` ('color', 'shape' or 'position') other than `shape`'s, uniformly at random."""
    return _pick(rng, [value for value in ATTRIBUTE_VALUES[attribute] if value != getattr(shape, attribute)])


# ----------------------------------------------------------------------------------------------------------- scenes
def shapes_apart(a: Shape, b: Shape, gap: int = MIN_GAP) -> bool:
    """Whether two shapes' bounding boxes are more than `gap` px apart (along x or y)."""
    ax0, ay0, ax1, ay1 = a.box()
    bx0, by0, bx1, by1 = b.box()
    return bx0 - ax1 > gap or ax0 - bx1 > gap or by0 - ay1 > gap or ay0 - by1 > gap


def _sample_geometry(rng: np.random.Generator, size_range: tuple[int, int]) -> dict:
    return {
        "size": int(rng.integers(size_range[0], size_range[1] + 1)),
        "dx": int(rng.integers(-JITTER, JITTER + 1)),
        "dy": int(rng.integers(-JITTER, JITTER + 1)),
    }


def place(rng: np.random.Generator, attributes: Sequence[tuple[str, str, str]]) -> Scene:
    """A Scene with the given (colour, shape, position) triples and random sizes/jitter that keep shapes apart."""
    if len({a[2] for a in attributes}) != len(attributes):
        raise ValueError(f"two shapes share a position: {attributes}")
    size_range = SINGLE_SIZE_RANGE if len(attributes) == 1 else PAIR_SIZE_RANGE
    while True:
        shapes = tuple(Shape(c, s, p, **_sample_geometry(rng, size_range)) for c, s, p in attributes)
        if all(shapes_apart(a, b) for i, a in enumerate(shapes) for b in shapes[i + 1 :]):
            return Scene(shapes)


def sample_attributes(rng: np.random.Generator, exclude_position: str | None = None) -> tuple[str, str, str]:
    positions = [p for p in POSITIONS if p != exclude_position]
    return (_pick(rng, list(COLORS)), _pick(rng, SHAPES), _pick(rng, positions))


def sample_scene(
    rng: np.random.Generator | int | None, num_shapes: int | None = None, two_shape_share: float | None = None
) -> Scene:
    """A random scene of `num_shapes` (1 or 2) shapes; when None, two with probability `two_shape_share` (one or two
    equally often when that is None too). Two shapes never share a position nor a colour, so every question about
    them has one answer and a blurry picture never merges them."""
    if num_shapes is not None and two_shape_share is not None:
        raise ValueError("give num_shapes or two_shape_share, not both")
    rng = as_rng(rng)
    if num_shapes is None:
        num_shapes = int(rng.integers(1, 3)) if two_shape_share is None else 2 if rng.random() < two_shape_share else 1
    first = sample_attributes(rng)
    if num_shapes == 1:
        return place(rng, [first])
    while True:
        second = sample_attributes(rng, exclude_position=first[2])
        if second[0] != first[0]:
            return place(rng, [first, second])


def render(scene: Scene) -> Image.Image:
    """Draw the scene: filled shapes (no anti-aliasing) on black, 64x64 RGB."""
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    for s in scene.shapes:
        x0, y0, x1, y1 = s.box()
        fill = COLORS[s.color]
        if s.shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif s.shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        elif s.shape == "triangle":  # apex up, base at the bottom
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
        else:
            raise ValueError(f"unknown shape {s.shape!r}")
    return image


# --------------------------------------------------------------------------------------------------------- captions
def article(word: str) -> str:
    """'an' before a vowel ('an orange circle'), else 'a'."""
    return "an" if word[0] in "aeiou" else "a"


def describe(shape: Shape | tuple[str, str, str]) -> str:
    """'a red circle on the left'."""
    color, kind, position = shape.attributes if isinstance(shape, Shape) else shape
    return f"{article(color)} {color} {kind} {POSITION_PHRASES[position]}"


def caption(scene: Scene) -> str:
    """'a red circle on the left' or 'a blue square at the top and a yellow triangle at the bottom'."""
    return " and ".join(describe(s) for s in scene.shapes)


_PHRASE_TO_POSITION = {phrase: position for position, phrase in POSITION_PHRASES.items()}
_MOVE_TO_POSITION = {f"to the {position}": position for position in POSITIONS}
_CAPTION_RE = re.compile(
    rf"\b({'|'.join(COLORS)})\s+({'|'.join(SHAPES)})\b(?:\s+is)?\s+({'|'.join(_PHRASE_TO_POSITION)})\b", re.I
)


def parse_caption(text: str) -> Scene:
    """The shapes a caption (or a story's first sentence, or a draw instruction) describes, in order, as a Scene with
    default size and no jitter; shapes it cannot read are left out (an empty Scene when none)."""
    shapes = [
        Shape(color.lower(), kind.lower(), _PHRASE_TO_POSITION[" ".join(phrase.lower().split())])
        for color, kind, phrase in _CAPTION_RE.findall(text)
    ]
    return Scene(tuple(shapes))


# ------------------------------------------------------------------------------------------------------ questions
def _position_phrase_for(shape: Shape) -> str:
    return POSITION_PHRASES[shape.position]


def sample_qa(rng: np.random.Generator | int | None, scene: Scene, kind: str | None = None) -> QA:
    """A question about the scene with a one-word answer; `kind` is 'color', 'shape' or 'position' (random when None),
    or 'caption' ('Describe the image.' -> the caption)."""
    rng = as_rng(rng)
    kind = kind or _pick(rng, ATTRIBUTES)
    if kind == "caption":
        return QA(_pick(rng, ["Describe the image.", "What is in the image?"]), caption(scene), kind)
    if len(scene.shapes) == 1:
        (s,) = scene.shapes
        question = {
            "color": _pick(rng, ["What color is the shape?", "What color is it?"]),
            "shape": _pick(rng, ["What shape is it?", "What shape is in the image?"]),
            "position": _pick(rng, ["Where is the shape?", "Where is it?"]),
        }[kind]
        return QA(question, getattr(s, kind), kind)
    index = int(rng.integers(len(scene.shapes)))
    s, other = scene.shapes[index], scene.shapes[1 - index]
    if kind == "color":
        # Name the shape by its kind when that is unique, else by where it is (colours always differ).
        if s.shape != other.shape and rng.random() < 0.5:
            question = f"What color is the {s.shape}?"
        else:
            question = f"What color is the shape {_position_phrase_for(s)}?"
    elif kind == "shape":
        if rng.random() < 0.5:
            question = f"What shape is {s.color}?"
        else:
            question = f"What shape is {_position_phrase_for(s)}?"
    elif kind == "position":
        question = f"Where is the {s.color} {s.shape}?"
    else:
        raise ValueError(f"unknown question kind {kind!r}")
    return QA(question, getattr(s, kind), kind)


def sample_conversation(rng: np.random.Generator | int | None, scene: Scene) -> list[QA]:
    """Several questions about one picture, as in LLaVA's multi-turn data: each attribute once in random order (about
    a random shape), plus one more question when there are two shapes. One picture then teaches every attribute."""
    rng = as_rng(rng)
    kinds = [ATTRIBUTES[int(i)] for i in rng.permutation(len(ATTRIBUTES))]
    if len(scene.shapes) == 2:
        kinds.append(_pick(rng, ATTRIBUTES))
    return [sample_qa(rng, scene, kind=kind) for kind in kinds]


# --------------------------------------------------------------------------------------------------------- stories
CHANGE_PHRASES = {"color": "changes color", "shape": "changes shape", "position": "moves"}


def step_sentence(attribute: str, value: str) -> str:
    """'Then it turns blue.' / 'Then it becomes a square.' / 'Then it moves to the top.'"""
    if attribute == "color":
        return f"Then it turns {value}."
    if attribute == "shape":
        return f"Then it becomes a {value}."
    if attribute == "position":
        return f"Then it moves to the {value}."
    raise ValueError(f"unknown attribute {attribute!r}")


_STEP_RES = {
    "color": re.compile(rf"\bturns\s+({'|'.join(COLORS)})\b", re.I),
    "shape": re.compile(rf"\bbecomes\s+an?\s+({'|'.join(SHAPES)})\b", re.I),
    "position": re.compile(rf"\bmoves\s+to\s+the\s+({'|'.join(POSITIONS)})\b", re.I),
}


def parse_step(sentence: str) -> tuple[str, str] | None:
    """('color', 'blue') for 'Then it turns blue.', likewise for shape and position; None when it reads no change."""
    for attribute, pattern in _STEP_RES.items():
        match = pattern.search(sentence)
        if match:
            return attribute, match.group(1).lower()
    return None


def sample_story(
    rng: np.random.Generator | int | None,
    num_images: int | None = None,
    change: str | None = None,
    start: tuple[str, str, str] | None = None,
) -> Story:
    """A picture story of one shape: an opening sentence and its picture, then 1-3 steps that each change one
    attribute (`change` fixes which; random per step when None), each followed by its picture. 2-4 images."""
    rng = as_rng(rng)
    num_images = num_images or int(rng.integers(2, 5))
    color, kind, position = start or sample_attributes(rng)
    shape = place(rng, [(color, kind, position)]).shapes[0]
    story: Story = [f"{article(color).capitalize()} {color} {kind} is {POSITION_PHRASES[position]}.", Scene((shape,))]
    for _ in range(num_images - 1):
        attribute = change or _pick(rng, ATTRIBUTES)
        value = other_value(rng, shape, attribute)
        if attribute == "position":  # a new place gets its own jitter; other changes keep the geometry
            shape = Shape(shape.color, shape.shape, value, **_sample_geometry(rng, SINGLE_SIZE_RANGE))
        else:
            shape = replace(shape, **{attribute: value})
        story += [step_sentence(attribute, value), Scene((shape,))]
    return story


def story_text(story: Story, image_token: str | None = None) -> str:
    """The story's sentences joined by spaces; each Scene becomes `image_token` when given, else is dropped."""
    parts = [seg if isinstance(seg, str) else image_token for seg in story]
    return " ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------------- instructions
INSTRUCTION_KINDS = ("draw", "caption", "story")
CAPTION_REQUEST_SHARE = 0.4  # of the requests for one picture, those that are the bare caption


def sample_instruction(rng: np.random.Generator | int | None, kind: str | None = None) -> Instruction:
    """'Draw a green triangle in the center.' or 'a green triangle in the center' (-> Scene: one picture, and the
    reply ends) or 'Tell a short story about a square that changes color, with pictures.' (-> story); `kind` is one of
    `INSTRUCTION_KINDS` (random when None: half stories, half requests for one picture)."""
    rng = as_rng(rng)
    if kind is None:
        kind = _pick(rng, ["draw", "story"])
        if kind == "draw" and rng.random() < CAPTION_REQUEST_SHARE:
            kind = "caption"
    if kind == "draw":
        scene = sample_scene(rng)
        return Instruction(f"Draw {caption(scene)}.", scene, kind)
    if kind == "caption":  # as a user types it: "a red circle on the left" or "A red circle on the left."
        scene = sample_scene(rng)
        text = caption(scene)
        return Instruction(_pick(rng, [text, text[0].upper() + text[1:] + "."]), scene, kind)
    if kind != "story":
        raise ValueError(f"unknown instruction kind {kind!r}: expected one of {INSTRUCTION_KINDS}")
    change = _pick(rng, [None, *ATTRIBUTES])
    start = sample_attributes(rng)
    if change is None:
        text = "Tell a short story with pictures."
    else:
        # Name the subject by what stays fixed: its shape unless the shape changes, then its colour.
        subject = f"{start[0]} shape" if change == "shape" else start[1]
        text = f"Tell a short story about {article(subject)} {subject} that {CHANGE_PHRASES[change]}, with pictures."
    return Instruction(text, sample_story(rng, change=change, start=start), kind)


# ---------------------------------------------------------------------------------------------------- vocabulary
# Words of the Vicuna chat template DreamLLM's processor renders around every conversation.
CHAT_TEXT = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, detailed, "
    "and polite answers to the user's questions. USER: ASSISTANT:"
)
_TEMPLATE_TEXT = " ".join(
    [
        " ".join(COLORS),
        " ".join(SHAPES),
        " ".join(POSITION_PHRASES.values()),
        " and shape is it in the image? what color where describe the image. what is in the image?",
        " a is . then it turns becomes moves to the",
        " draw tell a short story about with pictures, that changes color shape moves",
        CHAT_TEXT,
    ]
)
_WORD_RE = re.compile(r"[a-z]+|[^\sa-z]")


def words(text: str) -> list[str]:
    """World text as the tokenizer splits it: lowercase runs of letters and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


WORLD_WORDS: list[str] = sorted(set(words(_TEMPLATE_TEXT)))


def world_text_stream(rng: np.random.Generator | int | None) -> Iterator[str]:
    """An endless stream of world documents for LM training: captions, Q&A (plain and in the chat template), stories,
    instructions with their answers."""
    rng = as_rng(rng)
    while True:
        scene = sample_scene(rng)
        roll = rng.random()
        if roll < 0.2:
            yield caption(scene).capitalize() + "."
        elif roll < 0.45:
            qa = sample_qa(rng, scene, kind=_pick(rng, [*ATTRIBUTES, "caption"]))
            yield f"{qa.question} {qa.answer.capitalize()}."
        elif roll < 0.65:
            yield story_text(sample_story(rng))
        elif roll < 0.8:
            instruction = sample_instruction(rng)
            target = instruction.target
            answer = caption(target).capitalize() + "." if isinstance(target, Scene) else story_text(target)
            yield f"{instruction.text} {answer}"
        else:  # the chat layout later stages train in
            qa = sample_qa(rng, scene)
            yield f"{CHAT_TEXT.rsplit(' USER:', 1)[0]} USER: {qa.question} ASSISTANT: {qa.answer}"


__all__ = [
    "ATTRIBUTES",
    "ATTRIBUTE_VALUES",
    "article",
    "CHAT_TEXT",
    "COLORS",
    "IMAGE_SIZE",
    "Instruction",
    "INSTRUCTION_KINDS",
    "POSITIONS",
    "POSITION_PHRASES",
    "QA",
    "SHAPES",
    "Scene",
    "Shape",
    "Story",
    "WORLD_WORDS",
    "as_rng",
    "caption",
    "describe",
    "other_value",
    "parse_caption",
    "parse_step",
    "place",
    "render",
    "sample_attributes",
    "sample_conversation",
    "sample_instruction",
    "sample_qa",
    "sample_scene",
    "sample_story",
    "shapes_apart",
    "step_sentence",
    "story_text",
    "words",
    "world_text_stream",
]
