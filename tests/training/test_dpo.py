"""Preference tuning with TRL's DPOTrainer: the batch layout, a short run whose loss falls, and its adapter loading
back onto the base folder."""

import json
import math
import shutil

import pytest
import torch
from peft import PeftModel

from train.dpo import DreamLLMPreferenceCollator, load_preferences, main
from train.errors import InputError
from train.stages import load_model, load_processor
from train.toy.preferences import preference_pairs, write_preferences
from train.toy.world import ATTRIBUTE_VALUES

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_a_preference_row_reads_as_the_chat_template_renders_the_conversation(tiny_folder):
    processor = load_processor(tiny_folder)
    rows = preference_pairs(3, seed=1)
    batch = DreamLLMPreferenceCollator(processor)(rows)
    assert batch["input_ids"].shape[0] == 6 and batch["pixel_values"].shape[0] == 6  # chosen rows, then rejected
    for index, row in enumerate(rows):
        for offset, key in ((0, "chosen"), (3, "rejected")):
            text = processor.apply_chat_template(row["prompt"] + row[key], tokenize=False)
            whole = processor(text=text, images=row["images"]).input_ids[0]
            got = batch["input_ids"][index + offset][batch["attention_mask"][index + offset].bool()]
            assert got.tolist() == whole.tolist()
            reply = batch["input_ids"][index + offset][batch["completion_mask"][index + offset].bool()]
            answer = row[key][0]["content"][0]["text"]
            assert processor.tokenizer.decode(reply).replace(" ", "") == f"{answer}</s>"


def test_preference_pairs_reject_a_wrong_colour_or_shape():
    rows = preference_pairs(40, seed=2)
    kinds = []
    for row in rows:
        question = row["prompt"][0]["content"][1]["text"]
        chosen, rejected = row["chosen"][0]["content"][0]["text"], row["rejected"][0]["content"][0]["text"]
        kind = "color" if question.startswith("What color") else "shape"
        assert question.startswith(("What color", "What shape")) and row["prompt"][0]["content"][0] == {"type": "image"}
        assert chosen != rejected and {chosen, rejected} <= set(ATTRIBUTE_VALUES[kind])
        kinds.append(kind)
    assert kinds.count("color") == kinds.count("shape") == 20


def test_load_preferences_reads_jsonl_with_image_paths_and_names_bad_rows(tmp_path):
    row = preference_pairs(1, seed=3)[0]
    row["images"][0].save(tmp_path / "picture.png")
    (tmp_path / "pairs.jsonl").write_text(json.dumps({**row, "images": ["picture.png"]}) + "\n")
    dataset = load_preferences(tmp_path / "pairs.jsonl")
    assert dataset[0]["images"][0].size == row["images"][0].size and dataset[0]["chosen"] == row["chosen"]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"images": [], "prompt": row["prompt"]}) + "\n")
    with pytest.raises(InputError, match="chosen"):
        load_preferences(tmp_path / "bad.jsonl")
    with pytest.raises(InputError, match="no such"):
        load_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="no such folder"):
        main(["--model_name_or_path", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out"), "--data",
              str(tmp_path / "pairs.jsonl")])
    assert not (tmp_path / "out").exists()


def logps(model, batch):
    """Summed log-probabilities of each row's reply."""
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}
    with torch.no_grad():
        logits = model(**inputs).logits[:, :-1].float()
    token = torch.log_softmax(logits, -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (token * batch["completion_mask"][:, 1:]).sum(-1)


def test_a_short_dpo_run_lowers_its_loss_and_its_adapter_loads(tiny_folder, tmp_path):
    data = write_preferences(tmp_path / "pairs", 16, seed=4)
    output = tmp_path / "dpo"
    trainer = main(["--model_name_or_path", str(tiny_folder), "--output_dir", str(output), "--data", str(data),
                    "--lora_r", "4", "--learning_rate", "2e-2", "--max_steps", "8", "--per_device_train_batch_size",
                    "4", "--logging_steps", "1", "--save_steps", "4", "--disable_tqdm", "true", "--seed", "0",
                    "--beta", "0.5"])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 8 and all(math.isfinite(value) for value in losses)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3)  # a new adapter is the reference at first
    assert sum(losses[-3:]) / 3 < losses[0] - 0.1
    for folder in (output, output / "checkpoint-4", output / "checkpoint-8"):
        assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    assert not list(tmp_path.glob(".*staging"))
    config = json.loads((output / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_folder.resolve()) and not config["modules_to_save"]

    processor = load_processor(output)  # the processor travels with the adapter
    batch = DreamLLMPreferenceCollator(processor)(preference_pairs(8, seed=4))  # the training pairs
    base = load_model(tiny_folder).eval()
    before = logps(base, batch)
    tuned = PeftModel.from_pretrained(load_model(tiny_folder), output).eval()
    after = logps(tuned, batch)
    margin_before = (before[:8] - before[8:]).mean()
    margin_after = (after[:8] - after[8:]).mean()
    assert margin_after > margin_before + 0.2  # chosen replies gained on rejected ones (0.4 nats here)


def test_dpo_resumes_from_an_adapter_checkpoint_on_the_same_curve(tiny_folder, tmp_path):
    data = write_preferences(tmp_path / "pairs", 16, seed=5)

    def run(output, *extra):
        return main(["--model_name_or_path", str(tiny_folder), "--output_dir", str(output), "--data", str(data),
                     "--lora_r", "4", "--learning_rate", "2e-2", "--max_steps", "4", "--per_device_train_batch_size",
                     "4", "--logging_steps", "1", "--save_steps", "2", "--disable_tqdm", "true", "--seed", "0",
                     *extra])

    full = run(tmp_path / "full")
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "full" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run(tmp_path / "resumed", "--resume_from_checkpoint", "last")
    expected = [entry["loss"] for entry in full.state.log_history if "loss" in entry and entry["step"] > 2]
    got = [entry["loss"] for entry in resumed.state.log_history if "loss" in entry and entry["step"] > 2]
    assert len(got) == len(expected) == 2 and got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    with pytest.raises(InputError, match="holds another run"):
        run(tmp_path / "full")
