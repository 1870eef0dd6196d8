"""Every supported LLM and vision family, end to end from tiny random parts saved in their native formats: assembled
with `python -m train.assemble --llm --vision --diffusion`, trained two `igpt` steps, saved, loaded back through the
Auto classes, then understanding with the KV cache and text-to-image through `DreamLLMPipeline`.

Adding a family is one branch in `train/tiny_random.py` and one row of `COMBINATIONS` (each LLM and each vision
family appears at least once)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor, AutoTokenizer

from processing_dreamllm import CHAT_TEMPLATE, IGNORE_INDEX
from train.assemble import main as assemble_main
from train.data.example_files import write_mmc4, write_pair_folder
from train.data.labels import encode_conversation
from train.stages import main as train_main
from train.tiny_random import (
    MISTRAL_CHAT_TEMPLATE,
    QWEN2_CHAT_TEMPLATE,
    build_tiny_components,
    save_tiny_llm,
    save_tiny_vision,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

COMBINATIONS = [("qwen2", "siglip"), ("mistral", "clip"), ("llama", "siglip"), ("qwen3", "clip")]
# What each family's native folder is (the class AutoTokenizer gives for it, as for the full-size checkpoints), and
# what DreamLLM must make of it.
LLM_FACTS = {
    "llama": dict(tokenizer="TokenizersBackend", layer="LlamaDecoderLayer", tied=False, bos=True,
                  template=CHAT_TEMPLATE),
    "qwen2": dict(tokenizer="Qwen2Tokenizer", layer="Qwen2DecoderLayer", tied=True, bos=False,
                  template=QWEN2_CHAT_TEMPLATE),
    "qwen3": dict(tokenizer="Qwen2Tokenizer", layer="Qwen3DecoderLayer", tied=True, bos=False,
                  template=QWEN2_CHAT_TEMPLATE),
    "mistral": dict(tokenizer="TokenizersBackend", layer="MistralDecoderLayer", tied=False, bos=True,
                    template=MISTRAL_CHAT_TEMPLATE),
}
VISION_FACTS = {
    "clip": dict(model_type="clip_vision_model", strategy="default", first=1, layer="CLIPEncoderLayer"),
    "siglip": dict(model_type="siglip_vision_model", strategy="full", first=0, layer="SiglipEncoderLayer"),
}
CHAT = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    {"role": "assistant", "content": "It is a cat on a red sofa."},
    {"role": "user", "content": "Draw a blue square."},
    {"role": "assistant", "content": "Here it is: <dream> A blue square."},
]


def image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("backbone-data")
    return [write_pair_folder(root / "pairs"), write_mmc4(root / "mmc4")]


@pytest.fixture(scope="module", params=COMBINATIONS, ids=["-".join(c) for c in COMBINATIONS])
def trained(request, tmp_path_factory, data) -> dict:
    """Native parts -> `train.assemble` -> two `igpt` steps; the assembled and the trained folders."""
    llm, vision = request.param
    root = tmp_path_factory.mktemp(f"{llm}-{vision}")
    parts = build_tiny_components(root / "parts", llm=llm, vision=vision)
    assembled = root / "assembled"
    assemble_main(["--llm", str(parts["llm"]), "--vision", str(parts["vision"]), "--diffusion",
                   str(parts["diffusion"]), "--output", str(assembled), "--num-dream-queries", "8"])
    output = root / "igpt"
    argv = ["--stage", "igpt", "--model_name_or_path", str(assembled), "--output_dir", str(output),
            "--data", str(data[0]), "--data", str(data[1]), "--max_steps", "2", "--per_device_train_batch_size", "2",
            "--bf16", "false", "--activation_checkpointing", "false", "--logging_steps", "1", "--save_steps", "100",
            "--disable_tqdm", "true", "--seed", "0", "--report_to", "none", "--learning_rate", "1e-3"]
    trainer = train_main(argv)
    losses = [(entry["lm_loss"], entry["diffusion_loss"]) for entry in trainer.state.log_history if "lm_loss" in entry]
    return dict(llm=llm, vision=vision, parts=parts, assembled=assembled, trained=output, losses=losses)


def test_native_parts_are_the_families_own_formats(tmp_path):
    """The tiny parts load through the Auto classes as the full-size checkpoints do."""
    for family, facts in LLM_FACTS.items():
        save_tiny_llm(tmp_path / family, family)
        assert type(AutoTokenizer.from_pretrained(tmp_path / family)).__name__ == facts["tokenizer"]
        config = AutoConfig.from_pretrained(tmp_path / family)
        assert config.model_type == family and config.tie_word_embeddings == facts["tied"]
    for family, facts in VISION_FACTS.items():
        save_tiny_vision(tmp_path / family, family)
        assert AutoConfig.from_pretrained(tmp_path / family).model_type == facts["model_type"]


def test_assembled_folder_follows_its_parts(trained):
    llm, vision = LLM_FACTS[trained["llm"]], VISION_FACTS[trained["vision"]]
    folder = trained["assembled"]
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    assert config.vision_config.model_type == vision["model_type"]
    assert (config.vision_feature_layer, config.vision_feature_select_strategy) == (-2, vision["strategy"])
    assert config.num_image_tokens == 16  # 4x4 patches, with CLIP's CLS dropped and SigLIP having none
    assert config.tie_word_embeddings == llm["tied"]
    assert (config.text_config.bos_token_id is not None) == llm["bos"]
    # tied: one matrix on disk (transformers re-ties it at load); untied: its own head
    assert ("lm_head.weight" in load_file(folder / "model.safetensors")) != llm["tied"]

    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    assert processor.chat_template == llm["template"]
    assert processor.num_image_tokens == config.num_image_tokens

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    assert {llm["layer"], vision["layer"]} <= set(model._no_split_modules)
    assert not {"LlamaDecoderLayer", "CLIPEncoderLayer"} - {llm["layer"], vision["layer"]} & set(model._no_split_modules)
    assert model.model.fsdp_wrap_classes == [llm["layer"]]
    # the null condition is the empty prompt's creation block exactly as the processor writes it
    assert model.model.null_condition_ids()[0].tolist() == processor(text="<dream>")["input_ids"][0].tolist()

    # image features: the chosen layer of the tower, CLS dropped only where there is one, through the projector
    pixels = processor(text="<image>", images=[image(0)])["pixel_values"]
    with torch.no_grad():
        features = model.get_image_features(pixels).pooler_output[0]
        states = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][0, vision["first"]:]
        expected = model.model.vision_projector(states)
    assert features.shape == (16, config.text_config.hidden_size)
    torch.testing.assert_close(features, expected)


def test_two_igpt_steps_then_the_auto_classes_understand_and_create(trained):
    from pipeline_dreamllm import DreamLLMPipeline

    llm = LLM_FACTS[trained["llm"]]
    assert len(trained["losses"]) == 2 and all(np.isfinite(trained["losses"]).all(axis=1))
    before = load_file(trained["assembled"] / "model.safetensors")
    after = load_file(trained["trained"] / "model.safetensors")
    assert set(before) == set(after)
    assert any(not torch.equal(before[key], after[key]) for key in before if key.startswith("model.language_model."))
    assert all(torch.equal(before[key], after[key]) for key in before if key.startswith("model.vision_tower."))

    model = AutoModelForCausalLM.from_pretrained(trained["trained"], trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(trained["trained"], trust_remote_code=True)
    embedding = model.get_input_embeddings().weight
    assert (model.lm_head.weight is embedding) == llm["tied"]
    if llm["tied"]:  # training moved the one shared matrix
        assert not torch.equal(after["model.language_model.embed_tokens.weight"],
                               before["model.language_model.embed_tokens.weight"])

    # understanding: an image question, greedy, with and without the KV cache
    prompt = processor.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=prompt, images=[image(1)])
    ids, bos = inputs["input_ids"][0].tolist(), processor.tokenizer.bos_token_id
    text_ids = processor.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if llm["bos"]:  # exactly one BOS, first, whether the template wrote it (Mistral) or the processor (Vicuna)
        assert ids[0] == bos and ids.count(bos) == 1
    else:  # no BOS at all: the document starts with the template's first token (<|im_start|>)
        assert bos is None and ids[0] == text_ids[0] == processor.tokenizer.convert_tokens_to_ids("<|im_start|>")
    cached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
    uncached = model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False)
    assert cached.shape == (1, inputs["input_ids"].shape[1] + 6) and torch.equal(cached, uncached)
    assert not set(cached[0, inputs["input_ids"].shape[1]:].tolist()) & set(model.config.special_token_ids)

    # text-to-image through the diffusers pipeline of the same folder, with classifier-free guidance
    pipe = DreamLLMPipeline.from_pretrained(trained["trained"])
    run = lambda text, seed: pipe(text, num_inference_steps=2, guidance_scale=2.0, output_type="np",  # noqa: E731
                                  generator=torch.Generator().manual_seed(seed)).images
    picture = run("a blue square", 0)
    assert picture.shape == (1, 16, 16, 3) and np.isfinite(picture).all()
    np.testing.assert_array_equal(picture, run("a blue square", 0))
    assert not np.array_equal(picture, run("a red circle on a sofa", 0))  # the prompt conditions the picture


def test_training_ids_are_inference_ids_on_each_real_format_tokenizer(trained):
    """SFT encodes a chat to the ids inference computes for the rendered chat; labels are the replies and their
    end-of-turn token only, whatever the family's template and BOS convention."""
    family = trained["llm"]
    processor = AutoProcessor.from_pretrained(trained["assembled"], trust_remote_code=True)
    tokenizer = processor.tokenizer
    images = [image(2), image(3)]
    encoded = encode_conversation(processor, CHAT, images=images)
    rendered = processor.apply_chat_template(CHAT, tokenize=False)
    inferred = processor(text=rendered, images=images)
    assert torch.equal(encoded["input_ids"], inferred["input_ids"])
    torch.testing.assert_close(encoded["pixel_values"], inferred["pixel_values"])

    ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    learned = tokenizer.decode(ids[labels != IGNORE_INDEX])
    end = tokenizer.eos_token
    assert learned.replace(" ", "") == f"Itisacatonaredsofa.{end}Hereitis:<dream_start>Abluesquare.{end}"
    # the user turns, the template's role markers and the image slots are never learned
    assert (labels[ids == processor.image_patch_token_id] == IGNORE_INDEX).all()
    assert "What" not in learned and "Draw" not in learned
    assert (ids[:1].tolist() == [tokenizer.bos_token_id]) == LLM_FACTS[family]["bos"]


def test_assemble_refuses_a_tower_it_cannot_read(tmp_path):
    from transformers import Siglip2VisionConfig, Siglip2VisionModel

    from train.tiny_random import TINY_VISION_SHAPE

    parts = build_tiny_components(tmp_path / "parts")
    shape = {key: value for key, value in TINY_VISION_SHAPE.items() if key != "image_size"}
    Siglip2VisionModel(Siglip2VisionConfig(**shape)).save_pretrained(tmp_path / "naflex")
    with pytest.raises(ValueError, match="'siglip2_vision_model' model; supported vision towers"):
        assemble_main(["--llm", str(parts["llm"]), "--vision", str(tmp_path / "naflex"), "--diffusion",
                       str(parts["diffusion"]), "--output", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit):
        assemble_main(["--preset", "tiny-random", "--llm", "gpt2", "--output", str(tmp_path / "out")])


def test_lora_on_a_tied_llm_trains_the_new_rows_and_saves_one_matrix(tmp_path, data):
    """Qwen2's tied head under LoRA: the merged folder holds the embedding once, the DreamLLM tokens' rows moved, and
    the loaded model is tied again."""
    folder = tmp_path / "qwen2"
    assemble_main(["--preset", "tiny-random", "--llm", "qwen2", "--vision", "siglip", "--output", str(folder)])
    output = tmp_path / "lora"
    train_main(["--stage", "sft", "--model_name_or_path", str(folder), "--output_dir", str(output), "--data",
                str(data[1]), "--max_steps", "2", "--per_device_train_batch_size", "2", "--bf16", "false",
                "--activation_checkpointing", "false", "--save_steps", "100", "--disable_tqdm", "true", "--seed", "0",
                "--report_to", "none", "--lora_r", "4", "--learning_rate", "1e-2", "--save_merged", "true"])
    before, after = load_file(folder / "model.safetensors"), load_file(output / "model.safetensors")
    assert set(before) == set(after) and "lm_head.weight" not in after
    key = "model.language_model.embed_tokens.weight"
    model = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    moved = (before[key] != after[key]).any(-1).nonzero().flatten().tolist()
    assert moved and set(moved) <= set(model.config.special_token_ids)
    assert model.lm_head.weight is model.get_input_embeddings().weight
    torch.testing.assert_close(model.lm_head.weight, after[key])


def test_a_gathered_state_dict_of_a_tied_llm_is_saved_with_one_matrix(tmp_path):
    """FSDP's full state dict names the tied head and the embedding both; the trainer saves the matrix once."""
    from train.trainer import without_tied_copies

    folder = tmp_path / "qwen2"
    assemble_main(["--preset", "tiny-random", "--llm", "qwen2", "--vision", "clip", "--output", str(folder)])
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)
    gathered = model.state_dict()
    assert "lm_head.weight" in gathered  # what FSDP's FULL_STATE_DICT hands to the save
    kept = without_tied_copies(model, gathered)
    assert set(gathered) - set(kept) == {"lm_head.weight"}
    model.save_pretrained(tmp_path / "saved", state_dict=kept)
    assert set(load_file(tmp_path / "saved" / "model.safetensors")) == set(load_file(folder / "model.safetensors"))
    llama = AutoModelForCausalLM.from_pretrained(build_tiny_components(tmp_path / "parts")["llm"])
    assert without_tied_copies(llama, llama.state_dict()).keys() == llama.state_dict().keys()  # untied: all kept
