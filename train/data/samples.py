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
- text-to-image instruction (`instruction` or `prompt`, `image`): the answer is `<dream>` with the image as target,
  read back through CLIP as generation reads back every created image, then `</s>`: the reply learns to end after
  the image it was asked for (a reply `<dream>`, so `reply_dream_labels` applies; officially too a `<dream>` in a
  conversation expands to the creation block plus the CLIP block).
- a JSON pair (`caption` or `text`, `image`): as an image-text pair.
A record that cannot make a sample raises `BadSample(reason)`; the caller skips and counts it. Every field a format
reads is checked (type, range); a wrong one is `invalid_field`, an absent one `missing_field`.

Files named by records are read only inside the data: a path resolves (links followed) inside the folder of the
file that names it, or of a pair folder, or an image folder passed explicitly (`image_folders`); only regular files
are opened, at most `max_file_bytes` of each; URLs are never fetched. Anything else is a counted skip naming why:
`url_not_fetched`, `outside_data_folder`, `not_a_regular_file`, `file_too_large`.
"""

from __future__ import annotations

import io
import json
import math
import os
import stat
import warnings
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from .sources import CAPTION_FIELDS, MAX_FILE_BYTES

IMAGE = "<image>"
DREAM = "<dream>"
PAIR_LABELS = ("caption", "none")
REPLY_DREAM_LABELS = ("dream_start", "none")
INTERLEAVED_BLOCKS = ("both", "creation", "comprehension")
PATH_REASONS = ("url_not_fetched", "outside_data_folder", "not_a_regular_file", "file_too_large")
SKIP_REASONS = (
    "broken_json", "missing_field", "invalid_field", "unreadable_image", *PATH_REASONS, "too_long", "invalid_sample",
    "small_image",
)
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
    learn_dream_start: bool = True  # False: `<dream_start>` unlearned (reply `<dream>`s, reply_dream_labels="none")
    notes: Counter = field(default_factory=Counter)


# ------------------------------------------------------------------------------------------------ field checks
def _string(item: dict, name: str, required: bool = True) -> str | None:
    """`item[name]` as a non-empty string (None when absent and not `required`)."""
    value = item.get(name)
    if value is None:
        if required:
            raise BadSample("missing_field", f"no {name!r}")
        return None
    if not isinstance(value, str):
        raise BadSample("invalid_field", f"{name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise BadSample("missing_field", f"empty {name!r}")
    return value


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadSample("invalid_field", f"{name} must be an integer, got {value!r}"[:200])
    return value


def _number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadSample("invalid_field", f"{name} must be a finite number, got {value!r}"[:200])
    return float(value)


def _image_names(value) -> list[str]:
    """LLaVA's `image`: absent, one name or a list of names."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(name, str) and name.strip() for name in names):
        raise BadSample("invalid_field", f"'image' must be a file name or a list of them, got {value!r}"[:200])
    return names


# --------------------------------------------------------------------------------------------------- files
def _inside(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def read_file(path: str, roots: Sequence[str], max_bytes: int = MAX_FILE_BYTES, missing: str = "unreadable_image"):
    """The bytes of a file a record names: a regular file inside one of `roots` (real paths; links are followed
    before the check), at most `max_bytes`; otherwise a `BadSample` naming why (`missing` when it cannot be read)."""
    if "://" in path:
        raise BadSample("url_not_fetched", path[:200])
    real = os.path.realpath(path)
    if not _inside(real, roots):
        raise BadSample("outside_data_folder", f"{path} is outside {', '.join(roots)}")
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOFOLLOW: no link swapped in after the check.
        descriptor = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as error:
        raise BadSample(missing, f"{path}: {error.strerror}") from error
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise BadSample("not_a_regular_file", path)
        if info.st_size > max_bytes:
            raise BadSample("file_too_large", f"{path}: {info.st_size} bytes (at most {max_bytes})")
        chunks, size = [], 0
        while size <= max_bytes and (chunk := os.read(descriptor, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
        data = b"".join(chunks)
    except OSError as error:
        raise BadSample(missing, f"{path}: {error.strerror}") from error
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise BadSample("file_too_large", f"{path}: over {max_bytes} bytes")
    return data


def open_image(data: bytes) -> Image.Image:
    try:
        with warnings.catch_warnings():  # Pillow's decompression-bomb limit, as an error rather than a warning
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if not image.width or not image.height:
                    raise BadSample("unreadable_image", f"{image.width}x{image.height} pixels")
                return image.convert("RGB")  # forces the full decode here, not later in the processor
    except BadSample:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise BadSample("file_too_large", str(error)) from error
    except Exception as error:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise BadSample("unreadable_image", str(error)) from error


def caption_from_bytes(data: bytes, extension: str | None) -> str:
    text = data.decode("utf-8", errors="replace")
    if extension == ".json":
        try:
            content = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise BadSample("broken_json", str(error)) from error
        if not isinstance(content, dict):
            raise BadSample("invalid_field", "a caption .json must be an object")
        name = next((name for name in CAPTION_FIELDS if name in content), None)
        if name is None:
            raise BadSample("missing_field", f"caption .json without {' / '.join(CAPTION_FIELDS)}")
        text = _string(content, name)
    return text.strip()


# -------------------------------------------------------------------------------------------------- builder
class SampleBuilder:
    """Turns source records into `SampleSpec`s (see the module docstring for the formats and the file rules).

    Args:
        creation_prob: share of image-text pairs used for creation (the rest for understanding).
        min_similarity: MMC4 images with `matched_sim` below it are dropped (None: keep all).
        seed: fixes each pair's creation/understanding choice.
        image_folders: folders, besides the data's own, that records may name images in.
        max_file_bytes: largest file (image or caption) read.
        pair_labels, reply_dream_labels, interleaved_blocks: what is learned and which blocks an interleaved
            document keeps (the module docstring; `PAIR_LABELS`, `REPLY_DREAM_LABELS`, `INTERLEAVED_BLOCKS`).
        pair_min_size: image-text pairs whose image has a side of this many pixels or fewer are skipped
            (`small_image`); 0: none (the official SFT run uses 128).
    """

    def __init__(
        self,
        creation_prob: float = 0.5,
        min_similarity: float | None = 0.25,
        seed: int = 42,
        image_folders: Sequence[str] = (),
        max_file_bytes: int = MAX_FILE_BYTES,
        *,
        pair_labels: str = "caption",
        reply_dream_labels: str = "dream_start",
        interleaved_blocks: str = "both",
        pair_min_size: int = 0,
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
        self.image_folders = [os.path.realpath(folder) for folder in image_folders]
        self.max_file_bytes = max_file_bytes
        self.pair_labels = pair_labels
        self.reply_dream_labels = reply_dream_labels
        self.interleaved_blocks = interleaved_blocks
        self.pair_min_size = pair_min_size

    def build(self, row: dict) -> SampleSpec:
        payload = json.loads(row["record"])
        blobs = row.get("blobs") or []
        if row["kind"] == "pair":
            return self._pair_record(payload, blobs)
        return self._json_record(payload)

    # ------------------------------------------------------------------------------------------------ files
    def _roots(self, root: str | None) -> list[str]:
        return ([os.path.realpath(root)] if root else []) + self.image_folders

    def read_ref(self, ref: dict, blobs: list, root: str | None, missing: str = "unreadable_image") -> bytes:
        """Bytes behind an image/caption reference: a file path, a tar member (offset, size) or a streamed blob."""
        if ref.get("too_large") is not None or ref.get("size", 0) > self.max_file_bytes:
            size = ref.get("too_large", ref.get("size"))
            raise BadSample("file_too_large", f"{size} bytes (at most {self.max_file_bytes})")
        if "blob" in ref:
            data = blobs[ref["blob"]] if ref["blob"] < len(blobs) else None
            if data is None or len(data) > self.max_file_bytes:
                raise BadSample(missing if data is None else "file_too_large", "streamed member")
            return data
        if "tar" in ref:  # a member of the source's own shard, by offset: nothing else can be reached
            with open(ref["tar"], "rb") as handle:
                handle.seek(ref["offset"])
                data = handle.read(ref["size"])
            if len(data) != ref["size"]:
                raise BadSample(missing, f"{ref['tar']}: member cut short")
            return data
        return read_file(ref["path"], self._roots(root), self.max_file_bytes, missing)

    def resolve_name(self, name: str, root: str) -> str:
        """An image named in a JSON document: next to the file, under its `images/`, or in an image folder (an
        absolute name must lie in one of them)."""
        if "://" in name:
            raise BadSample("url_not_fetched", name[:200])
        if os.path.isabs(name):
            return name
        folders = [root, os.path.join(root, "images"), *self.image_folders]
        candidates = [os.path.join(folder, name) for folder in folders]
        return next((path for path in candidates if os.path.lexists(path)), candidates[0])

    def load_named(self, name, root: str) -> Image.Image:
        if not isinstance(name, str) or not name.strip():
            raise BadSample("invalid_field", f"image name {name!r}"[:200])
        return open_image(self.read_ref({"path": self.resolve_name(name, root)}, [], root))

    # ------------------------------------------------------------------------------------------------ pairs
    def _is_creation(self, key: str) -> bool:
        # A hash, not an RNG: the choice is the same in every worker, process and resumed run.
        return zlib.crc32(f"{self.seed}|{key}".encode()) / 2**32 < self.creation_prob

    def pair(self, key: str, caption: str | None, image: Image.Image) -> SampleSpec:
        if not isinstance(caption, str) or not caption.strip():
            raise BadSample("missing_field" if not caption else "invalid_field", f"caption {caption!r}"[:200])
        caption = caption.strip()
        if min(image.size) <= self.pair_min_size:
            raise BadSample("small_image", f"{image.width}x{image.height} pixels, at most {self.pair_min_size} on a side")
        if self._is_creation(key):
            return SampleSpec(text=caption + DREAM, extra_targets=[image], learn_labels=self.pair_labels == "caption")
        return SampleSpec(text=IMAGE + caption, images=[image])

    def _pair_record(self, payload: dict, blobs: list[bytes]) -> SampleSpec:
        root = payload.get("root")
        if payload.get("image") is None:
            raise BadSample("missing_field", f"{payload['key']}: no image")
        if "caption_file" in payload:
            data = self.read_ref({"path": payload["caption_file"]}, [], root, missing="missing_field")
            caption = data.decode("utf-8", errors="replace")
        elif payload.get("caption_ref") is not None:
            ref = payload["caption_ref"]
            caption = caption_from_bytes(self.read_ref(ref, blobs, root, missing="missing_field"), ref.get("ext"))
        elif "caption" in payload:
            caption = payload["caption"]
        else:
            raise BadSample("missing_field", f"{payload['key']}: no caption")
        image = open_image(self.read_ref(payload["image"], blobs, root))
        return self.pair(payload["key"], caption, image)

    # ------------------------------------------------------------------------------------------------- json
    def _json_record(self, payload: dict) -> SampleSpec:
        if "item" in payload:
            item = payload["item"]
        else:
            try:
                item = json.loads(payload["line"])
            except (ValueError, RecursionError) as error:  # also numbers too long to convert
                raise BadSample("broken_json", f"{payload['key']}: {error}") from error
        if not isinstance(item, dict):
            raise BadSample("invalid_field", f"{payload['key']}: a record must be a JSON object")
        root, key = payload["root"], payload["key"]
        if "conversations" in item:
            return self.conversation(item, root)
        if "text_list" in item:
            instruction = _string(item, "instruction", required=False)
            text, images, notes = self.interleaved(item, root)
            spec = SampleSpec(text=text, truncatable=True, notes=notes)
            if instruction is not None:
                spec.text = None
                spec.messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": text}]
            # Creation blocks only: no read-back, every image is the target of its block.
            setattr(spec, "extra_targets" if self.interleaved_blocks == "creation" else "images", images)
            return spec
        prompt_field = next((name for name in ("instruction", "prompt") if name in item), None)
        if prompt_field is not None:
            prompt = _string(item, prompt_field)
            image = self.load_named(_string(item, "image"), root)
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": DREAM}]
            # The image is the block's target and its read-back: `</s>` is learned after `<im_end>`, where generation
            # stands once the image is drawn (without the read-back the reply never learns to stop there).
            return SampleSpec(messages=messages, images=[image], learn_dream_start=self._reply_dream_start)
        caption_field = next((name for name in CAPTION_FIELDS if name in item), None)
        if caption_field is not None:
            caption = _string(item, caption_field)
            return self.pair(key, caption, self.load_named(_string(item, "image"), root))
        raise BadSample("missing_field", f"{key}: not a known document format")

    def conversation(self, item: dict, root: str) -> SampleSpec:
        """LLaVA: `{"image": "x.jpg" | [...], "conversations": [{"from": "human", "value": "<image>\\n..."}, ...]}`."""
        turns = item["conversations"]
        if not isinstance(turns, list):
            raise BadSample("invalid_field", "'conversations' must be a list")
        if not turns:
            raise BadSample("missing_field", "empty conversations")
        messages = []
        for position, turn in enumerate(turns):
            if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
                raise BadSample("invalid_field", f"turn {position} {turn!r}"[:200])
            if turn.get("from") not in ROLES:
                raise BadSample("invalid_field", f"turn {position}: unknown role {turn.get('from')!r}"[:200])
            role = ROLES[turn["from"]]
            if role == "system" and position:
                raise BadSample("invalid_field", f"turn {position}: a system turn can only come first")
            messages.append({"role": role, "content": turn["value"]})
        if not any(message["role"] == "assistant" for message in messages):
            raise BadSample("missing_field", "no assistant reply to learn")
        images = [self.load_named(name, root) for name in _image_names(item.get("image"))]
        placeholders = sum(message["content"].count(IMAGE) for message in messages)
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if images and placeholders == 0 and first_user is not None:  # some LLaVA sets omit the placeholder
            first_user["content"] = (IMAGE + "\n") * len(images) + first_user["content"]
            placeholders = len(images)
        if placeholders != len(images):
            raise BadSample("invalid_field", f"{placeholders} {IMAGE} placeholders for {len(images)} images")
        return SampleSpec(messages=messages, images=images, learn_dream_start=self._reply_dream_start)

    @property
    def _reply_dream_start(self) -> bool:
        return self.reply_dream_labels == "dream_start"

    def _image_info(self, info, count: int) -> tuple[str, int, float | None]:
        """One MMC4 `image_info` entry, checked: (image_name, matched_text_index, matched_sim or None)."""
        if not isinstance(info, dict):
            raise BadSample("invalid_field", f"image_info entry {info!r}"[:200])
        name = _string(info, "image_name")
        if "matched_text_index" not in info:
            raise BadSample("missing_field", "image_info entry without matched_text_index")
        index = _integer(info["matched_text_index"], "matched_text_index")
        if not 0 <= index < count:
            raise BadSample("invalid_field", f"matched_text_index {index} outside text_list (0..{count - 1})")
        similarity = info.get("matched_sim")
        return name, index, None if similarity is None else _number(similarity, "matched_sim")

    def interleaved(self, item: dict, root: str) -> tuple[str, list[Image.Image], Counter]:
        """MMC4: sentences in order, each followed by the images matched to it (similarity-filtered) as `<dream>`
        (`<image>` when `interleaved_blocks="comprehension"`)."""
        sentences, infos = item.get("text_list"), item.get("image_info")
        infos = [] if infos is None else infos
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise BadSample("invalid_field", "text_list must be a list of strings")
        if not isinstance(infos, list):
            raise BadSample("invalid_field", "image_info must be a list")
        entries = sorted((self._image_info(info, len(sentences)) for info in infos), key=lambda entry: entry[1])
        notes = Counter()
        placed: dict[int, list[Image.Image]] = {}
        for name, index, similarity in entries:
            if self.min_similarity is not None and similarity is not None and similarity < self.min_similarity:
                notes["filtered_low_similarity_images"] += 1
                continue
            try:
                image = self.load_named(name, root)
            except BadSample as bad:
                if bad.reason != "unreadable_image":  # a path the data may not name skips the whole record
                    raise
                notes["dropped_unreadable_images"] += 1  # a missing or broken image drops out, as officially
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
    "PATH_REASONS",
    "read_file",
    "PAIR_LABELS",
    "REPLY_DREAM_LABELS",
    "INTERLEAVED_BLOCKS",
]
