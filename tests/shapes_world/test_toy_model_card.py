"""The shapes-world model card: huggingface_hub metadata, the world's vocabulary, and checkpoints/toy's card regenerated
by the code with every number of the run kept."""

import shutil
from pathlib import Path

from huggingface_hub import ModelCard

from train.toy.model_card import KNOWLEDGE_HEADING, refresh_model_card, write_model_card
from train.toy.world import COLORS, POSITION_PHRASES, SHAPES

CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "toy"


def knowledge(card_text: str) -> str:
    return card_text.split(KNOWLEDGE_HEADING, 1)[1].split("\n## ", 1)[0]


def assert_card(path: Path):
    card = ModelCard.load(path)
    assert (card.data.library_name, card.data.pipeline_tag, card.data.license) == (
        "transformers", "any-to-any", "apache-2.0"
    )
    assert {"dreamllm", "toy", "custom_code"} <= set(card.data.tags)
    section = knowledge(card.text)
    for word in [*COLORS, *SHAPES, *POSITION_PHRASES.values()]:
        assert word in section, word


def test_committed_card_is_the_generated_one(tmp_path):
    assert_card(CHECKPOINT / "README.md")
    shutil.copy(CHECKPOINT / "README.md", tmp_path / "README.md")
    refresh_model_card(tmp_path)
    assert (tmp_path / "README.md").read_text() == (CHECKPOINT / "README.md").read_text()


def test_refresh_keeps_every_line_of_the_run(tmp_path):
    text = (CHECKPOINT / "README.md").read_text()
    old = text.replace(KNOWLEDGE_HEADING + knowledge(text), "")  # a card written before the vocabulary section
    (tmp_path / "README.md").write_text(old)
    refresh_model_card(tmp_path)
    new = (tmp_path / "README.md").read_text()
    assert [line for line in old.splitlines() if line not in new.splitlines()] == []
    assert_card(tmp_path / "README.md")


def test_a_new_run_writes_the_same_kind_of_card(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    write_model_card(tmp_path, "metric  value\n------  -----\nx       1.0%", {"stage0": 10.0, "sft": 5.0}, seed=3,
                     scale=0.05)
    assert_card(tmp_path / "README.md")
    text = (tmp_path / "README.md").read_text()
    assert "x       1.0%" in text and "--seed 3 --scale 0.05" in text and "stage0 10, sft 5" in text
    refresh_model_card(tmp_path)  # a card a run writes is already what a refresh would write
    assert (tmp_path / "README.md").read_text() == text
