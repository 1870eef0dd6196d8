"""DreamLLM processor: expands `<image>` / `<dream>` placeholders into the official block layout and prepares CLIP
inputs, diffusion targets and LM labels."""

import re
from dataclasses import dataclass, field

from transformers import BatchFeature, ProcessorMixin

try:
    from .configuration_dreamllm import DreamLLMConfig
except ImportError:  # imported as a top-level module (tests, scripts)
    from configuration_dreamllm import DreamLLMConfig

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = "<image>"
DREAM_PLACEHOLDER = "<dream>"
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Vicuna v1.1 ("ADD_COLON_TWO": sep " ", sep2 "</s>"), as the released chat models were trained:
# "{system} USER: {user} ASSISTANT: {assistant}</s>USER: ...". Images render as "<image>\n" before the text.
CHAT_TEMPLATE = (
    "{%- set system = '" + SYSTEM_PROMPT.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set body = message['content'] -%}"
    "{%- else -%}{%- set body = namespace(text='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set body.text = body.text + '<image>\\n' -%}"
    "{%- elif item['type'] == 'dream' -%}{%- set body.text = body.text + '<dream>' -%}"
    "{%- else -%}{%- set body.text = body.text + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set body = body.text -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + body + ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' + body + '</s>' -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


@dataclass
class _Document:
    """One sample as units that truncation never splits: a text token or a whole image block."""

    units: list[list[int]] = field(default_factory=list)
    unit_labels: list[list[int]] = field(default_factory=list)
    unit_images: list[list[tuple[str, object]]] = field(default_factory=list)  # ("clip" | "target", image)

    def add(self, ids: list[int], labels: list[int], images: list[tuple[str, object]] = ()):
        self.units.append(ids)
        self.unit_labels.append(labels)
        self.unit_images.append(list(images))

    def __len__(self) -> int:
        return sum(len(unit) for unit in self.units)


class DreamLLMProcessor(ProcessorMixin):
    r"""
    Tokenizer + CLIP image processor + diffusion-target image processor for DreamLLM.

    Text may hold `<image>` (an input image, to understand) and `<dream>` (an image to create).
    `<image>` becomes `<im_start>` + `num_image_tokens` x `<im_patch>` + `<im_end>`; `<dream>` becomes `<dream_start>` +
    `num_dream_queries` x `<im_patch>` + `<dream_end>`, followed by the image's comprehension block when its pixels
    are given. `images` are consumed in document order, one per placeholder; trailing `<dream>`s may come without one.

    Example:

    ```python
    >>> from transformers import AutoProcessor
    >>> processor = AutoProcessor.from_pretrained("path/to/dreamllm", trust_remote_code=True)
    >>> batch = processor(text="A cat. <image> The same cat, painted. <dream>", images=[cat, painting],
    ...                   return_labels=True, return_tensors="pt")
    >>> sorted(batch.keys())
    ['attention_mask', 'input_ids', 'labels', 'pixel_values', 'target_pixel_values']
    ```
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        diffusion_image_processor=None,
        chat_template: str | None = None,
        num_image_tokens: int = 256,
        num_dream_queries: int = 64,
        **kwargs,
    ):
        self.num_image_tokens = num_image_tokens
        self.num_dream_queries = num_dream_queries
        if chat_template is None:
            chat_template = CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, diffusion_image_processor, chat_template=chat_template)
        ids = tokenizer.convert_tokens_to_ids
        self.pad_token_id = tokenizer.pad_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.image_patch_token_id = ids("<im_patch>")
        self.image_start_token_id = ids("<im_start>")
        self.image_end_token_id = ids("<im_end>")
        self.dream_start_token_id = ids("<dream_start>")
        self.dream_end_token_id = ids("<dream_end>")
        missing = [
            token
            for token in ("<image>", "<dream>", "<im_patch>", "<im_start>", "<im_end>", "<dream_start>", "<dream_end>")
            if ids(token) in (None, tokenizer.unk_token_id)
        ]
        if missing or self.pad_token_id is None:
            raise ValueError(
                f"the tokenizer lacks the DreamLLM special tokens {missing + ([] if self.pad_token_id is not None else ['pad'])}; "
                "build the folder with `python -m train.assemble`"
            )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        # The tokenizer loader reads the folder's config.json; handing it our config keeps it from asking whether
        # to trust the `auto_map` code it finds there.
        if "config" not in kwargs:
            try:
                kwargs["config"] = DreamLLMConfig.from_pretrained(pretrained_model_name_or_path)
            except (OSError, ValueError):  # a processor saved on its own, without a model config
                pass
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    # ----------------------------------------------------------------------------------------------------- blocks
    def image_block(self) -> list[int]:
        """`<im_start>` + N x `<im_patch>` + `<im_end>`: the comprehension block of one image."""
        return [self.image_start_token_id] + [self.image_patch_token_id] * self.num_image_tokens + [self.image_end_token_id]

    def dream_block(self) -> list[int]:
        """`<dream_start>` + Q x `<im_patch>` + `<dream_end>`: the creation block of one image."""
        return [self.dream_start_token_id] + [self.image_patch_token_id] * self.num_dream_queries + [self.dream_end_token_id]

    # ------------------------------------------------------------------------------------------------- encoding
    def __call__(
        self,
        text: str | list[str] | None = None,
        images=None,
        *,
        return_labels: bool = False,
        add_eos: bool | None = None,
        padding: bool | str = True,
        padding_side: str | None = None,
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        r"""
        Encode a document or a batch of documents.

        Args:
            text: one string or a list of strings with `<image>` / `<dream>` placeholders.
            images: PIL images / arrays consumed in document order, one per placeholder: a flat list over the batch,
                or one list per document.
            return_labels: also return `labels`: text, `</s>` and `<dream_start>` are learned; every slot, the other
                markers, `<s>` and padding are -100.
            add_eos: append `</s>` (default: when `return_labels`).
            padding / padding_side: pad to the longest document; the side defaults to right for training
                (`return_labels`) and left for generation.
            truncation / max_length: documents longer than `max_length` (default: the tokenizer's
                `model_max_length`) lose whole trailing units (text tokens or image blocks, never part of a block);
                with `truncation=False` they raise instead.
        """
        if text is None:
            raise ValueError("DreamLLMProcessor needs `text` (use `<image>` / `<dream>` placeholders for images)")
        texts = [text] if isinstance(text, str) else list(text)
        per_doc_images = self._split_images(texts, images)
        parts = [[(doc, True)] for doc in texts]
        return self._encode_batch(
            parts, per_doc_images, return_labels, add_eos, padding, padding_side, truncation, max_length, return_tensors
        )

    def encode_conversation(
        self,
        messages: list[dict],
        images=None,
        *,
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Encode one chat for supervised fine-tuning: ids as `apply_chat_template` renders them, with labels on the
        assistant replies (and their `</s>`) only."""
        system = SYSTEM_PROMPT
        if messages and messages[0]["role"] == "system":
            system, messages = self._content_text(messages[0]["content"]), messages[1:]
        parts = [(system + " ", False)]
        for message in messages:
            body = self._content_text(message["content"])
            if message["role"] == "user":
                parts.append(("USER: " + body + " ", False))
            else:
                parts.extend([("ASSISTANT:", False), (" " + body + "</s>", True)])
        texts = ["".join(part for part, _ in parts)]
        per_doc_images = self._split_images(texts, images)
        return self._encode_batch(
            [parts], per_doc_images, True, False, True, "right", truncation, max_length, return_tensors
        )

    @staticmethod
    def _content_text(content) -> str:
        if isinstance(content, str):
            return content
        pieces = {"image": lambda item: IMAGE_PLACEHOLDER + "\n", "dream": lambda item: DREAM_PLACEHOLDER}
        return "".join(pieces.get(item["type"], lambda item: item["text"])(item) for item in content)

    def _split_images(self, texts: list[str], images) -> list[list]:
        """Assign images to documents and check their number against the placeholders of each."""
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        nested = len(images) > 0 and all(isinstance(item, (list, tuple)) for item in images)
        if len(texts) == 1 and not nested:  # one document owns every image
            images, nested = [images], True
        if nested and len(images) != len(texts):
            raise ValueError(f"got image lists for {len(images)} documents but {len(texts)} texts")
        per_doc, cursor = [], 0
        for index, doc in enumerate(texts):
            placeholders = re.findall(f"{IMAGE_PLACEHOLDER}|{DREAM_PLACEHOLDER}", doc)
            num_image = placeholders.count(IMAGE_PLACEHOLDER)
            last_image = max((i for i, p in enumerate(placeholders) if p == IMAGE_PLACEHOLDER), default=-1)
            if nested:
                doc_images = list(images[index])
            else:
                remaining = len(images) - cursor
                doc_images = list(images[cursor : cursor + min(len(placeholders), remaining)])
                cursor += len(doc_images)
            if len(doc_images) <= last_image or len(doc_images) > len(placeholders):
                raise ValueError(
                    f"text has {num_image} {IMAGE_PLACEHOLDER} and {len(placeholders) - num_image} "
                    f"{DREAM_PLACEHOLDER} placeholders but {len(doc_images)} images were given: every "
                    f"{IMAGE_PLACEHOLDER} needs an image and only trailing {DREAM_PLACEHOLDER}s may come without one"
                )
            per_doc.append(doc_images)
        if not nested and cursor != len(images):
            raise ValueError(f"{len(images)} images were given but the texts' placeholders take only {cursor}")
        return per_doc

    def _encode_document(self, parts: list[tuple[str, bool]], images: list, add_eos: bool) -> _Document:
        """Tokenize text pieces (each learned or not) and expand their placeholders into blocks."""
        doc, queue = _Document(), list(images)
        doc.add([self.bos_token_id], [IGNORE_INDEX])
        for piece, learn in parts:
            for chunk in re.split(f"({IMAGE_PLACEHOLDER}|{DREAM_PLACEHOLDER})", piece):
                if chunk == IMAGE_PLACEHOLDER:
                    block = self.image_block()
                    doc.add(block, [IGNORE_INDEX] * len(block), [("clip", queue.pop(0))])
                elif chunk == DREAM_PLACEHOLDER:
                    block, labels = self.dream_block(), [IGNORE_INDEX] * (self.num_dream_queries + 2)
                    if learn:  # the LM learns where an image goes
                        labels[0] = self.dream_start_token_id
                    block_images = []
                    if queue:  # creation with a target: the created image is read back through CLIP
                        image = queue.pop(0)
                        block_images = [("target", image), ("clip", image)]
                        block, labels = block + self.image_block(), labels + [IGNORE_INDEX] * (self.num_image_tokens + 2)
                    doc.add(block, labels, block_images)
                elif chunk:
                    for token in self.tokenizer(chunk, add_special_tokens=False)["input_ids"]:
                        learned = learn and token not in self._unlearned_ids
                        doc.add([token], [token if learned else IGNORE_INDEX])
        if add_eos:
            doc.add([self.eos_token_id], [self.eos_token_id])
        return doc

    @property
    def _unlearned_ids(self) -> set[int]:
        return {
            self.bos_token_id,
            self.pad_token_id,
            self.image_patch_token_id,
            self.image_start_token_id,
            self.image_end_token_id,
            self.dream_end_token_id,
        }

    def _truncate(self, doc: _Document, max_length: int, truncation: bool) -> _Document:
        if len(doc) <= max_length:
            return doc
        if not truncation:
            raise ValueError(f"the document has {len(doc)} tokens, over max_length={max_length}, and truncation=False")
        ends_with_eos = doc.units[-1] == [self.eos_token_id]
        budget = max_length - (1 if ends_with_eos else 0)
        kept, total = _Document(), 0
        for ids, labels, unit_images in zip(doc.units, doc.unit_labels, doc.unit_images):
            if total + len(ids) > budget:
                break
            kept.add(ids, labels, unit_images)
            total += len(ids)
        if ends_with_eos:
            kept.add([self.eos_token_id], [self.eos_token_id])
        return kept

    def _encode_batch(
        self, parts, per_doc_images, return_labels, add_eos, padding, padding_side, truncation, max_length, return_tensors
    ) -> BatchFeature:
        add_eos = return_labels if add_eos is None else add_eos
        max_length = max_length or self.tokenizer.model_max_length
        docs = [
            self._truncate(self._encode_document(doc_parts, doc_images, add_eos), max_length, truncation)
            for doc_parts, doc_images in zip(parts, per_doc_images)
        ]
        sequences = [[token for unit in doc.units for token in unit] for doc in docs]
        labels = [[label for unit in doc.unit_labels for label in unit] for doc in docs]
        clip_images = [image for doc in docs for unit in doc.unit_images for kind, image in unit if kind == "clip"]
        targets = [image for doc in docs for unit in doc.unit_images for kind, image in unit if kind == "target"]

        side = padding_side or ("right" if return_labels else "left")
        width = max(map(len, sequences)) if padding else None
        data = {"input_ids": [], "attention_mask": []}
        if return_labels:
            data["labels"] = []
        for ids, doc_labels in zip(sequences, labels):
            pad = (width - len(ids)) if width else 0
            rows = {"input_ids": (ids, self.pad_token_id), "attention_mask": ([1] * len(ids), 0)}
            if return_labels:
                rows["labels"] = (doc_labels, IGNORE_INDEX)
            for key, (row, fill) in rows.items():
                data[key].append(row + [fill] * pad if side == "right" else [fill] * pad + row)
        if clip_images:
            data["pixel_values"] = self.image_processor(clip_images, return_tensors="pt")["pixel_values"]
        if targets:
            data["target_pixel_values"] = self.diffusion_image_processor(targets, return_tensors="pt")["pixel_values"]
        return BatchFeature(data=data, tensor_type=return_tensors)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "target_pixel_values"]


__all__ = ["DreamLLMProcessor", "CHAT_TEMPLATE", "SYSTEM_PROMPT", "IGNORE_INDEX"]
