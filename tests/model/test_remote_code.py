"""The assembled folder is true remote code: it loads through the Auto classes in a fresh process elsewhere."""

import json

import pytest

from train.assemble import AUTO_MAP, assemble

CODE_FILES = {"configuration_dreamllm.py", "modeling_dreamllm.py", "processing_dreamllm.py"}


def test_folder_layout(tiny_folder):
    names = {path.name for path in tiny_folder.iterdir()}
    assert CODE_FILES <= names
    assert {"config.json", "model.safetensors", "generation_config.json", "processor_config.json",
            "tokenizer.json", "chat_template.jinja", "unet", "vae", "scheduler"} <= names
    config = json.loads((tiny_folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    # The parts' local folders must not travel into a published config.
    assert "_name_or_path" not in config["text_config"] and "_name_or_path" not in config["vision_config"]
    processor = json.loads((tiny_folder / "processor_config.json").read_text())
    assert processor["auto_map"] == {"AutoProcessor": "processing_dreamllm.DreamLLMProcessor"}
    generation = json.loads((tiny_folder / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (1, 2)


def test_auto_classes_load_in_a_fresh_process_outside_the_repo(tiny_folder, tmp_path):
    from conftest import run_isolated

    output = run_isolated(
        f"""
        import numpy as np, torch
        from PIL import Image
        from transformers import (AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText,
                                  AutoProcessor)
        folder = {str(tiny_folder)!r}
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        assert type(config).__name__ == "DreamLLMConfig"
        assert type(AutoModel.from_pretrained(folder, trust_remote_code=True)).__name__ == "DreamLLMModel"
        image_text = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
        assert type(image_text).__name__ == "DreamLLMForConditionalGeneration"
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
        inputs = processor(text="<image>\\nWhat is this?", images=[image])
        new = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        print("new tokens", new.shape[1] - inputs["input_ids"].shape[1])
        doc = processor(text="A photo.<image>Draw it.<dream>", images=[image, image])
        doc.pop("target_pixel_values")
        doc["labels"] = doc["input_ids"].masked_fill(doc["input_ids"] == processor.image_patch_token_id, -100)
        out = model(**doc)
        assert torch.isfinite(out.loss)
        print("condition", tuple(out.condition_embeds.shape))
        print("all trainable", all(p.requires_grad for p in model.parameters()))  # freezing is training's choice
        """,
        cwd=tmp_path,
    )
    assert "new tokens 4" in output
    assert "condition (1, 8, 16)" in output
    assert "all trainable True" in output


def test_assemble_refuses_incomplete_decoder_and_leaves_nothing(tmp_path):
    from train.tiny_random import build_tiny_components

    parts = build_tiny_components(tmp_path / "parts")
    (parts["diffusion"] / "vae" / "config.json").unlink()
    (parts["diffusion"] / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (parts["diffusion"] / "vae").rmdir()
    with pytest.raises(FileNotFoundError, match=r"missing \['vae'\]"):
        assemble(parts["llm"], parts["vision"], parts["diffusion"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["parts"]


def test_assemble_failure_midway_leaves_no_partial_folder(tmp_path, monkeypatch):
    from train import assemble as assemble_module
    from train.tiny_random import build_tiny_components

    parts = build_tiny_components(tmp_path / "parts")

    def broken_copy(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(assemble_module.shutil, "copytree", broken_copy)
    with pytest.raises(OSError, match="disk full"):
        assemble(parts["llm"], parts["vision"], parts["diffusion"], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts"]


def test_assembled_tokens_and_embeddings(tiny_folder, tiny_model, tiny_processor):
    tokenizer = tiny_processor.tokenizer
    config = tiny_model.config
    assert len(tokenizer) == config.text_config.vocab_size == tiny_model.lm_head.out_features
    for name, token in [("dream_start_token_id", "<dream_start>"), ("image_patch_token_id", "<im_patch>")]:
        assert getattr(config, name) == tokenizer.convert_tokens_to_ids(token)
    assert tokenizer.pad_token == "[PAD]" and config.text_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.model_max_length == config.text_config.max_position_embeddings


def test_push_to_hub_uploads_the_saved_folder_with_its_code(tiny_model, monkeypatch):
    from transformers.utils import hub

    class FakeApi:
        uploaded: list[str] = []

        def create_repo(self, repo_id, **kwargs):
            return type("Repo", (), {"repo_id": repo_id})()

        def create_commit(self, repo_id, operations, **kwargs):
            FakeApi.uploaded = sorted(op.path_in_repo for op in operations)

    monkeypatch.setattr(hub, "hf_api", lambda: FakeApi())
    monkeypatch.setattr(hub, "create_and_tag_model_card", lambda *a, **k: type("Card", (), {"save": lambda s, p: open(p, "w").close()})())
    tiny_model.push_to_hub("someone/dreamllm-tiny")
    assert FakeApi.uploaded == sorted(
        ["README.md", "config.json", "generation_config.json", "model.safetensors", *CODE_FILES - {"processing_dreamllm.py"}]
    )
