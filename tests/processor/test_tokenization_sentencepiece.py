"""Chat tokenization on a real SentencePiece LLaMA tokenizer (as the released checkpoints use): the ids training
learns from are the ids inference computes for the same rendered chat, with the assistant replies labelled."""

import pytest
import torch

spm = pytest.importorskip("sentencepiece", reason="sentencepiece is in requirements.txt; needed to train the tokenizer")
pytest.importorskip("google.protobuf", reason="protobuf is in requirements.txt; transformers needs it to read .model")

from transformers import CLIPImageProcessorPil, LlamaTokenizer  # noqa: E402

from processing_dreamllm import IGNORE_INDEX, DreamLLMProcessor  # noqa: E402
from train.assemble import add_special_tokens  # noqa: E402
from train.data.labels import encode_conversation  # noqa: E402

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is in this picture? ASSISTANT: It is a photo of a cat sitting on a red sofa.",
    "Draw a blue square in the center. Tell a short story with pictures, please.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]
MESSAGES = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in this picture?"}]},
    {"role": "assistant", "content": "It is a cat on a red sofa."},
    {"role": "user", "content": "Draw a blue square."},
    {"role": "assistant", "content": "Here it is: <dream> A blue square."},
]


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> DreamLLMProcessor:
    """A LLaMA-style SentencePiece model (BPE, unk 0, bos 1, eos 2, byte fallback, dummy prefix), trained here and
    loaded the way the released checkpoints' `tokenizer.model` is."""
    folder = tmp_path_factory.mktemp("spm")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20),
        model_prefix=str(folder / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        byte_fallback=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    tokenizer = LlamaTokenizer.from_pretrained(folder)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    add_special_tokens(tokenizer)
    size = {"shortest_edge": 16}, {"height": 16, "width": 16}
    return DreamLLMProcessor(
        CLIPImageProcessorPil(size=size[0], crop_size=size[1]),
        tokenizer,
        CLIPImageProcessorPil(size=size[0], crop_size=size[1], image_mean=[0.5] * 3, image_std=[0.5] * 3),
        num_image_tokens=4,
        num_dream_queries=3,
    )


@pytest.fixture
def images():
    from PIL import Image

    return [Image.new("RGB", (20, 16), (200, 30, 30)), Image.new("RGB", (16, 16), (30, 30, 200))]


def test_training_ids_are_the_inference_ids_of_the_rendered_chat(processor, images):
    rendered = processor.apply_chat_template(MESSAGES, tokenize=False)
    training = encode_conversation(processor, MESSAGES, images=images)
    inference = processor(text=rendered, images=images, add_eos=False)
    assert torch.equal(training["input_ids"], inference["input_ids"])
    torch.testing.assert_close(training["pixel_values"], inference["pixel_values"])
    # And, block by block, exactly what the tokenizer makes of the whole rendered string.
    plain = [processor.bos_token_id] + processor.tokenizer(rendered, add_special_tokens=False)["input_ids"]
    expanded = []
    for token in plain:
        if token == processor.image_token_id:
            expanded += processor.image_block()
        elif token == processor.dream_token_id:
            expanded += processor.dream_block() + processor.image_block()
        else:
            expanded.append(token)
    assert training["input_ids"][0].tolist() == expanded


def test_assistant_replies_and_their_eos_are_the_only_labels(processor, images):
    batch = encode_conversation(processor, MESSAGES, images=images)
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    learned = labels != IGNORE_INDEX
    assert torch.equal(labels[learned], ids[learned])
    runs, current = [], []
    for token, is_learned in zip(ids.tolist(), learned.tolist()):
        if is_learned:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    # One run per reply (the second is split by its creation block, whose <dream_start> is learned).
    decode = processor.tokenizer.decode
    assert decode(runs[0]).strip() == "It is a cat on a red sofa.</s>"
    assert decode(runs[1]).strip() == "Here it is: <dream_start>"
    assert decode(runs[2]).strip() == "A blue square.</s>"
    assert len(runs) == 3  # nothing of the system prompt or the user turns is learned


def test_generation_prompt_ids_extend_the_training_prefix(processor, images):
    # What the model sees at inference after one turn is a prefix of what it learned from.
    first_turn = MESSAGES[:1]
    prompt = processor.apply_chat_template(first_turn, add_generation_prompt=True, tokenize=False)
    prompt_ids = processor(text=prompt, images=images[:1])["input_ids"][0].tolist()
    training_ids = encode_conversation(processor, MESSAGES[:2], images=images[:1])["input_ids"][0].tolist()
    assert training_ids[: len(prompt_ids)] == prompt_ids
