"""Training encodings: the processor's own expansion of a document (so training ids equal inference ids), with LM
labels, an eos token, and right padding.

    batch = encode_documents(processor, "A cat.<image>Draw it.<dream>", images=[cat, cat])
    batch = encode_conversation(processor, messages, images=[cat])   # labels on the assistant replies only
"""

from __future__ import annotations

from transformers import BatchFeature

from processing_dreamllm import IGNORE_INDEX, check_messages, flatten_content


def unlearned_ids(processor) -> set[int]:
    """Tokens the LM never learns to predict: `<s>`, padding and every block token but `<dream_start>`."""
    return {
        processor.bos_token_id,
        processor.pad_token_id,
        processor.image_patch_token_id,
        processor.image_start_token_id,
        processor.image_end_token_id,
        processor.dream_end_token_id,
    }


def _labels(processor, units, learned: list[bool]) -> list[int]:
    """Per-token labels of one expanded document: learned text tokens and the eos token are their own labels, a
    learned `<dream>` teaches its `<dream_start>` (where an image goes); blocks and the rest are IGNORE_INDEX."""
    unlearned, labels = unlearned_ids(processor), []
    for unit in units:
        learn = unit.source is None or learned[unit.source]
        unit_labels = [IGNORE_INDEX] * len(unit.ids)
        if learn and unit.ids[0] == processor.dream_start_token_id:
            unit_labels[0] = processor.dream_start_token_id
        elif learn and len(unit.ids) == 1 and unit.ids[0] not in unlearned:
            unit_labels[0] = unit.ids[0]
        labels += unit_labels
    return labels


def _encode(processor, encodings, learned, images, *, add_eos, truncation, max_length, return_tensors) -> BatchFeature:
    documents = processor.expand(encodings, images, add_eos=add_eos, truncation=truncation, max_length=max_length)
    batch = processor.collate(documents, padding=True, padding_side="right", return_tensors=None)
    width = len(batch["input_ids"][0])
    # `tokenizer.pad` pads the keys it knows (ids, mask); labels are padded here, on the same side.
    batch["labels"] = [
        (labels := _labels(processor, units, doc_learned)) + [IGNORE_INDEX] * (width - len(labels))
        for units, doc_learned in zip(documents, learned)
    ]
    return BatchFeature(data=dict(batch), tensor_type=return_tensors)


def encode_documents(
    processor,
    text: str | list[str],
    images=None,
    *,
    truncation: bool = True,
    max_length: int | None = None,
    return_tensors: str | None = "pt",
) -> BatchFeature:
    """Documents for training: the processor's ids with `</s>` appended, padded on the right, and `labels` (text,
    `</s>` and `<dream_start>` learned; every slot, the other markers, `<s>` and padding -100). Documents over
    `max_length` lose whole trailing units and keep their `</s>`, or raise with `truncation=False`."""
    texts = processor._check_texts(text)
    encodings = [processor.tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in texts]
    learned = [[True] * len(ids) for ids in encodings]
    return _encode(
        processor,
        encodings,
        learned,
        images,
        add_eos=True,
        truncation=truncation,
        max_length=max_length,
        return_tensors=return_tensors,
    )


def encode_conversation(
    processor,
    messages: list[dict],
    images=None,
    *,
    truncation: bool = True,
    max_length: int | None = None,
    return_tensors: str | None = "pt",
) -> BatchFeature:
    """One chat for supervised fine-tuning: the ids inference computes for the rendered chat
    (`processor(text=processor.apply_chat_template(messages, tokenize=False))`), with labels on the assistant
    replies and their end-of-turn token only: the template's `{% generation %}` spans (the Vicuna template, through
    the tokenizer's `return_assistant_tokens_mask`), or, for an LLM's own template, each reply's text after the
    generation prompt up to and including the tokenizer's eos token (`<|im_end|>` for Qwen2-Instruct).

    Example:

    ```python
    >>> messages = [{"role": "user", "content": "<image>\\nWhat is this?"}, {"role": "assistant", "content": "A cat."}]
    >>> batch = encode_conversation(processor, messages, images=[cat])
    >>> processor.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    'A cat.</s>'
    ```
    """
    check_messages(messages)
    if processor._marks_assistant_spans():
        encoded = processor.tokenizer.apply_chat_template(
            list(messages),
            chat_template=processor.chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        ids, learned = encoded["input_ids"], [bool(flag) for flag in encoded["assistant_masks"]]
    else:
        ids, learned = _own_template_spans(processor, flatten_content(messages))
    if not any(learned):
        raise ValueError(
            "messages has nothing to learn: no assistant reply holds a token (training learns the assistant turns)"
        )
    # The template ends each reply with its own end-of-turn token: no eos added.
    return _encode(
        processor,
        [ids],
        [learned],
        images,
        add_eos=False,
        truncation=truncation,
        max_length=max_length,
        return_tensors=return_tensors,
    )


def _own_template_spans(processor, messages: list[dict]) -> tuple[list[int], list[bool]]:
    """Ids of the chat rendered with an LLM's own template (tokenized whole, as inference does) and which of them the
    LM learns: each assistant reply's span, found as the text after the chat rendered up to that reply with its
    generation prompt, up to the first eos token (or the end of the reply's own rendering)."""

    def render(part: list[dict], add_generation_prompt: bool = False) -> str:
        return processor.tokenizer.apply_chat_template(
            part, chat_template=processor.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    text, eos, spans = render(messages), processor.tokenizer.eos_token, []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:index], add_generation_prompt=True) if index else ""
        if not text.startswith(prompt):
            raise ValueError(
                f"the chat template renders messages[:{index}] with its generation prompt as text that does not "
                "begin the whole chat, so the reply to learn cannot be located"
            )
        end = text.find(eos, len(prompt)) if eos else -1
        if end >= 0:
            end += len(eos)
        else:  # the template ends turns with another token than eos: the reply's own rendering, trimmed
            turn = render(messages[: index + 1]).rstrip()
            if not text.startswith(turn):
                raise ValueError(f"the chat template renders messages[{index}] differently inside the whole chat")
            end = len(turn)
        spans.append((len(prompt), end))
    encoded = processor.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    learned = [
        any(start < stop_ and stop > start_ for start_, stop_ in spans) for start, stop in encoded["offset_mapping"]
    ]
    return encoded["input_ids"], learned


__all__ = ["encode_conversation", "encode_documents", "unlearned_ids"]
