"""DreamLLMProcessor: placeholder expansion, images, padding, chat template, save/load.
Training labels are tested with the training code (tests/training/test_labels.py)."""

import pytest
import torch
from transformers import AutoProcessor

from processing_dreamllm import SYSTEM_PROMPT, DreamLLMProcessor


@pytest.fixture
def processor(tiny_processor) -> DreamLLMProcessor:
    return tiny_processor


def runs(ids: list[int], processor) -> list[tuple[str, int]]:
    """Compress a sequence into (token or 'text', run length) pairs for readable layout checks."""
    names = {
        processor.image_start_token_id: "<im_start>", processor.image_end_token_id: "<im_end>",
        processor.image_patch_token_id: "<im_patch>", processor.dream_start_token_id: "<dream_start>",
        processor.dream_end_token_id: "<dream_end>", processor.bos_token_id: "<s>", processor.eos_token_id: "</s>",
    }
    out = []
    for token in ids:
        name = names.get(token, "text")
        if out and out[-1][0] == name and name in ("text", "<im_patch>"):
            out[-1] = (name, out[-1][1] + 1)
        else:
            out.append((name, 1))
    return out


def test_image_and_dream_expand_to_the_official_blocks(processor, rgb_image):
    n, q = processor.num_image_tokens, processor.num_dream_queries
    batch = processor(text="A cat.<image>Draw it again.<dream>", images=[rgb_image, rgb_image], add_eos=True)
    layout = runs(batch["input_ids"][0].tolist(), processor)
    assert [name for name, _ in layout] == [
        "<s>", "text", "<im_start>", "<im_patch>", "<im_end>", "text",
        "<dream_start>", "<im_patch>", "<dream_end>", "<im_start>", "<im_patch>", "<im_end>", "</s>",
    ]
    assert [length for name, length in layout if name == "<im_patch>"] == [n, q, n]
    assert batch["pixel_values"].shape[0] == 2 and batch["target_pixel_values"].shape[0] == 1


def test_targets_are_in_minus_one_one_at_decoder_resolution(processor):
    from PIL import Image

    half_white = Image.new("RGB", (64, 48))
    half_white.paste((255, 255, 255), (0, 0, 32, 48))
    targets = processor(text="draw<dream>", images=[half_white])["target_pixel_values"]
    size = processor.diffusion_image_processor.crop_size["height"]
    assert targets.shape == (1, 3, size, size)
    assert targets.min() == -1 and targets.max() == 1
    assert targets[..., 0].min() == 1 and targets[..., -1].max() == -1  # no horizontal flip


def test_trailing_dreams_may_come_without_images(processor, rgb_image):
    batch = processor(text="<image> a story<dream> and more<dream>", images=[rgb_image, rgb_image])
    assert batch["pixel_values"].shape[0] == 2  # the input image and the first creation's read-back
    assert batch["target_pixel_values"].shape[0] == 1
    no_images = processor(text="a red circle<dream>")
    assert "pixel_values" not in no_images and "target_pixel_values" not in no_images


def test_image_count_mismatch_names_both_counts(processor, rgb_image):
    with pytest.raises(ValueError, match="2 <image> and 0 <dream> placeholders but 1 images"):
        processor(text="<image> and <image>", images=[rgb_image])
    with pytest.raises(ValueError, match="1 <image> and 0 <dream> placeholders but 2 images"):
        processor(text="<image> only", images=[rgb_image, rgb_image])
    with pytest.raises(ValueError, match="every <image> needs an image"):
        processor(text="<dream> then <image>", images=[rgb_image])


def test_chat_template_is_vicuna_v1_1(processor):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Draw it."},
    ]
    rendered = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == f"{SYSTEM_PROMPT} USER: <image>\nWhat is this? ASSISTANT: A cat.</s>USER: Draw it. ASSISTANT:"
    custom = processor.apply_chat_template([{"role": "system", "content": "Be brief."}, *messages[:1]], tokenize=False)
    assert custom == "Be brief. USER: <image>\nWhat is this? "


def test_save_and_load_through_auto_processor(processor, tmp_path, rgb_image):
    processor.save_pretrained(tmp_path)
    loaded = AutoProcessor.from_pretrained(tmp_path, trust_remote_code=True)
    assert (loaded.num_image_tokens, loaded.num_dream_queries) == (processor.num_image_tokens, processor.num_dream_queries)
    a = processor(text="<image> hi<dream>", images=[rgb_image, rgb_image])
    b = loaded(text="<image> hi<dream>", images=[rgb_image, rgb_image])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_options_are_refused_not_dropped(processor):
    with pytest.raises(TypeError, match="return_labels: .*train.data.labels"):
        processor(text="a red circle", return_labels=True)


def test_call_options_follow_transformers_processor_kwargs(processor):
    flat = processor(text=["a", "a longer text"], padding_side="right", add_eos=True)
    nested = processor(text=["a", "a longer text"], text_kwargs={"padding_side": "right", "add_eos": True})
    assert torch.equal(flat["input_ids"], nested["input_ids"])
    assert flat["input_ids"][0, -1] == processor.pad_token_id
    assert processor.eos_token_id in flat["input_ids"][0].tolist()
    assert processor(text="a", return_tensors=None)["input_ids"] == [processor.tokenizer("a")["input_ids"]]


def test_missing_special_tokens_are_reported():
    from transformers import CLIPImageProcessor

    from train.tiny_random import build_tiny_tokenizer

    with pytest.raises(ValueError, match="lacks the DreamLLM special tokens"):
        DreamLLMProcessor(CLIPImageProcessor(), build_tiny_tokenizer(), CLIPImageProcessor())
