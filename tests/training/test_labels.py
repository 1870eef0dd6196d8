"""Training encodings (train/data/labels.py): labels on the processor's own expansion, eos, right padding, whole-unit
truncation, and chats labelled on the assistant replies only; malformed chats are errors naming the message."""

import pytest
import torch

from processing_dreamllm import IGNORE_INDEX
from train.data.labels import encode_conversation, encode_documents


@pytest.fixture
def processor(tiny_processor):
    return tiny_processor


def test_labels_learn_text_eos_and_dream_start_only(processor, rgb_image):
    batch = encode_documents(processor, "A cat.<image>Draw it.<dream>", images=[rgb_image, rgb_image])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    learned = labels != IGNORE_INDEX
    assert torch.equal(labels[learned], ids[learned])
    learned_ids = set(ids[learned].tolist())
    assert processor.dream_start_token_id in learned_ids and processor.eos_token_id in learned_ids
    for unlearned in (
        processor.image_patch_token_id,
        processor.image_start_token_id,
        processor.image_end_token_id,
        processor.dream_end_token_id,
        processor.bos_token_id,
    ):
        assert unlearned not in learned_ids
    text_ids = processor.tokenizer("A cat.Draw it.", add_special_tokens=False)["input_ids"]
    assert int(learned.sum()) >= len(text_ids) - 2  # all text tokens (tokenization may merge across the cut)


def test_nested_images_per_document_and_padding_sides(processor, rgb_image):
    texts = ["<image> short", "a much longer text that goes on <image> and on"]
    left = processor(text=texts, images=[[rgb_image], [rgb_image]])
    right = encode_documents(processor, texts, images=[[rgb_image], [rgb_image]])
    assert right["input_ids"].shape[1] == left["input_ids"].shape[1] + 1  # </s> when training
    pad = processor.pad_token_id
    assert left["input_ids"][0, 0] == pad and left["attention_mask"][0, 0] == 0
    assert right["input_ids"][0, -1] == pad and right["labels"][0, -1] == IGNORE_INDEX
    assert torch.equal(left["attention_mask"].sum(1), right["attention_mask"].sum(1) - 1)  # + </s> when training


def test_truncation_never_cuts_inside_a_block(processor, rgb_image):
    n = processor.num_image_tokens
    full = encode_documents(processor, "one two<image>three four five", images=[rgb_image])
    length = full["input_ids"].shape[1]
    cut_inside_block = 1 + 2 + n // 2  # would end in the middle of the image block
    truncated = encode_documents(
        processor, "one two<image>three four five", images=[rgb_image], max_length=cut_inside_block
    )
    ids = truncated["input_ids"][0].tolist()
    assert processor.image_patch_token_id not in ids and "pixel_values" not in truncated
    assert ids[-1] == processor.eos_token_id and len(ids) <= cut_inside_block
    kept = processor(text="one two<image>three four five", images=[rgb_image], max_length=length - 1, add_eos=False)
    assert kept["input_ids"][0].tolist().count(processor.image_patch_token_id) == n
    with pytest.raises(ValueError, match="over max_length"):
        processor(text="one two<image>three", images=[rgb_image], max_length=10, truncation=False)


def test_encode_conversation_labels_assistant_replies_only(processor, rgb_image):
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": "A cat."},
    ]
    encoded = encode_conversation(processor, messages, images=[rgb_image])
    rendered = processor.apply_chat_template(messages, tokenize=False)
    plain = processor(text=rendered, images=[rgb_image], add_eos=False)
    assert torch.equal(encoded["input_ids"], plain["input_ids"])
    ids, labels = encoded["input_ids"][0], encoded["labels"][0]
    learned_text = processor.tokenizer.decode(ids[labels != IGNORE_INDEX])
    assert learned_text.strip() == "A cat.</s>"


def test_messages_that_are_not_dicts_or_lists_are_type_errors(processor):
    with pytest.raises(TypeError, match="must be a list"):
        encode_conversation(processor, "USER: hi")
    with pytest.raises(TypeError, match=r"messages\[0\] must be a dict"):
        encode_conversation(processor, ["hi"])


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "What is this?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    ],
)
def test_a_conversation_with_nothing_to_learn_is_refused(processor, messages):
    with pytest.raises(ValueError, match="messages has nothing to learn: no assistant reply"):
        encode_conversation(processor, messages)
    # An empty reply still teaches the end of the turn.
    batch = encode_conversation(processor, messages + [{"role": "assistant", "content": ""}])
    assert (batch["labels"] != IGNORE_INDEX).sum() == 1


@pytest.mark.parametrize("token", ["<im_patch>", "<dream_start>"])
def test_block_tokens_never_come_from_a_chat_or_a_document(processor, token):
    with pytest.raises(ValueError, match=f"text\\[0\\] contains '{token}'"):
        encode_documents(processor, f"a cat {token} on a mat")
    with pytest.raises(ValueError, match=f"contains '{token}'"):
        encode_conversation(
            processor, [{"role": "user", "content": f"say {token}"}, {"role": "assistant", "content": "no"}]
        )


@pytest.mark.parametrize(
    "messages, message",
    [
        ([{"role": "tool", "content": "42"}], r"messages\[0\] has role 'tool'"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": [{"type": "video"}]}], r"messages\[0\]\['content'\]\[0\]"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x\udfff"}],
            r"messages\[1\]\['content'\] holds a lone surrogate",
        ),
        ([], "is empty"),
    ],
)
def test_malformed_chats_are_clear_errors(processor, messages, message):
    with pytest.raises(ValueError, match=message):
        encode_conversation(processor, messages)


def test_max_length_one_keeps_only_the_learned_eos(processor):
    one = encode_documents(processor, "a red circle", max_length=1)  # room for `</s>` only
    assert one["input_ids"][0].tolist() == [processor.eos_token_id] and one["labels"][0].tolist() != [IGNORE_INDEX]
