"""DreamLLMProcessor on bad or unusual inputs: forged block tokens, malformed chats, every kind of image input, and
out-of-range arguments end in an error naming the input, or in the right encoding."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile


@pytest.fixture
def processor(tiny_processor):
    return tiny_processor


def pixels(processor, image):
    return processor(text="<image>", images=[image])["pixel_values"]


@pytest.mark.parametrize("token", ["<im_patch>", "<im_start>", "<im_end>", "<dream_start>", "<dream_end>"])
def test_block_tokens_never_come_from_text(processor, token):
    with pytest.raises(ValueError, match=f"text\\[0\\] contains '{token}'"):
        processor(text=f"a cat {token} on a mat")
    # The documented placeholders still expand, and only into whole blocks.
    ids = processor(text="a red circle<dream>")["input_ids"][0].tolist()
    assert ids.count(processor.dream_start_token_id) == 1
    assert ids.count(processor.image_patch_token_id) == processor.num_dream_queries


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "tool", "content": "42"}], r"messages\[0\] has role 'tool'"),
        ([{"role": "user", "content": "hi"}, {"role": "system", "content": "obey"}], r"messages\[1\] has role 'system'"),
        ([{"role": "narrator", "content": "once"}], "has role 'narrator'"),
        ([{"content": "who am I"}], r"messages\[0\] has no 'role'"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": None}], "has no 'content'"),
        ([{"role": "user", "content": [{"type": "video"}]}], r"messages\[0\]\['content'\]\[0\]"),
        ([{"role": "user", "content": [{"type": "text"}]}], "is not a content item"),
        ([{"role": "system", "content": [{"type": "image"}]}], "system messages hold text only"),
        ([], "is empty"),
    ],
)
def test_malformed_chats_are_clear_errors(processor, messages, message):
    with pytest.raises(ValueError, match=message):
        processor.apply_chat_template(messages, tokenize=False)


def test_saved_chat_template_itself_refuses_unknown_roles(processor):
    # Tools that render the folder's chat_template.jinja directly must not turn a tool turn into ASSISTANT text.
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "content": "LEAKED"}]
    with pytest.raises(Exception, match="got role 'tool'"):
        processor.tokenizer.apply_chat_template(messages, chat_template=processor.chat_template, tokenize=False)


@pytest.mark.parametrize("bad", [None, 7, b"\x89PNG", {"path": "cat.png"}, "cat.png"])
def test_non_images_are_type_errors_naming_the_position(processor, rgb_image, bad):
    with pytest.raises(TypeError, match=r"images\[1\] is a"):
        processor(text="<image><image>", images=[rgb_image, bad])


def test_unreadable_and_empty_images_are_value_errors(processor, rgb_image, monkeypatch):
    # PIL's own policy decides whether a truncated file is an error; some libraries (lmms-eval, on import) turn it off
    # for the whole process, so the test states the default it checks.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    buffer = io.BytesIO()
    rgb_image.save(buffer, format="PNG")
    truncated = Image.open(io.BytesIO(buffer.getvalue()[: len(buffer.getvalue()) // 2]))
    closed = Image.open(io.BytesIO(buffer.getvalue()))
    closed.close()
    for image, message in [
        (truncated, "cannot be read"),
        (closed, "cannot be read"),
        (Image.new("RGB", (0, 0)), r"is empty \(0x0"),
        (np.zeros((0, 4, 3), np.uint8), "is empty"),
    ]:
        with pytest.raises(ValueError, match=rf"images\[0\] {message}"):
            processor(text="<image>", images=[image])


def test_array_images_become_the_same_pixels_as_pil(processor, rgb_image):
    array = np.array(rgb_image)
    expected = pixels(processor, rgb_image)
    torch.testing.assert_close(pixels(processor, array), expected)
    torch.testing.assert_close(pixels(processor, torch.from_numpy(array).permute(2, 0, 1)), expected)  # (C, H, W)
    torch.testing.assert_close(pixels(processor, array.astype(np.float32) / 255), expected)  # float in [0, 1]
    gray = array[..., 0]
    torch.testing.assert_close(pixels(processor, gray), pixels(processor, Image.fromarray(gray, mode="L")))  # 2-D


def test_sixteen_bit_images_are_scaled_not_saturated(processor):
    mid_gray_16 = Image.fromarray(np.full((40, 48), 32896, dtype=np.uint16))  # 128 * 257
    mid_gray_8 = Image.new("RGB", (48, 40), (128, 128, 128))
    torch.testing.assert_close(pixels(processor, mid_gray_16), pixels(processor, mid_gray_8))
    torch.testing.assert_close(pixels(processor, np.full((40, 48, 3), 32896, np.uint16)), pixels(processor, mid_gray_8))


@pytest.mark.parametrize(
    "image, message",
    [
        (np.full((8, 8, 3), 200.0, np.float32), r"values in \[200, 200\]: float pixels must lie in \[0, 1\]"),
        (np.zeros((2, 8, 8, 3), np.uint8), r"array of shape \(2, 8, 8, 3\).*one per placeholder"),
        (np.zeros((8, 8, 5), np.uint8), "expected 1, 3 or 4 channels"),
        (np.full((8, 8, 3), 300, np.int32), r"values in \[300, 300\]"),
        (np.full((8, 8, 3), np.nan, np.float32), "NaN or infinite values"),
    ],
)
def test_ambiguous_arrays_are_value_errors(processor, image, message):
    with pytest.raises(ValueError, match=message):
        processor(text="<image>", images=[image])


def test_a_batch_array_is_not_several_images(processor):
    with pytest.raises(ValueError, match="one per placeholder"):
        processor(text="<image>", images=np.zeros((2, 8, 8, 3), np.uint8))


def test_bad_text_and_lengths_are_clear_errors(processor):
    with pytest.raises(ValueError, match="empty list"):
        processor(text=[])
    with pytest.raises(TypeError, match=r"text\[1\] is a int"):
        processor(text=["fine", 3])
    for max_length in (0, -5, 2.5):
        with pytest.raises(ValueError, match="max_length must be a positive integer"):
            processor(text="a red circle", max_length=max_length)
    with pytest.raises(ValueError, match="padding_side"):
        processor(text="a red circle", padding_side="middle")


def test_loading_picks_the_pil_backend_without_a_fallback_warning(tiny_folder):
    import subprocess
    import sys

    script = (
        "from transformers import AutoProcessor\n"
        f"p = AutoProcessor.from_pretrained({str(tiny_folder)!r}, trust_remote_code=True)\n"
        "print(type(p.image_processor).__name__, type(p.diffusion_image_processor).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.split() == ["CLIPImageProcessorPil", "CLIPImageProcessorPil"]
    assert "requires torchvision" not in result.stderr


def test_text_that_is_not_valid_unicode_names_where_it_is(processor):
    with pytest.raises(ValueError, match=r"text\[1\] holds a lone surrogate '\\ud800' at character 2"):
        processor(text=["fine", "a \ud800 b"])
    with pytest.raises(ValueError, match=r"messages\[0\]\['content'\]\[0\]\['text'\] holds a lone surrogate"):
        processor.apply_chat_template([{"role": "user", "content": [{"type": "text", "text": "\ud83d"}]}])
    # A surrogate pair written as one character is ordinary text.
    assert processor(text="a \U0001f600 b")["input_ids"].shape[0] == 1

