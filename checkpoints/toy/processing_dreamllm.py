"""DreamLLM processor: expands `<image>` / `<dream>` placeholders into the official block layout and prepares
vision-tower inputs and diffusion targets, with the Vicuna chat template of the release or the LLM's own.
Training labels are computed from the same expansion in `train/data/labels.py`."""

import re
from typing import NamedTuple

import numpy as np
import PIL.Image
import transformers
from transformers import BatchFeature, ProcessorMixin
from transformers.image_transforms import to_pil_image
from transformers.image_utils import ChannelDimension, to_numpy_array
from transformers.processing_utils import ProcessingKwargs, TextKwargs, Unpack

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


def _to_uint8(array: np.ndarray, where: str, sixteen_bit: bool = False) -> np.ndarray:
    """Pixel values as uint8, refusing what `to_pil_image` would misread: 16-bit values are scaled (it would refuse
    them), floats always come from [0, 1] and are rounded (it reads whole-numbered floats as 0-255 and truncates)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise TypeError(f"{where} has pixel dtype {array.dtype}: expected uint8, uint16 or float in [0, 1]")
    if not np.isfinite(array).all():
        raise ValueError(f"{where} is a float image holding NaN or infinite values: float pixels must lie in [0, 1]")
    low, high = array.min(), array.max()
    if np.issubdtype(array.dtype, np.floating):
        if low < 0 or high > 1:
            raise ValueError(
                f"{where} is a float image with values in [{low:g}, {high:g}]: float pixels must lie in "
                "[0, 1] (pass uint8 for 0-255 values)"
            )
        return np.round(array * 255).astype(np.uint8)
    limit = 65535 if sixteen_bit or array.dtype == np.uint16 else 255
    if low < 0 or high > limit:
        raise ValueError(f"{where} is an integer image with values in [{low}, {high}]: expected [0, {limit}]")
    return (np.round(array / 257) if limit == 65535 else array).astype(np.uint8)


def to_rgb_image(image, where: str = "image") -> PIL.Image.Image:
    """One image (a PIL image, or an `(H, W)`, `(H, W, C)` or `(C, H, W)` numpy array or torch tensor with 1, 3 or
    4 channels) as an 8-bit RGB PIL image, through transformers' `to_pil_image`; unreadable, empty or ambiguous inputs
    raise an error naming `where`. Whether a truncated file is unreadable is PIL's own setting
    (`PIL.ImageFile.LOAD_TRUNCATED_IMAGES`, off by default)."""
    if isinstance(image, PIL.Image.Image):
        try:
            image.load()
        except (OSError, ValueError, AttributeError, SyntaxError) as error:
            raise ValueError(f"{where} cannot be read: {error} (a truncated, closed or damaged image)") from error
        if image.width == 0 or image.height == 0:
            raise ValueError(f"{where} is empty ({image.width}x{image.height} pixels)")
        if image.mode not in ("I", "F") and not image.mode.startswith("I;16"):
            return image.convert("RGB")
        image = _to_uint8(np.asarray(image), where, sixteen_bit=image.mode != "F")  # 16/32-bit: scale, never saturate
    if not (isinstance(image, np.ndarray) or type(image).__module__.startswith("torch")):
        raise TypeError(
            f"{where} is a {type(image).__name__}: images must be PIL images, numpy arrays or torch tensors"
        )
    array = to_numpy_array(image.detach().cpu() if hasattr(image, "detach") else image)
    array = array[..., None] if array.ndim == 2 else array
    if array.ndim != 3:
        raise ValueError(
            f"{where} is an array of shape {tuple(image.shape)}: one image is (H, W), (H, W, C) or (C, H, W); "
            "pass several images as a list, one per placeholder"
        )
    # Channels last unless only the first axis can hold them (transformers would guess first when both can).
    channels = ChannelDimension.LAST if array.shape[-1] in (1, 3, 4) else ChannelDimension.FIRST
    if channels == ChannelDimension.FIRST and array.shape[0] not in (1, 3, 4):
        raise ValueError(f"{where} has shape {tuple(image.shape)}: expected 1, 3 or 4 channels")
    if 0 in (array.shape[:2] if channels == ChannelDimension.LAST else array.shape[1:]):
        raise ValueError(f"{where} is empty (shape {tuple(image.shape)})")
    return to_pil_image(_to_uint8(array, where), input_data_format=channels).convert("RGB")


def pil_backend(image_processor):
    """The same image processor on transformers' PIL backend, named explicitly: the plain class name means the
    torchvision backend (other resizing numerics than training used), and without torchvision a fallback warning."""
    if image_processor is None or type(image_processor).__name__.endswith("Pil"):
        return image_processor
    pil_class = getattr(transformers, type(image_processor).__name__ + "Pil", None)
    return image_processor if pil_class is None else pil_class(**image_processor.to_dict())


class DreamLLMTextKwargs(TextKwargs, total=False):
    add_eos: bool  # append the tokenizer's eos token to each document (training does; generation must not)


class DreamLLMProcessorKwargs(ProcessingKwargs, total=False):
    text_kwargs: DreamLLMTextKwargs


class Unit(NamedTuple):
    """A piece of an expanded document that truncation never splits: one text token or one whole image block.
    `source` is the position in the tokenized text it comes from (None for the `<s>` and `</s>` the processor adds);
    `images` pairs each image of the block with its use (`"clip"`: vision-tower input, `"target"`: diffusion target)."""

    ids: list[int]
    source: int | None = None
    images: tuple = ()


class DreamLLMProcessor(ProcessorMixin):
    r"""
    Tokenizer + vision-tower image processor (CLIP or SigLIP) + diffusion-target image processor for DreamLLM.

    Text may hold `<image>` (an input image, to understand) and `<dream>` (an image to create).
    `<image>` becomes `<im_start>` + `num_image_tokens` x `<im_patch>` + `<im_end>`; `<dream>` becomes `<dream_start>` +
    `num_dream_queries` x `<im_patch>` + `<dream_end>`, followed by the image's comprehension block when its pixels
    are given. `images` are consumed in document order, one per placeholder; trailing `<dream>`s may come without one.

    Text is tokenized whole (as `tokenizer(text, add_special_tokens=False)`, after the tokenizer's BOS token unless the
    text already starts with it; a tokenizer without one, as Qwen2's, gets none), so a chat rendered with
    `apply_chat_template` has the same ids here and in training (`train.data.labels`). The chat template is the
    release's Vicuna one (`CHAT_TEMPLATE`) or the LLM's own (ChatML for Qwen2, `[INST]` for Mistral). The block tokens
    (`<im_start>`, `<im_patch>`, `<im_end>`, `<dream_start>`, `<dream_end>`) are written only by the processor: text
    holding them is an error. Images are PIL images, or numpy arrays / torch tensors of one image each (uint8, 16-bit,
    or float in [0, 1]); both image processors run on the PIL backend.

    Example:

    ```python
    >>> from transformers import AutoProcessor
    >>> processor = AutoProcessor.from_pretrained("path/to/dreamllm", trust_remote_code=True)
    >>> batch = processor(text="A cat. <image> The same cat, painted. <dream>", images=[cat, painting])
    >>> sorted(batch.keys())
    ['attention_mask', 'input_ids', 'pixel_values', 'target_pixel_values']
    ```
    """

    valid_processor_kwargs = DreamLLMProcessorKwargs
    # Defaults (transformers' processor-attribute convention): pad on the left for generation, cut over-long
    # documents at unit boundaries, no eos, PyTorch tensors.
    text_kwargs = {
        "padding": True,
        "padding_side": "left",
        "truncation": True,
        "add_eos": False,
        "return_tensors": "pt",
    }

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
        image_processor, diffusion_image_processor = (
            pil_backend(image_processor),
            pil_backend(diffusion_image_processor),
        )
        super().__init__(
            image_processor, tokenizer, diffusion_image_processor, chat_template=chat_template or CHAT_TEMPLATE
        )
        ids = tokenizer.convert_tokens_to_ids
        self.pad_token_id = tokenizer.pad_token_id
        self.bos_token_id = tokenizer.bos_token_id  # documents start with it; a tokenizer without one (Qwen2) gets none
        self.eos_token_id = tokenizer.eos_token_id
        self.image_token_id = ids(IMAGE_PLACEHOLDER)
        self.dream_token_id = ids(DREAM_PLACEHOLDER)
        for name in ("image_patch", "image_start", "image_end", "dream_start", "dream_end"):
            setattr(self, f"{name}_token_id", ids(SPECIAL_TOKENS[f"{name}_token_id"]))
        missing = [
            token
            for token in (IMAGE_PLACEHOLDER, DREAM_PLACEHOLDER, *BLOCK_TOKENS)
            if ids(token) in (None, tokenizer.unk_token_id)
        ]
        missing += [] if self.pad_token_id is not None else ["pad"]
        if missing:
            raise ValueError(
                f"the tokenizer lacks the DreamLLM special tokens {missing}; "
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

    @property
    def prefix_ids(self) -> list[int]:
        """`[<s>]`: the tokenizer's BOS token, or `[]` for a tokenizer without one (Qwen2)."""
        return [] if self.bos_token_id is None else [self.bos_token_id]

    def image_block(self) -> list[int]:
        """`<im_start>` + N x `<im_patch>` + `<im_end>`: the comprehension block of one image."""
        return (
            [self.image_start_token_id]
            + [self.image_patch_token_id] * self.num_image_tokens
            + [self.image_end_token_id]
        )

    def dream_block(self) -> list[int]:
        """`<dream_start>` + Q x `<im_patch>` + `<dream_end>`: the creation block of one image."""
        return (
            [self.dream_start_token_id]
            + [self.image_patch_token_id] * self.num_dream_queries
            + [self.dream_end_token_id]
        )

    def __call__(
        self, text: str | list[str] | None = None, images=None, **kwargs: Unpack[DreamLLMProcessorKwargs]
    ) -> BatchFeature:
        r"""
        Encode a document or a batch of documents for the model.

        Args:
            text: one string or a non-empty list of strings with `<image>` / `<dream>` placeholders.
            images: PIL images / arrays consumed in document order, one per placeholder: a flat list over the batch,
                or one list per document.
            kwargs: transformers' text kwargs (`padding` (default True), `padding_side` (default left),
                `truncation` / `max_length`: documents over `max_length` (default: the tokenizer's
                `model_max_length`) lose whole trailing units, text tokens or image blocks, or raise with
                `truncation=False`), `add_eos` (default False), `return_tensors` (default "pt").

        Raises:
            `ValueError` / `TypeError` naming the input: no or empty `text`, text holding block tokens, placeholders
            and images that do not match, unreadable or ambiguous images, `max_length` < 1.
        """
        # transformers would only warn about it and drop it: a training call must not go unlabelled
        if "return_labels" in kwargs:
            raise TypeError(
                "return_labels: the processor prepares model inputs only; training labels come from "
                "train.data.labels (encode_documents, encode_conversation)"
            )
        # No `tokenizer_init_kwargs`: a tokenizer saved with right padding must not turn generation's default around.
        text_kwargs = self._merge_kwargs(DreamLLMProcessorKwargs, **kwargs)["text_kwargs"]
        documents = self.expand(
            [self.tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in self._check_texts(text)],
            images,
            text_kwargs["add_eos"],
            text_kwargs["truncation"],
            text_kwargs.get("max_length"),
        )
        return self.collate(
            documents, text_kwargs["padding"], text_kwargs["padding_side"], text_kwargs["return_tensors"]
        )

    def expand(
        self,
        encodings: list[list[int]],
        images=None,
        add_eos: bool = False,
        truncation: bool = True,
        max_length: int | None = None,
    ) -> list[list[Unit]]:
        """Tokenized documents as units: placeholders expanded into blocks with their images, cut to `max_length`."""
        if max_length is not None and (
            isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
        ):
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        max_length = max_length or self.tokenizer.model_max_length
        documents = []
        for index, (ids, queue) in enumerate(zip(encodings, self._split_images(encodings, images))):
            blocked = next((token for token in ids if token in self._block_token_ids), None)
            if blocked is not None:
                raise ValueError(
                    f"text[{index}] contains {self._block_token_ids[blocked]!r}: block tokens are written by the "
                    f"processor from {IMAGE_PLACEHOLDER} / {DREAM_PLACEHOLDER} placeholders and cannot come from text"
                )
            # A template may write `<s>` itself (Mistral, Llama-3).
            units = [Unit(self.prefix_ids)] if self.prefix_ids and ids[:1] != self.prefix_ids else []
            for position, token in enumerate(ids):
                if token == self.image_token_id:
                    units.append(Unit(self.image_block(), position, (("clip", queue.pop(0)),)))
                elif token == self.dream_token_id and queue:  # creation with a target, read back through CLIP
                    image = queue.pop(0)
                    units.append(
                        Unit(self.dream_block() + self.image_block(), position, (("target", image), ("clip", image)))
                    )
                else:
                    units.append(Unit(self.dream_block() if token == self.dream_token_id else [token], position))
            units += [Unit([self.eos_token_id])] if add_eos else []
            length = sum(len(unit.ids) for unit in units)
            if length > max_length and not truncation:
                raise ValueError(
                    f"text[{index}] has {length} tokens, over max_length={max_length}, and truncation=False"
                )
            end = units[-1:] if length > max_length and units[-1].ids == [self.eos_token_id] else []  # kept when cut
            while units and sum(len(unit.ids) for unit in units) + len(end) > max_length:
                units.pop()
            documents.append(units + end)
        return documents

    def collate(
        self, documents: list[list[Unit]], padding=True, padding_side="left", return_tensors="pt"
    ) -> BatchFeature:
        """Expanded documents as model inputs: ids padded by the tokenizer, images through the image processors."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        sequences = [[token for unit in units for token in unit.ids] for units in documents]
        data = dict(self.tokenizer.pad({"input_ids": sequences}, padding=padding, padding_side=padding_side))
        images = {
            kind: [image for units in documents for unit in units for use, image in unit.images if use == kind]
            for kind in ("clip", "target")
        }
        if images["clip"]:
            data["pixel_values"] = self.image_processor(images["clip"], return_tensors="pt")["pixel_values"]
        if images["target"]:
            data["target_pixel_values"] = self.diffusion_image_processor(images["target"], return_tensors="pt")[
                "pixel_values"
            ]
        return BatchFeature(data=data, tensor_type=return_tensors)

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """`ProcessorMixin.apply_chat_template` after `check_messages`: roles the template cannot render faithfully
        (a `tool` turn, a `system` message after the first, a message without `role` or `content`) raise. With an
        LLM's own template (no `{% generation %}` spans), list content is first written as text with placeholders."""
        batched = (
            isinstance(conversation, (list, tuple)) and conversation and isinstance(conversation[0], (list, tuple))
        )
        for index, messages in enumerate(conversation if batched else [conversation]):
            check_messages(messages, f"conversation[{index}]" if batched else "messages")
        if not self._marks_assistant_spans(chat_template):
            conversation = [flatten_content(m) for m in conversation] if batched else flatten_content(conversation)
        return super().apply_chat_template(conversation, chat_template=chat_template, **kwargs)

    def _marks_assistant_spans(self, chat_template: str | None = None) -> bool:
        """Whether the template marks assistant replies with `{% generation %}` (the release's Vicuna template does;
        an LLM's own template, such as Qwen2's ChatML, does not)."""
        return bool(GENERATION_MARKER.search(chat_template or self.chat_template or ""))

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

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values", "target_pixel_values"]


__all__ = [
    "DreamLLMProcessor",
    "DreamLLMProcessorKwargs",
    "CHAT_TEMPLATE",
    "SYSTEM_PROMPT",
    "IGNORE_INDEX",
    "IMAGE_PLACEHOLDER",
    "DREAM_PLACEHOLDER",
    "check_messages",
    "flatten_content",
    "to_rgb_image",
]
