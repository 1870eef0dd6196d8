"""The shapes world (train.toy.world) and its judge (train.toy.judge)."""

import numpy as np
import pytest
from PIL import Image, ImageFilter

from train.toy.judge import judge, score_caption, score_scene
from train.toy.world import (
    ATTRIBUTES,
    COLORS,
    POSITION_PHRASES,
    POSITIONS,
    SHAPES,
    WORLD_WORDS,
    Scene,
    Shape,
    caption,
    parse_caption,
    parse_step,
    render,
    sample_conversation,
    sample_instruction,
    sample_qa,
    sample_scene,
    sample_story,
    words,
    world_text_stream,
)


def scenes(seed: int, n: int, num_shapes=None) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng, num_shapes) for _ in range(n)]


def degrade(image: Image.Image, rng: np.random.Generator, blur: float, noise: float) -> Image.Image:
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    array = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, (64, 64, 3))
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def test_sampling_and_rendering_are_deterministic():
    assert scenes(3, 20) == scenes(3, 20)
    assert scenes(3, 20) != scenes(4, 20)
    for scene in scenes(3, 20):
        first, second = render(scene), render(scene)
        assert first.size == (64, 64) and first.mode == "RGB"
        assert first.tobytes() == second.tobytes()


def test_scenes_are_valid():
    for scene in scenes(0, 300):
        assert len(scene.shapes) in (1, 2)
        positions = [s.position for s in scene.shapes]
        assert len(set(positions)) == len(positions)
        for s in scene.shapes:
            assert s.color in COLORS and s.shape in SHAPES and s.position in POSITIONS
            x0, y0, x1, y1 = s.box()
            assert 0 <= x0 <= x1 < 64 and 0 <= y0 <= y1 < 64
    assert {len(s.shapes) for s in scenes(0, 50)} == {1, 2}
    assert all(len(s.shapes) == 2 for s in scenes(0, 20, num_shapes=2))


def test_two_shape_share_sets_how_often_a_scene_has_two_shapes():
    rng = np.random.default_rng(0)
    for share, low, high in ((0.0, 0, 0), (0.75, 130, 170), (1.0, 200, 200)):
        count = sum(len(sample_scene(rng, two_shape_share=share).shapes) == 2 for _ in range(200))
        assert low <= count <= high, (share, count)
    with pytest.raises(ValueError, match="num_shapes or two_shape_share"):
        sample_scene(rng, 1, two_shape_share=0.5)


def test_judge_reads_every_rendered_scene_exactly():
    for scene in scenes(1, 200, 1) + scenes(2, 200, 2):
        found = sorted(d.attributes for d in judge(render(scene)))
        assert found == sorted(scene.attributes), scene


@pytest.mark.parametrize("blur,noise", [(0.0, 20.0), (1.0, 0.0), (1.0, 15.0), (1.5, 10.0)])
def test_judge_is_robust_to_noise_and_blur(blur, noise):
    rng = np.random.default_rng(5)
    for scene in scenes(6, 100):
        found = sorted(d.attributes for d in judge(degrade(render(scene), rng, blur, noise)))
        assert found == sorted(scene.attributes), (scene, blur, noise)


def test_judge_ignores_dimming_and_specks():
    scene = Scene((Shape("yellow", "triangle", "bottom", 20), Shape("purple", "square", "left", 16)))
    array = np.asarray(render(scene), dtype=np.float32) * 0.6
    array[2:5, 2:5] = (0, 255, 0)  # a 9 px speck
    assert sorted(d.attributes for d in judge(array.astype(np.uint8))) == sorted(scene.attributes)
    assert judge(np.zeros((64, 64, 3), dtype=np.uint8)) == []


def test_score_caption():
    scene = Scene((Shape("blue", "square", "top", 16), Shape("yellow", "triangle", "bottom", 16)))
    image = render(scene)
    assert score_caption(image, caption(scene)) == {"color": True, "shape": True, "position": True}
    assert score_caption(image, "a yellow triangle at the bottom and a blue square at the top")["position"]
    assert score_caption(image, "a blue circle at the top and a yellow triangle at the bottom") == {
        "color": True,
        "shape": False,
        "position": True,
    }
    wrong_color = score_caption(image, "a red square at the top")
    assert wrong_color == {"color": False, "shape": True, "position": True}
    empty = np.zeros((64, 64, 3), dtype=np.uint8)
    assert score_scene(empty, scene) == {"color": False, "shape": False, "position": False}


def test_caption_parse_round_trip():
    assert caption(Scene((Shape("orange", "circle", "center"),))) == "an orange circle in the center"
    for scene in scenes(7, 300):
        assert parse_caption(caption(scene)).attributes == scene.attributes
    assert parse_caption("Draw a Green triangle in the center.").attributes == (("green", "triangle", "center"),)
    assert parse_caption("A red circle is on the left.").attributes == (("red", "circle", "left"),)
    assert parse_caption("nothing here").shapes == ()


def referents(scene: Scene, question: str) -> list[Shape]:
    """The shapes a two-shape question names: by position, by colour and shape, by shape alone or by colour alone."""
    q = question.lower().rstrip("?")
    return [
        s
        for s in scene.shapes
        if q.endswith(" " + POSITION_PHRASES[s.position])
        or q.endswith(f" the {s.color} {s.shape}")
        or q.endswith(f" the {s.shape}")
        or q.endswith(f" is {s.color}")
    ]


def test_qa_answers_match_the_scene():
    rng = np.random.default_rng(8)
    kinds = set()
    for scene in scenes(9, 400):
        qa = sample_qa(rng, scene)
        question, answer = qa
        kinds.add(qa.kind)
        assert question.endswith("?") and qa.kind in ATTRIBUTES
        if len(scene.shapes) == 1:
            assert answer == getattr(scene.shapes[0], qa.kind)
        else:
            named = referents(scene, question)
            assert len(named) == 1, (scene, question)
            assert answer == getattr(named[0], qa.kind), (scene, question, answer)
    assert kinds == set(ATTRIBUTES)
    scene = scenes(1, 1)[0]
    assert sample_qa(rng, scene, kind="caption").answer == caption(scene)


def test_conversation_asks_every_attribute_and_answers_match():
    rng = np.random.default_rng(12)
    for scene in scenes(13, 200):
        turns = sample_conversation(rng, scene)
        assert len(turns) == 3 + (len(scene.shapes) == 2)
        assert {qa.kind for qa in turns[:3]} == set(ATTRIBUTES)
        for qa in turns:
            named = scene.shapes if len(scene.shapes) == 1 else referents(scene, qa.question)
            assert len(named) == 1 and qa.answer == getattr(named[0], qa.kind), (scene, qa)


def test_stories_change_one_attribute_per_step():
    rng = np.random.default_rng(10)
    for _ in range(200):
        story = sample_story(rng)
        images = [s for s in story if isinstance(s, Scene)]
        sentences = [s for s in story if isinstance(s, str)]
        assert 2 <= len(images) <= 4 and len(sentences) == len(images)
        assert all(isinstance(a, str) and isinstance(b, Scene) for a, b in zip(story[0::2], story[1::2]))
        assert parse_caption(sentences[0]).attributes == images[0].attributes
        for sentence, before, after in zip(sentences[1:], images, images[1:]):
            (b,), (a,) = before.shapes, after.shapes
            changed = [k for k in ATTRIBUTES if getattr(a, k) != getattr(b, k)]
            assert len(changed) == 1
            assert parse_step(sentence) == (changed[0], getattr(a, changed[0]))


def test_instructions():
    rng = np.random.default_rng(11)
    seen = set()
    for _ in range(200):
        instruction = sample_instruction(rng)
        seen.add(instruction.kind)
        if instruction.kind == "draw":
            assert instruction.text.startswith("Draw ") and instruction.text.endswith(".")
            assert parse_caption(instruction.text).attributes == instruction.target.attributes
        elif instruction.kind == "caption":  # the caption alone, as typed
            assert instruction.text.lower().strip(".") == caption(instruction.target)
        else:
            assert instruction.text.startswith("Tell a short story")
            story = instruction.target
            if "changes color" in instruction.text:
                assert {parse_step(s)[0] for s in story[2::2]} == {"color"}
                assert f" {story[1].shapes[0].shape} " in instruction.text
    assert seen == {"draw", "caption", "story"}
    assert {sample_instruction(rng, kind=kind).kind for kind in ("draw", "caption", "story")} == seen
    with pytest.raises(ValueError, match="unknown instruction kind 'poem'"):
        sample_instruction(rng, kind="poem")


def test_world_words_cover_all_world_text():
    assert WORLD_WORDS == sorted(set(WORLD_WORDS))
    assert all(w == w.lower() for w in WORLD_WORDS)
    stream = world_text_stream(12)
    used = set()
    for _ in range(3000):
        used.update(words(next(stream)))
    assert used <= set(WORLD_WORDS)
    assert {".", ",", "?"} <= used
