"""The shapes world's held-out understanding questions as lmms-eval tasks, built locally from the world's generator
(no download): `shapes_vqa` (written answers, judged like `python -m train.toy evaluate`) and `shapes_vqa_mc`
(multiple choice over the attribute's values, scored by log-likelihood).

    python -m eval.understanding --model checkpoints/toy --tasks shapes_vqa,shapes_vqa_mc
    lmms-eval --model dreamllm --model_args pretrained=checkpoints/toy --tasks shapes_vqa --include_path eval/lmms_tasks

lmms-eval loads this file next to the task YAMLs (their `!function` entries); the repository root must be importable
(run from it, or install the project).
"""

from __future__ import annotations

import datasets
from lmms_eval.api.task import ConfigurableTask

from train.toy.evaluate import FULL, UNDERSTANDING_SEED, answer_is_right, understanding_questions
from train.toy.world import ATTRIBUTE_VALUES, render

FEATURES = datasets.Features(
    {
        "question_id": datasets.Value("int32"),
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answer": datasets.Value("string"),
        "kind": datasets.Value("string"),
        "num_shapes": datasets.Value("int32"),
        "choices": datasets.Sequence(datasets.Value("string")),
    }
)


def build_dataset(num_questions: int = FULL["num_questions"], seed: int = UNDERSTANDING_SEED) -> datasets.Dataset:
    """The questions `python -m train.toy evaluate` asks, in its order, with their rendered pictures."""
    rows = [
        {
            "question_id": index,
            "image": render(scene),
            "question": qa.question,
            "answer": qa.answer,
            "kind": qa.kind,
            "num_shapes": len(scene.shapes),
            "choices": list(ATTRIBUTE_VALUES[qa.kind]),
        }
        for index, (scene, qa) in enumerate(understanding_questions(num_questions, seed))
    ]
    return datasets.Dataset.from_list(rows, features=FEATURES)


class ShapesVQA(ConfigurableTask):
    """A YAML-configured task whose `test` split is built by `build_dataset(**dataset_kwargs)` instead of loaded."""

    def __init__(self, config: dict | None = None, **kwargs):
        # The index entry's `class` key names this class; the rest is an ordinary TaskConfig.
        super().__init__(config={key: value for key, value in (config or {}).items() if key != "class"}, **kwargs)

    def download(self, dataset_kwargs: dict | None = None) -> None:
        docs = build_dataset(**(dataset_kwargs or {}))
        self.dataset = datasets.DatasetDict({"test": docs})
        self.dataset_no_image = datasets.DatasetDict({"test": docs.remove_columns("image")})


def doc_to_visual(doc: dict) -> list:
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: dict, lmms_eval_specific_kwargs: dict | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def doc_to_choice(doc: dict) -> list[str]:
    return list(doc["choices"])


def doc_to_target_index(doc: dict) -> int:
    return list(doc["choices"]).index(doc["answer"])


def process_results(doc: dict, results: list[str]) -> dict[str, bool]:
    """Overall accuracy and the accuracy of the question's kind (colour, shape or position)."""
    right = answer_is_right(results[0], doc["answer"])
    return {"accuracy": right, doc["kind"]: right}
