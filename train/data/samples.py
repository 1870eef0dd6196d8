"""The training formats: one source record -> the text (or chat) and images the processor encodes.

    builder = SampleBuilder(creation_prob=0.5, min_similarity=0.25, seed=42)
    spec = builder.build(row)       # row: {"kind", "record", "blobs"} from train.data.sources
    spec.text, spec.images          # 'a red circle<dream>', []  (+ spec.extra_targets: [PIL image])

Formats (`<dream>` = creation block). The block layout and the interleaved-document and conversation formats are the
official release's; what is learned follows the builder's options, whose defaults are this project's (the official
choice is named where it differs, see docs/differences.md):
- image-text pair, understanding: `<image>caption` (the caption is learned);
  creation: `caption<dream>` with the image as the diffusion target, no CLIP read-back (nothing follows it);
  `pair_labels="caption"` learns the caption, `<dream_start>` and `</s>`; `"none"` (official) learns nothing, the
  pair trains the diffusion loss only. Each pair is one or the other, with probability `creation_prob` for
  creation, fixed per pair by a hash.
- MMC4 interleaved document (`text_list`, `image_info` with `image_name`, `matched_text_index`, `matched_sim`):
  images with `matched_sim < min_similarity` are dropped (`None`: no filter, the official code's); the others
  follow their matched sentence as `<dream>` (creation block + CLIP read-back), so the LM learns where images go
  (`<dream_start>` is learned, as officially). `interleaved_blocks="creation"` keeps the creation blocks only and
  `"comprehension"` the CLIP blocks only (the official creation-only / comprehension-only stage-I runs). An
  unreadable image loses its block, the document keeps its text (as the official loader).
- LLaVA conversation (`image`, `conversations` of human/gpt turns with `<image>`): assistant replies learned; a
  `<dream>` in a reply learns `<dream_start>` with `reply_dream_labels="dream_start"`, not with `"none"` (official).
- instruction + interleaved answer (`instruction`, `text_list`, `image_info`): the answer is an MMC4 document.
- text-to-image instruction (`instruction` or `prompt`, `image`): the answer is `<dream>` with the image as target
  (a reply `<dream>`, so `reply_dream_labels` applies).
- a JSON pair (`caption` or `text`, `image`): as an image-text pair.
A record that cannot make a sample raises `BadSample(reason)`; the caller skips and counts it.
"""

from __future__ import annotations

import io
import json
import os
import zlib
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from .sources import CAPTION_FIELDS

IMAGE = "<image>"
DREAM = "<dream>"
PAIR_LABELS = ("caption", "none")
REPLY_DREAM_LABELS = ("dream_start", "none")
INTERLEAVED_BLOCKS = ("both", "creation", "comprehension")
SKIP_REASONS = ("broken_json", "missing_field", "unreadable_image", "too_long", "invalid_sample")
NOTE_KEYS = ("dropped_unreadable_images", "filtered_low_similarity_images")
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class BadSample(Exception):
    """A record that cannot become a training sample; `reason` is one of `SKIP_REASONS`."""

    def __init__(self, reason: str, detail: str = ""):
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class SampleSpec:
    """What the processor encodes: a document (`text`) or a chat (`messages`, assistant replies learned)."""

    text: str | None = None
    messages: list[dict] | None = None
    images: list[Image.Image] = field(default_factory=list)  # one per placeholder, in order
    # Targets of the <dream>s without read-back, which follow every <dream> that reads an image of `images` back.
    extra_targets: list[Image.Image] = field(default_factory=list)
    truncatable: bool = False  # long documents may lose trailing blocks; others are skipped as too long
    learn_labels: bool = True  # False: every label is -100 (a creation pair under pair_labels="none")
    learn_dream_start: bool = True  # False: `<dream_start>` is not learned (reply `<dream>`s, reply_dream_labels="none")
    notes: Counter = field(default_factory=Counter)


# --------------------------------------------------------------------------------------------------- images
def open_image(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")  # forces the full decode here, not later in the processor
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise BadSample("unreadable_image", str(error)) from error


def read_ref(ref: dict, blobs: list[bytes]) -> bytes:
    """Bytes behind an image/caption reference: a file path, a tar member (offset, size) or a streamed blob."""
    try:
        if "blob" in ref:
            return blobs[ref["blob"]]
        if "tar" in ref:
            with open(ref["tar"], "rb") as handle:
                handle.seek(ref["offset"])
                return handle.read(ref["size"])
        with open(ref["path"], "rb") as handle:
            return handle.read()
    except (OSError, IndexError, KeyError) as error:
        raise BadSample("unreadable_image", str(error)) from error


def resolve_path(name: str, root: str) -> str:
    """An image named in a JSON document: absolute, next to the file, or under its `images/` folder."""
    if os.path.isabs(name):
        return name
    candidates = [os.path.join(root, name), os.path.join(root, "images", name)]
    return next((path for path in candidates if os.path.exists(path)), candidates[0])


def caption_from_bytes(data: bytes, extension: str | None) -> str:
    text = data.decode("utf-8", errors="replace")
    if extension == ".json":
        try:
            content = json.loads(text)
        except json.JSONDecodeError as error:
            raise BadSample("broken_json", str(error)) from error
        text = next((content[name] for name in CAPTION_FIELDS if isinstance(content, dict) and content.get(name)), "")
    return text.strip()


# -------------------------------------------------------------------------------------------------- builder
class SampleBuilder:
    """Turns source records into `SampleSpec`s (see the module docstring for the formats)."""

    def __init__(
        self,
        creation_prob: float = 0.5,
        min_similarity: float | None = 0.25,
        seed: int = 42,
        *,
        pair_labels: str = "caption",
        reply_dream_labels: str = "dream_start",
        interleaved_blocks: str = "both",
    ):
        if not 0 <= creation_prob <= 1:
            raise ValueError(f"creation_prob must be in [0, 1], got {creation_prob}")
        for name, value, choices in (
            ("pair_labels", pair_labels, PAIR_LABELS),
            ("reply_dream_labels", reply_dream_labels, REPLY_DREAM_LABELS),
            ("interleaved_blocks", interleaved_blocks, INTERLEAVED_BLOCKS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.creation_prob = creation_prob
        self.min_similarity = min_similarity
        self.seed = seed
        self.pair_labels = pair_labels
        self.reply_dream_labels = reply_dream_labels
        self.interleaved_blocks = interleaved_blocks

    def build(self, row: dict) -> SampleSpec:
        payload = json.loads(row["record"])
        blobs = row.get("blobs") or []
        if row["kind"] == "pair":
            return self._pair_record(payload, blobs)
        return self._json_record(payload)

    # ------------------------------------------------------------------------------------------------ pairs
    def _is_creation(self, key: str) -> bool:
        # A hash, not an RNG: the choice is the same in every worker, process and resumed run.
        return zlib.crc32(f"{self.seed}|{key}".encode()) / 2**32 < self.creation_prob

    def pair(self, key: str, caption: str | None, image: Image.Image) -> SampleSpec:
        if not caption or not caption.strip():
            raise BadSample("missing_field", "empty caption")
        caption = caption.strip()
        if self._is_creation(key):
            return SampleSpec(text=caption + DREAM, extra_targets=[image], learn_labels=self.pair_labels == "caption")
        return SampleSpec(text=IMAGE + caption, images=[image])

    def _pair_record(self, payload: dict, blobs: list[bytes]) -> SampleSpec:
        if payload.get("image") is None:
            raise BadSample("missing_field", f"{payload['key']}: no image")
        if "caption_file" in payload:
            try:
                with open(payload["caption_file"], encoding="utf-8", errors="replace") as handle:
                    caption = handle.read()
            except OSError as error:
                raise BadSample("missing_field", str(error)) from error
        elif payload.get("caption_ref") is not None:
            ref = payload["caption_ref"]
            caption = caption_from_bytes(read_ref(ref, blobs), ref.get("ext"))
        elif payload.get("caption") is not None:
            caption = payload["caption"]
        else:
            raise BadSample("missing_field", f"{payload['key']}: no caption")
        image = open_image(read_ref(payload["image"], blobs))
        return self.pair(payload["key"], caption, image)

    # ------------------------------------------------------------------------------------------------- json
    def _json_record(self, payload: dict) -> SampleSpec:
        if "item" in payload:
            item = payload["item"]
        else:
            try:
                item = json.loads(payload["line"])
            except json.JSONDecodeError as error:
                raise BadSample("broken_json", f"{payload['key']}: {error}") from error
        if not isinstance(item, dict):
            raise BadSample("missing_field", f"{payload['key']}: a record must be a JSON object")
        root, key = payload["root"], payload["key"]
        if "conversations" in item:
            return self.conversation(item, root)
        if "text_list" in item:
            text, images, notes = self.interleaved(item, root)
            spec = SampleSpec(text=text, truncatable=True, notes=notes)
            if "instruction" in item:
                spec.text, spec.messages = None, [
                    {"role": "user", "content": str(item["instruction"])},
                    {"role": "assistant", "content": text},
                ]
            # Creation blocks only: no read-back, every image is the target of its block.
            setattr(spec, "extra_targets" if self.interleaved_blocks == "creation" else "images", images)
            return spec
        prompt = item.get("instruction", item.get("prompt"))
        if prompt is not None and item.get("image"):
            image = self._load_named(item["image"], root)
            messages = [{"role": "user", "content": str(prompt)}, {"role": "assistant", "content": DREAM}]
            return SampleSpec(messages=messages, extra_targets=[image], learn_dream_start=self._reply_dream_start)
        caption = next((item[name] for name in CAPTION_FIELDS if isinstance(item.get(name), str)), None)
        if caption is not None and item.get("image"):
            return self.pair(key, caption, self._load_named(item["image"], root))
        raise BadSample("missing_field", f"{key}: not a known document format")

    def _load_named(self, name, root: str) -> Image.Image:
        if not isinstance(name, str):
            raise BadSample("missing_field", f"image name {name!r}")
        return open_image(read_ref({"path": resolve_path(name, root)}, []))

    def conversation(self, item: dict, root: str) -> SampleSpec:
        """LLaVA: `{"image": "x.jpg" | [...], "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}`."""
        turns = item["conversations"]
        if not isinstance(turns, list) or not turns:
            raise BadSample("missing_field", "empty conversations")
        messages = []
        for turn in turns:
            if not isinstance(turn, dict) or turn.get("from") not in ROLES or not isinstance(turn.get("value"), str):
                raise BadSample("missing_field", f"bad turn {turn!r}"[:200])
            messages.append({"role": ROLES[turn["from"]], "content": turn["value"]})
        names = item.get("image") or []
        names = [names] if isinstance(names, str) else list(names)
        images = [self._load_named(name, root) for name in names]
        placeholders = sum(message["content"].count(IMAGE) for message in messages)
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if images and placeholders == 0 and first_user is not None:  # some LLaVA sets omit the placeholder
            first_user["content"] = (IMAGE + "\n") * len(images) + first_user["content"]
            placeholders = len(images)
        if placeholders != len(images):
            raise BadSample("missing_field", f"{placeholders} {IMAGE} placeholders for {len(images)} images")
        return SampleSpec(messages=messages, images=images, learn_dream_start=self._reply_dream_start)

    @property
    def _reply_dream_start(self) -> bool:
        return self.reply_dream_labels == "dream_start"

    def interleaved(self, item: dict, root: str) -> tuple[str, list[Image.Image], Counter]:
        """MMC4: sentences in order, each followed by the images matched to it (similarity-filtered) as `<dream>`
        (`<image>` when `interleaved_blocks="comprehension"`)."""
        sentences, infos = item.get("text_list"), item.get("image_info") or []
        valid_sentences = isinstance(sentences, list) and all(isinstance(s, str) for s in sentences)
        if not valid_sentences or not isinstance(infos, list):
            raise BadSample("missing_field", "text_list must be a list of strings and image_info a list")
        notes = Counter()
        placed: dict[int, list[Image.Image]] = {}
        for info in sorted(infos, key=lambda info: info.get("matched_text_index", 0) if isinstance(info, dict) else 0):
            if not isinstance(info, dict) or "image_name" not in info or "matched_text_index" not in info:
                raise BadSample("missing_field", f"image_info entry {info!r}"[:200])
            index = info["matched_text_index"]
            if not isinstance(index, int) or not 0 <= index < len(sentences):
                raise BadSample("missing_field", f"matched_text_index {index!r} outside text_list")
            similarity = info.get("matched_sim")
            if self.min_similarity is not None and similarity is not None and similarity < self.min_similarity:
                notes["filtered_low_similarity_images"] += 1
                continue
            try:
                image = self._load_named(info["image_name"], root)
            except BadSample:
                notes["dropped_unreadable_images"] += 1
                continue
            placed.setdefault(index, []).append(image)
        pieces, images = [], []
        for index, sentence in enumerate(sentences):
            placeholder = IMAGE if self.interleaved_blocks == "comprehension" else DREAM
            pieces.append(sentence.strip() + placeholder * len(placed.get(index, [])))
            images.extend(placed.get(index, []))
        text = " ".join(piece for piece in pieces if piece)
        if not text:
            raise BadSample("missing_field", "empty text_list")
        return text, images, notes


__all__ = [
    "SampleBuilder",
    "SampleSpec",
    "BadSample",
    "SKIP_REASONS",
    "NOTE_KEYS",
    "PAIR_LABELS",
    "REPLY_DREAM_LABELS",
    "INTERLEAVED_BLOCKS",
]
