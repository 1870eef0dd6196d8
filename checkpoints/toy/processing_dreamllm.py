"""DreamLLM processor: expands `<image>` / `<dream>` placeholders into the official block layout and prepares
vision-tower inputs, diffusion targets and LM labels, with the Vicuna chat template of the release or the LLM's own."""

import re
from dataclasses import dataclass, field

import numpy as np
import PIL.Image
import torch
import transformers
from transformers import BatchFeature, ProcessorMixin

try:
    from .configuration_dreamllm import SPECIAL_TOKENS, DreamLLMConfig
except ImportError:  # imported as a top-level module (tests, scripts)
    from configuration_dreamllm import SPECIAL_TOKENS, DreamLLMConfig

IGNORE_INDEX = -100
IMAGE_PLACEHOLDER = SPECIAL_TOKENS["image_token_id"]
DREAM_PLACEHOLDER = SPECIAL_TOKENS["dream_token_id"]
# Written by the processor from the placeholders, never taken from text.
BLOCK_TOKENS = tuple(token for token in SPECIAL_TOKENS.values() if token not in (IMAGE_PLACEHOLDER, DREAM_PLACEHOLDER))
CHAT_ROLES = ("system", "user", "assistant")
CONTENT_TYPES = ("text", "image", "dream")
SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

# Vicuna v1.1 ("ADD_COLON_TWO": sep " ", sep2 "</s>"), as the released chat models were trained:
# "{system} USER: {user} ASSISTANT: {assistant}</s>USER: ...". Images render as "<image>\n" before the text.
# `{% generation %}` marks the learned span of each reply (its text and `</s>`) for `return_assistant_tokens_mask`.
CHAT_TEMPLATE = (
    "{%- set system = '" + SYSTEM_PROMPT.replace("'", "\\'") + "' -%}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set system = messages[0]['content'] if messages[0]['content'] is string "
    "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
    "{%- set messages = messages[1:] -%}"
    "{%- endif -%}"
    "{{- system + ' ' -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['user', 'assistant'] -%}"
    "{{- raise_exception(\"DreamLLM chats take 'user' and 'assistant' turns after an optional first 'system' "
    "message, got role '\" ~ message['role'] ~ \"'\") -}}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{%- set body = message['content'] -%}"
    "{%- else -%}{%- set body = namespace(text='') -%}"
    "{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{%- set body.text = body.text + '" + IMAGE_PLACEHOLDER + "\\n' -%}"
    "{%- elif item['type'] == 'dream' -%}{%- set body.text = body.text + '" + DREAM_PLACEHOLDER + "' -%}"
    "{%- else -%}{%- set body.text = body.text + item['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set body = body.text -%}{%- endif -%}"
    "{%- if message['role'] == 'user' -%}{{- 'USER: ' + body + ' ' -}}"
    "{%- else -%}{{- 'ASSISTANT: ' -}}{%- generation -%}{{- body + '</s>' -}}{%- endgeneration -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}"
)


def check_unicode(text: str, where: str) -> None:
    """Reject text that is not valid Unicode (a lone surrogate, as a bad JSON escape leaves), naming where it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{where} holds a lone surrogate {text[error.start]!r} at character {error.start}: not valid Unicode text"
        ) from None


GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


def flatten_content(messages: list[dict]) -> list[dict]:
    """The messages with list content written as one string (`{"type": "image"}` -> `<image>\n`, `{"type": "dream"}`
    -> `<dream>`), for an LLM's own chat template, which renders string content only."""
    flat = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            pieces = {"image": lambda item: IMAGE_PLACEHOLDER + "\n", "dream": lambda item: DREAM_PLACEHOLDER}
            content = "".join(pieces.get(item["type"], lambda item: item["text"])(item) for item in content)
        flat.append({**message, "content": content})
    return flat


def check_messages(messages, where: str = "messages") -> None:
    """Reject a chat the Vicuna template cannot render faithfully, naming the message and the problem: an optional
    first `system` message, then `user` / `assistant` turns, each with `content` (a string, or a list of `{"type":
    "text", "text": ...}`, `{"type": "image"}` and `{"type": "dream"}` items)."""
    if not isinstance(messages, (list, tuple)):
        raise TypeError(f"{where} must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError(f"{where} is empty: a chat needs at least one message")
    for index, message in enumerate(messages):
        name = f"{where}[{index}]"
        if not isinstance(message, dict):
            raise TypeError(f"{name} must be a dict with 'role' and 'content', got {type(message).__name__}")
        for key in ("role", "content"):
            if message.get(key) is None:
                raise ValueError(f"{name} has no {key!r}: every message needs a 'role' and a 'content'")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES or (role == "system" and index > 0):
            raise ValueError(
                f"{name} has role {role!r}: DreamLLM chats take 'user' and 'assistant' turns after an optional "
                "first 'system' message"
            )
        if isinstance(content, str):
            check_unicode(content, f"{name}['content']")
            continue
        if not isinstance(content, (list, tuple)):
            raise TypeError(f"{name}['content'] must be a string or a list of items, got {type(content).__name__}")
        for position, item in enumerate(content):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind not in CONTENT_TYPES or (kind == "text" and not isinstance(item.get("text"), str)):
                raise ValueError(
                    f"{name}['content'][{position}] = {item!r:.80} is not a content item: expected "
                    "{'type': 'text', 'text': str}, {'type': 'image'} or {'type': 'dream'}"
                )
            if kind == "text":
                check_unicode(item["text"], f"{name}['content'][{position}]['text']")
            if role == "system" and kind != "text":
                raise ValueError(f"{name} is a system message with a {kind!r} item: system messages hold text only")


def _array_to_uint8(array: np.ndarray, where: str, sixteen_bit: bool = False) -> np.ndarray:
    """Pixel values as uint8: 8-bit as they are, 16-bit scaled down, floats from [0, 1]; anything else is an error."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise TypeError(f"{where} has pixel dtype {array.dtype}: expected uint8, uint16 or float in [0, 1]")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{where} is a float image holding NaN or infinite values: float pixels must lie in [0, 1]")
        if array.min() < 0 or array.max() > 1:
            raise ValueError(
                f"{where} is a float image with values in [{array.min():g}, {array.max():g}]: float pixels "
                "must lie in [0, 1] (pass uint8 for 0-255 values)"
            )
        return np.round(array * 255).astype(np.uint8)
    low, high = int(array.min()), int(array.max())
    if sixteen_bit or array.dtype == np.uint16:
        if low < 0 or high > 65535:
            raise ValueError(f"{where} is a 16-bit image with values in [{low}, {high}], outside [0, 65535]")
        return np.round(array.astype(np.float64) / 257).astype(np.uint8)
    if low < 0 or high > 255:
        raise ValueError(f"{where} is an integer image with values in [{low}, {high}]: expected [0, 255] (uint8)")
    return array.astype(np.uint8)


def to_rgb_image(image, where: str = "image") -> PIL.Image.Image:
    """One image (a PIL image, or an `(H, W)`, `(H, W, C)` or `(C, H, W)` numpy array or torch tensor with 1, 3 or
    4 channels) as an 8-bit RGB PIL image; unreadable, empty or ambiguous inputs raise an error naming `where`.
    Whether a truncated file is unreadable is PIL's own setting (`PIL.ImageFile.LOAD_TRUNCATED_IMAGES`, off by default)."""
    if isinstance(image, PIL.Image.Image):
        try:
            image.load()
        except (OSError, ValueError, AttributeError, SyntaxError) as error:
            raise ValueError(f"{where} cannot be read: {error} (a truncated, closed or damaged image)") from error
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{where} is empty ({image.width}x{image.height} pixels)")
        if image.mode in ("I", "F") or image.mode.startswith("I;16"):  # 16-bit / 32-bit: scale, never saturate
            array = np.asarray(image)
            return to_rgb_image(_array_to_uint8(array, where, sixteen_bit=image.mode != "F"), where)
        return image.convert("RGB")
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"{where} is a {type(image).__name__}: images must be PIL images, numpy arrays or torch tensors"
        )
    array = image[..., None] if image.ndim == 2 else image
    if array.ndim != 3:
        raise ValueError(
            f"{where} is an array of shape {tuple(image.shape)}: one image is (H, W), (H, W, C) or (C, H, W); "
            "pass several images as a list, one per placeholder"
        )
    if array.shape[-1] not in (1, 3, 4) and array.shape[0] in (1, 3, 4):
        array = array.transpose(1, 2, 0)
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{where} has shape {tuple(image.shape)}: expected 1, 3 or 4 channels")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {tuple(image.shape)})")
    array = _array_to_uint8(array, where)
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[array.shape[-1]]
    return PIL.Image.fromarray(array[..., 0] if mode == "L" else array, mode=mode).convert("RGB")


def pil_backend(image_processor):
    """The same image processor on transformers' PIL backend, named explicitly: the plain class name means the
    torchvision backend (other resizing numerics than training used), and without torchvision a fallback warning."""
    if image_processor is None or type(image_processor).__name__.endswith("Pil"):
        return image_processor
    pil_class = getattr(transformers, type(image_processor).__name__ + "Pil", None)
    return image_processor if pil_class is None else pil_class(**image_processor.to_dict())


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
    Tokenizer + vision-tower image processor (CLIP or SigLIP) + diffusion-target image processor for DreamLLM.

    Text may hold `<image>` (an input image, to understand) and `<dream>` (an image to create).
    `<image>` becomes `<im_start>` + `num_image_tokens` x `<im_patch>` + `<im_end>`; `<dream>` becomes `<dream_start>` +
    `num_dream_queries` x `<im_patch>` + `<dream_end>`, followed by the image's comprehension block when its pixels
    are given. `images` are consumed in document order, one per placeholder; trailing `<dream>`s may come without one.

    Text is tokenized whole (as `tokenizer(text, add_special_tokens=False)`, after the tokenizer's BOS token unless the
    text already starts with it; a tokenizer without one, as Qwen2's, gets none), so the ids of a chat rendered with
    `apply_chat_template` are the same for inference (`processor(text=rendered)`) and training
    (`encode_conversation`). The chat template is the release's Vicuna one (`CHAT_TEMPLATE`) or the LLM's own
    (ChatML for Qwen2, `[INST]` for Mistral). The block tokens (`<im_start>`, `<im_patch>`, `<im_end>`,
    `<dream_start>`, `<dream_end>`) are written only by the processor: text holding them is an error. Images are PIL images, or numpy arrays / torch
    tensors of one image each (uint8, 16-bit, or float in [0, 1]); both image processors run on the PIL backend.

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
        image_processor, diffusion_image_processor = pil_backend(image_processor), pil_backend(diffusion_image_processor)
        super().__init__(image_processor, tokenizer, diffusion_image_processor, chat_template=chat_template)
        ids = tokenizer.convert_tokens_to_ids
        self.pad_token_id = tokenizer.pad_token_id
        # Documents start with the tokenizer's BOS token; a tokenizer without one (Qwen2) gets none.
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.image_token_id = ids(IMAGE_PLACEHOLDER)
        self.dream_token_id = ids(DREAM_PLACEHOLDER)
        self.image_patch_token_id = ids(SPECIAL_TOKENS["image_patch_token_id"])
        self.image_start_token_id = ids(SPECIAL_TOKENS["image_start_token_id"])
        self.image_end_token_id = ids(SPECIAL_TOKENS["image_end_token_id"])
        self.dream_start_token_id = ids(SPECIAL_TOKENS["dream_start_token_id"])
        self.dream_end_token_id = ids(SPECIAL_TOKENS["dream_end_token_id"])
        missing = [
            token for token in (IMAGE_PLACEHOLDER, DREAM_PLACEHOLDER, *BLOCK_TOKENS) if ids(token) in (None, tokenizer.unk_token_id)
        ]
        if missing or self.pad_token_id is None:
            raise ValueError(
                f"the tokenizer lacks the DreamLLM special tokens {missing + ([] if self.pad_token_id is not None else ['pad'])}; "
                "build the folder with `python -m train.assemble`"
            )
        self._block_token_ids = {ids(token): token for token in BLOCK_TOKENS}

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

    @staticmethod
    def get_possibly_dynamic_module(module_name):
        # The image processors named in processor_config.json load on the PIL backend (see `pil_backend`).
        if module_name.endswith("ImageProcessor") and hasattr(transformers, module_name + "Pil"):
            module_name += "Pil"
        return ProcessorMixin.get_possibly_dynamic_module(module_name)

    # ----------------------------------------------------------------------------------------------------- blocks
    @property
    def prefix_ids(self) -> list[int]:
        """`[<s>]`: the tokenizer's BOS token, or `[]` for a tokenizer without one (Qwen2)."""
        return [] if self.bos_token_id is None else [self.bos_token_id]

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
            text: one string or a non-empty list of strings with `<image>` / `<dream>` placeholders.
            images: PIL images / arrays consumed in document order, one per placeholder: a flat list over the batch,
                or one list per document.
            return_labels: also return `labels`: text, `</s>` and `<dream_start>` are learned; every slot, the other
                markers, `<s>` and padding are -100.
            add_eos: append `</s>` (default: when `return_labels`).
            padding / padding_side: pad to the longest document; the side defaults to right for training
                (`return_labels`) and left for generation.
            truncation / max_length: documents longer than `max_length` (default: the tokenizer's
                `model_max_length`; must be >= 1) lose whole trailing units (text tokens or image blocks, never part of
                a block); with `truncation=False` they raise instead.

        Raises:
            `ValueError` / `TypeError` naming the input: no or empty `text`, text holding block tokens, placeholders
            and images that do not match, unreadable or ambiguous images, `max_length` < 1.
        """
        texts = self._check_texts(text)
        encodings = [self.tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in texts]
        learned = [[True] * len(ids) for ids in encodings]
        return self._encode_batch(
            encodings, learned, images, return_labels, add_eos, padding, padding_side, truncation, max_length, return_tensors
        )

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """`ProcessorMixin.apply_chat_template` after `check_messages`: roles the template cannot render faithfully
        (a `tool` turn, a `system` message after the first, a message without `role` or `content`) raise. With an
        LLM's own template (no `{% generation %}` spans), list content is first written as text with placeholders."""
        batched = isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], (list, tuple))
        for index, messages in enumerate(conversation if batched else [conversation]):
            check_messages(messages, f"conversation[{index}]" if batched else "messages")
        if not self._marks_assistant_spans(chat_template):
            conversation = [flatten_content(m) for m in conversation] if batched else flatten_content(conversation)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def _marks_assistant_spans(self, chat_template: str | None = None) -> bool:
        """Whether the template marks assistant replies with `{% generation %}` (the release's Vicuna template does;
        an LLM's own template, such as Qwen2's ChatML, does not)."""
        return bool(GENERATION_MARKER.search(chat_template or self.chat_template or ""))

    def encode_conversation(
        self,
        messages: list[dict],
        images=None,
        *,
        truncation: bool = True,
        max_length: int | None = None,
        return_tensors: str | None = "pt",
    ) -> BatchFeature:
        """Encode one chat for supervised fine-tuning: the ids inference computes for the rendered chat
        (`processor(text=processor.apply_chat_template(messages, tokenize=False))`), with labels on the assistant
        replies and their end-of-turn token only: the template's `{% generation %}` spans (the Vicuna template, through
        the tokenizer's `return_assistant_tokens_mask`), or, for an LLM's own template, each reply's text after the
        generation prompt up to and including the tokenizer's eos token (`<|im_end|>` for Qwen2-Instruct). Message
        content may hold `<image>` / `<dream>` placeholders or `{"type": "image"}` / `{"type": "dream"}` items.

        Example:

        ```python
        >>> messages = [{"role": "user", "content": "<image>\nWhat is this?"}, {"role": "assistant", "content": "A cat."}]
        >>> batch = processor.encode_conversation(messages, images=[cat])
        >>> processor.tokenizer.decode(batch["input_ids"][0][batch["labels"][0] != -100])
        'A cat.</s>'
        ```
        """
        check_messages(messages)
        if not self._marks_assistant_spans():
            ids, learned = self._encode_with_own_template(flatten_content(messages))
            return self._encode_batch(
                [ids], [learned], images, True, False, True, "right", truncation, max_length, return_tensors
            )
        encoded = self.tokenizer.apply_chat_template(
            list(messages),
            chat_template=self.chat_template,
            tokenize=True,
            return_dict=True,
            return_assistant_tokens_mask=True,
        )
        learned = [bool(flag) for flag in encoded["assistant_masks"]]
        if not any(learned):
            raise ValueError(
                "messages has nothing to learn: no assistant reply holds a token (training learns the assistant turns)"
            )
        return self._encode_batch(
            [encoded["input_ids"]], [learned], images, True, False, True, "right", truncation, max_length, return_tensors
        )

    def _render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode_with_own_template(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """Ids of the rendered chat (tokenized whole, as inference does) and which of them the LM learns: each
        assistant reply's span, found as the text after the chat rendered up to that reply with its generation
        prompt, up to the first eos token (or the end of the reply's own rendering)."""
        text = self._render(messages)
        eos = self.tokenizer.eos_token
        spans = []
        for index, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:index], add_generation_prompt=True) if index else ""
            if not text.startswith(prompt):
                raise ValueError(
                    f"the chat template renders messages[:{index}] with its generation prompt as text that does not "
                    "begin the whole chat, so the reply to learn cannot be located"
                )
            end = text.find(eos, len(prompt)) if eos else -1
            if end >= 0:
                end += len(eos)
            else:  # the template ends turns with another token than eos: the reply's own rendering, trimmed
                turn = self._render(messages[: index + 1]).rstrip()
                if not text.startswith(turn):
                    raise ValueError(f"the chat template renders messages[{index}] differently inside the whole chat")
                end = len(turn)
            spans.append((len(prompt), end))
        encoded = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        learned = [
            any(start < span_end and stop > span_start for span_start, span_end in spans)
            for start, stop in encoded["offset_mapping"]
        ]
        return encoded["input_ids"], learned

    def _check_texts(self, text) -> list[str]:
        if text is None:
            raise ValueError("DreamLLMProcessor needs `text` (use `<image>` / `<dream>` placeholders for images)")
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")
        if not texts:
            raise ValueError("text is an empty list: pass at least one document")
        for index, doc in enumerate(texts):
            if not isinstance(doc, str):
                raise TypeError(f"text[{index}] is a {type(doc).__name__}, not a string")
            check_unicode(doc, f"text[{index}]")
        return list(texts)

    def _placeholders(self, ids: list[int]) -> list[str]:
        kinds = {self.image_token_id: IMAGE_PLACEHOLDER, self.dream_token_id: DREAM_PLACEHOLDER}
        return [kinds[token] for token in ids if token in kinds]

    def _split_images(self, encodings: list[list[int]], images) -> list[list[PIL.Image.Image]]:
        """Assign images to documents, check their number against the placeholders of each, and read them."""
        if images is None:
            images = []
        elif not isinstance(images, (list, tuple)):
            images = [images]
        nested = len(images) > 0 and all(isinstance(item, (list, tuple)) for item in images)
        if not nested and any(isinstance(item, (list, tuple)) for item in images):
            raise ValueError("images mixes single images and lists: pass a flat list, or one list per document")
        if len(encodings) == 1 and not nested:  # one document owns every image
            images, nested = [images], True
        if nested and len(images) != len(encodings):
            raise ValueError(f"got image lists for {len(images)} documents but {len(encodings)} texts")
        per_doc, cursor = [], 0
        for index, ids in enumerate(encodings):
            placeholders = self._placeholders(ids)
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
            where = "images[{}]".format if len(encodings) == 1 else f"images of text[{index}][{{}}]".format
            per_doc.append([to_rgb_image(image, where(position)) for position, image in enumerate(doc_images)])
        if not nested and cursor != len(images):
            raise ValueError(f"{len(images)} images were given but the texts' placeholders take only {cursor}")
        return per_doc

    def _encode_document(
        self, ids: list[int], learned: list[bool], images: list, add_eos: bool, where: str
    ) -> _Document:
        """Expand the placeholders of tokenized text into blocks; `learned` marks the tokens the LM learns."""
        blocked = next((token for token in ids if token in self._block_token_ids), None)
        if blocked is not None:
            raise ValueError(
                f"{where} contains {self._block_token_ids[blocked]!r}: block tokens are written by the processor from "
                f"{IMAGE_PLACEHOLDER} / {DREAM_PLACEHOLDER} placeholders and cannot come from text"
            )
        doc, queue = _Document(), list(images)
        if self.prefix_ids and ids[:1] != self.prefix_ids:  # a template may write `<s>` itself (Mistral, Llama-3)
            doc.add(self.prefix_ids, [IGNORE_INDEX])
        for token, learn in zip(ids, learned):
            if token == self.image_token_id:
                block = self.image_block()
                doc.add(block, [IGNORE_INDEX] * len(block), [("clip", queue.pop(0))])
            elif token == self.dream_token_id:
                block, labels = self.dream_block(), [IGNORE_INDEX] * (self.num_dream_queries + 2)
                if learn:  # the LM learns where an image goes
                    labels[0] = self.dream_start_token_id
                block_images = []
                if queue:  # creation with a target: the created image is read back through CLIP
                    image = queue.pop(0)
                    block_images = [("target", image), ("clip", image)]
                    block, labels = block + self.image_block(), labels + [IGNORE_INDEX] * (self.num_image_tokens + 2)
                doc.add(block, labels, block_images)
            else:
                learned_token = learn and token not in self._unlearned_ids
                doc.add([token], [token if learned_token else IGNORE_INDEX])
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
        self, encodings, learned, images, return_labels, add_eos, padding, padding_side, truncation, max_length,
        return_tensors,
    ) -> BatchFeature:
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if padding_side not in (None, "left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        per_doc_images = self._split_images(encodings, images)
        add_eos = return_labels if add_eos is None else add_eos
        max_length = max_length or self.tokenizer.model_max_length
        docs = [
            self._truncate(
                self._encode_document(ids, doc_learned, doc_images, add_eos, f"text[{index}]"), max_length, truncation
            )
            for index, (ids, doc_learned, doc_images) in enumerate(zip(encodings, learned, per_doc_images))
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


__all__ = [
    "DreamLLMProcessor",
    "CHAT_TEMPLATE",
    "SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "DREAM_PLACEHOLDER",
    "check_messages",
    "flatten_content",
    "to_rgb_image",
]
