"""The shapes world's DreamLLM run: its training files, story scoring and the generated document page."""

import json
from types import SimpleNamespace

import numpy as np

from train.data import build_train_dataset, detect_kind
from train.toy.data import write_world_data
from train.toy.evaluate import follows_instruction, story_states, text_to_image
from train.toy.world import Scene, Shape, parse_caption, render, sample_instruction, story_text


def test_world_files_are_real_format_sources(tmp_path, tiny_processor):
    files = write_world_data(tmp_path, seed=0, num_pairs=6, num_stories=3, num_qa=4, num_instructions=4)
    assert detect_kind(str(files["pairs"]))[0] == "pairs"
    assert sorted(p.suffix for p in files["pairs"].iterdir()) == [".png"] * 6 + [".txt"] * 6
    for key in ("stories", "qa", "instructions"):
        assert detect_kind(str(files[key]))[0] != "pairs"
    dataset = build_train_dataset([str(files[k]) for k in ("pairs", "stories", "qa", "instructions")], tiny_processor)
    assert len(dataset) >= 6 + 3 + 4 + 4  # mixing may repeat the smaller sources
    samples = [dataset[index] for index in range(len(dataset))]
    assert all(len(sample["input_ids"]) > 0 for sample in samples)  # every record encodes, none is skipped
    write_world_data(tmp_path / "again", seed=0, num_pairs=6, num_stories=3, num_qa=4, num_instructions=4)
    assert (tmp_path / "stories.jsonl").read_text() == (tmp_path / "again" / "stories.jsonl").read_text()
    conversation = json.loads(files["qa"].read_text())[0]["conversations"]
    assert [turn["from"] for turn in conversation] == ["human", "gpt"] * (len(conversation) // 2)
    assert len(conversation) >= 6 and conversation[0]["value"].startswith("<image>\n")
    assert not any("<image>" in turn["value"] for turn in conversation[1:])  # one picture, asked about several times


def test_two_shape_shares_set_how_many_pictures_show_two_shapes(tmp_path):
    qa_counts, pair_counts = {}, {}
    for share in (0.0, 0.75, 1.0):
        files = write_world_data(tmp_path / str(share), seed=1, num_pairs=200, num_stories=1, num_qa=200,
                                 num_instructions=1, qa_two_shape_share=share, pair_two_shape_share=share)
        # A conversation asks each attribute once, and once more when the picture shows two shapes.
        turns = [len(record["conversations"]) // 2 for record in json.loads(files["qa"].read_text())]
        assert set(turns) <= {3, 4}
        qa_counts[share] = turns.count(4)
        captions = [path.read_text() for path in files["pairs"].glob("*.txt")]
        pair_counts[share] = sum(len(parse_caption(text).shapes) == 2 for text in captions)
    for counts in (qa_counts, pair_counts):
        assert counts[0.0] == 0 and counts[1.0] == 200 and 130 <= counts[0.75] <= 170


def test_story_states_follow_the_generated_sentences():
    states = story_states(["A red circle is on the left.", " Then it turns blue.", " Then it moves to the top.", "Hm."])
    assert states == [
        Scene((Shape("red", "circle", "left"),)),
        Scene((Shape("blue", "circle", "left"),)),
        Scene((Shape("blue", "circle", "top"),)),
        Scene((Shape("blue", "circle", "top"),)),
    ]
    assert story_states(["no story here"]) == [None]


def test_follows_instruction_checks_subject_and_requested_change():
    rng = np.random.default_rng(3)
    for _ in range(100):  # the world's own stories do what their instructions ask
        instruction = sample_instruction(rng, kind="story")
        assert follows_instruction(instruction.text, story_text(instruction.target)), instruction
    colour = "Tell a short story about a triangle that changes color, with pictures."
    assert follows_instruction(colour, "A red triangle is on the right. Then it turns blue. Then it turns green.")
    assert not follows_instruction(colour, "A red triangle is on the right. Then it moves to the top.")  # wrong change
    assert not follows_instruction(colour, "A red circle is on the right. Then it turns blue.")  # wrong subject
    assert not follows_instruction(colour, "A red triangle is on the right.")  # no change at all
    assert not follows_instruction(colour, "A red triangle is on the right. Then it sings.")  # a step it cannot read
    by_colour = "Tell a short story about a red shape that changes shape, with pictures."
    assert follows_instruction(by_colour, "A red circle is on the left. Then it becomes a square.")
    assert not follows_instruction(by_colour, "A blue circle is on the left. Then it becomes a square.")
    anything = "Tell a short story with pictures."
    assert follows_instruction(anything, "A red circle is on the left. Then it moves to the top.")
    assert not follows_instruction(anything, "")


class _Renderer:
    """Stands in for a DreamLLM pipeline: draws each caption with the world's renderer, keeping `keep` shapes."""

    def __init__(self, keep: int = 2):
        self.keep = keep

    def __call__(self, captions, **_):
        scenes = [Scene(parse_caption(text).shapes[: self.keep]) for text in captions]
        return SimpleNamespace(images=[render(scene) for scene in scenes])


def test_text_to_image_scores_two_shape_captions_apart():
    perfect = text_to_image(_Renderer(), num_prompts=8)
    assert perfect == {"color": 1.0, "shape": 1.0, "position": 1.0, "all": 1.0, "two_shape_color": 1.0,
                       "two_shape_shape": 1.0, "two_shape_position": 1.0, "n": 8}
    # Half the captions name two shapes; drawing only the first of them fails exactly that half.
    first_only = text_to_image(_Renderer(keep=1), num_prompts=8)
    assert first_only["color"] == first_only["all"] == 0.5
    assert first_only["two_shape_color"] == first_only["two_shape_position"] == 0.0
