"""Data sources: what a `--data PATH[:WEIGHT]` points at, and the light records it yields.

A record is `{"kind": "pair" | "json", "record": <JSON string>, "blobs": [bytes, ...]}`: no decoded image, so records
are cheap to index, shuffle and mix; `train.data.samples` turns one into a training sample later (in the data-loader
workers). Images are referred to, never copied, except for streamed tar members and Hugging Face rows (`blobs`).

    source = DataSource.parse("data/laion_shards:2")     # kind detected from the folder's contents
    source.kind, source.weight                            # ('webdataset', 2.0)
    records = list(source.iter_records())                 # map-style index (tar members by offset)
    stream = source.iter_records(streaming=True)          # sequential reading (tar members' bytes in blobs)

Kinds: `pairs` (a folder of `NAME.png|jpg` + `NAME.txt`), `webdataset` (`.tar` shards of `KEY.jpg|png` +
`KEY.txt|json`), `json` (`.jsonl` / `.json` documents: MMC4 interleaved, LLaVA conversations, instructions, pairs;
images resolved next to the file or under its `images/`), `hf` (a `save_to_disk` folder or `.parquet` files with an
image column and a caption column).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from train.errors import InputError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CAPTION_EXTENSIONS = (".txt", ".json")
CAPTION_FIELDS = ("caption", "text", "TEXT", "txt")
SOURCE_KINDS = ("pairs", "webdataset", "json", "hf")
MAX_FILE_BYTES = 64 * 2**20  # largest image or caption file read (the same cap for tar members)
KINDS_HINT = "a folder of NAME.png|jpg + NAME.txt pairs, .tar shards, .jsonl/.json, .parquet or a save_to_disk folder"
# What reading a damaged shard raises: tarfile's own errors, and those of its decompressors.
TAR_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


def record(kind: str, payload: dict, blobs: list[bytes] | None = None) -> dict:
    return {"kind": kind, "record": json.dumps(payload, ensure_ascii=False), "blobs": blobs or []}


def _split_weight(spec: str) -> tuple[str, float]:
    """`PATH:WEIGHT` -> (PATH, WEIGHT); a colon that is part of an existing path is kept."""
    head, sep, tail = spec.rpartition(":")
    if sep and head and not os.path.exists(spec):
        try:
            return head, float(tail)
        except ValueError:
            pass
    return spec, 1.0


def _webdataset_key(member_name: str) -> tuple[str, str]:
    """Webdataset convention: the key is the path up to the first dot of the basename, the rest the field."""
    directory, base = os.path.split(member_name)
    stem, dot, extension = base.partition(".")
    return os.path.join(directory, stem), ("." + extension.lower()) if dot else ""


@dataclass
class DataSource:
    """One `--data` argument: its files, detected kind and mixing weight."""

    path: str
    kind: str
    files: list[str] = field(default_factory=list)
    weight: float = 1.0
    max_file_bytes: int = MAX_FILE_BYTES

    @classmethod
    def parse(cls, spec: str, max_file_bytes: int = MAX_FILE_BYTES) -> DataSource:
        """A `--data PATH[:WEIGHT]` argument; a path that is not a usable source is an `InputError` naming it."""
        path, weight = _split_weight(spec)
        if not weight > 0 or weight == float("inf"):
            raise InputError(f"--data {spec}: the weight must be a positive number")
        kind, files = detect_kind(path)
        if kind == "webdataset":
            for tar_path in files:
                check_tar(tar_path)
        return cls(path=path, kind=kind, files=files, weight=weight, max_file_bytes=max_file_bytes)

    @property
    def name(self) -> str:
        return Path(self.path.rstrip("/")).name or self.path

    def iter_records(self, streaming: bool = False, files: list[str] | None = None) -> Iterator[dict]:
        """Records of `files` (default: all of this source's files, i.e. its shards), in a fixed order."""
        files = self.files if files is None else files
        if self.kind == "pairs":
            yield from iter_pair_folder(files)
        elif self.kind == "webdataset":
            for tar_path in files:
                yield from (iter_tar_stream(tar_path, self.max_file_bytes) if streaming else iter_tar_index(tar_path))
        elif self.kind == "json":
            for json_path in files:
                yield from iter_json_documents(json_path)
        else:
            raise ValueError(f"{self.kind} sources are read through `datasets` (see train.data.dataset)")


def detect_kind(path: str) -> tuple[str, list[str]]:
    """(kind, files) of a data path; the kind comes from the contents. For `pairs`, files are the image files."""
    if any(char in path for char in "*?["):
        matches = sorted(glob.glob(path))
        if not matches:
            raise InputError(f"--data {path}: no file matches; pass {KINDS_HINT}")
        kinds = {detect_kind(match)[0] for match in matches}
        if len(kinds) != 1:
            raise InputError(f"--data {path}: mixes source kinds {sorted(kinds)}; pass them separately")
        return kinds.pop(), [f for match in matches for f in detect_kind(match)[1]]
    target = Path(path)
    if target.is_file():
        suffix = target.suffix.lower()
        if suffix == ".tar":
            return "webdataset", [str(target)]
        if suffix in (".jsonl", ".json"):
            return "json", [str(target)]
        if suffix == ".parquet":
            return "hf", [str(target)]
        raise InputError(f"--data {path}: unsupported file type {suffix!r}; pass {KINDS_HINT}")
    if os.path.lexists(target) and not target.is_dir():
        raise InputError(f"--data {path}: not a regular file or folder; pass {KINDS_HINT}")
    if not target.is_dir():
        raise InputError(f"--data {path}: no such file or folder; pass {KINDS_HINT}")
    if (target / "state.json").is_file() and (target / "dataset_info.json").is_file():
        return "hf", [str(target)]
    listing = sorted(target.iterdir())
    entries = [p for p in listing if p.is_file()]
    others = [p.name for p in listing if not p.is_file() and not p.is_dir()]
    if others:  # FIFOs, sockets, devices, dangling links: never opened
        logger.warning("--data %s: ignoring %d entries that are not regular files: %s", path, len(others), others[:5])
    by_suffix = lambda *suffixes: [str(p) for p in entries if p.suffix.lower() in suffixes]  # noqa: E731
    if by_suffix(".tar"):
        return "webdataset", by_suffix(".tar")
    if by_suffix(".jsonl", ".json"):
        return "json", by_suffix(".jsonl", ".json")
    if by_suffix(".parquet"):
        return "hf", by_suffix(".parquet")
    images = [p for p in entries if p.suffix.lower() in IMAGE_EXTENSIONS]
    if any(p.with_suffix(".txt").is_file() for p in images):
        # Every image-named entry but folders: links and special files become counted skips when read.
        named = [p for p in listing if p.suffix.lower() in IMAGE_EXTENSIONS and not p.is_dir()]
        return "pairs", [str(p) for p in named]
    raise InputError(f"--data {path}: cannot tell the kind of this folder; pass {KINDS_HINT}")


def check_tar(tar_path: str) -> None:
    """A shard opens as a tar archive and, uncompressed, ends with the end-of-archive blocks (a cut-short copy does
    not); otherwise an `InputError` naming it."""
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            archive.next()
    except TAR_ERRORS as error:
        raise InputError(f"--data {tar_path}: not a readable tar archive ({error})") from error
    try:
        tarfile.open(tar_path, "r:").close()
    except tarfile.TarError:
        return  # compressed: a cut-short stream is reported when its end is read
    size = os.path.getsize(tar_path)
    with open(tar_path, "rb") as handle:
        handle.seek(max(0, size - 2 * tarfile.BLOCKSIZE))
        end = handle.read()
    if size % tarfile.BLOCKSIZE or end != bytes(2 * tarfile.BLOCKSIZE):
        raise InputError(f"--data {tar_path}: truncated tar archive (no end-of-archive marker); copy it again")


# ------------------------------------------------------------------------------------------------------ readers
def iter_pair_folder(image_files: list[str]) -> Iterator[dict]:
    """`NAME.png` + `NAME.txt`: one pair per image (a missing caption file is reported when the pair is read); both
    files must lie in the pair's folder (`root`)."""
    for image_file in image_files:
        caption_file = os.path.splitext(image_file)[0] + ".txt"
        root = os.path.dirname(os.path.abspath(image_file))
        payload = {"key": image_file, "image": {"path": image_file}, "caption_file": caption_file, "root": root}
        yield record("pair", payload)


def _group_tar_members(tar_path: str) -> Iterator[tuple[str, dict[str, tarfile.TarInfo]]]:
    """Consecutive members sharing a webdataset key, as (key, {extension: member}). Member names are keys only:
    nothing is ever extracted to the file system."""
    try:
        with tarfile.open(tar_path, "r:*") as archive:
            current_key, group = None, {}
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = _webdataset_key(member.name)
                if key != current_key and group:
                    yield current_key, group
                    group = {}
                current_key = key
                group[extension] = member
            if group:
                yield current_key, group
    except TAR_ERRORS as error:
        raise InputError(f"--data {tar_path}: damaged or truncated tar archive ({error}); copy it again") from error


def _tar_pair_fields(group: dict) -> tuple[str | None, str | None]:
    image_ext = next((ext for ext in group if ext in IMAGE_EXTENSIONS), None)
    caption_ext = next((ext for ext in CAPTION_EXTENSIONS if ext in group), None)
    return image_ext, caption_ext


def iter_tar_index(tar_path: str) -> Iterator[dict]:
    """Map-style: members referred to by (offset, size), read by seeking when the sample is built."""
    for key, group in _group_tar_members(tar_path):
        image_ext, caption_ext = _tar_pair_fields(group)
        refs = {
            ext: {"tar": tar_path, "offset": group[ext].offset_data, "size": group[ext].size, "ext": ext}
            for ext in (image_ext, caption_ext)
            if ext is not None
        }
        payload = {"key": f"{tar_path}#{key}", "image": refs.get(image_ext), "caption_ref": refs.get(caption_ext)}
        yield record("pair", payload)


def iter_tar_stream(tar_path: str, max_file_bytes: int = MAX_FILE_BYTES) -> Iterator[dict]:
    """Streaming: members read sequentially; their bytes travel in `blobs` (0: image, 1: caption). A member over
    `max_file_bytes` is not read: its reference says so, and the record is skipped as `file_too_large`."""
    current_key, group = None, {}

    def reference(extension: str | None, blob: int) -> dict | None:
        if extension is None:
            return None
        data = group[extension]
        return {"blob": blob, "ext": extension, **({"too_large": data} if isinstance(data, int) else {})}

    def flush():
        image_ext, caption_ext = _tar_pair_fields(group)
        blobs = [group.get(ext) if isinstance(group.get(ext), bytes) else b"" for ext in (image_ext, caption_ext)]
        payload = {"key": f"{tar_path}#{current_key}", "image": reference(image_ext, 0)}
        payload["caption_ref"] = reference(caption_ext, 1)
        return record("pair", payload, blobs)

    try:
        with tarfile.open(tar_path, "r|*") as archive:  # a pure stream: no seeking, works on pipes and object stores
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = _webdataset_key(member.name)
                if key != current_key and group:
                    yield flush()
                    group = {}
                current_key = key
                too_large = member.size > max_file_bytes
                group[extension] = member.size if too_large else archive.extractfile(member).read()
            if group:
                yield flush()
    except TAR_ERRORS as error:
        raise InputError(f"--data {tar_path}: damaged or truncated tar archive ({error}); copy it again") from error


def iter_json_documents(json_path: str) -> Iterator[dict]:
    """One record per line of a `.jsonl` (parsed later, so a broken line is counted, not fatal), or per element of a
    `.json` array (a file that does not parse at all is an error of the source)."""
    root = os.path.dirname(os.path.abspath(json_path))
    if json_path.endswith(".jsonl"):
        with open(json_path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle):
                if line.strip():
                    yield record("json", {"key": f"{json_path}:{number}", "line": line, "root": root})
        return
    with open(json_path, encoding="utf-8", errors="replace") as handle:
        try:
            content = json.load(handle)
        except (ValueError, RecursionError) as error:
            problem = f"not valid JSON ({error}); use .jsonl to skip broken records"
            raise InputError(f"--data {json_path}: {problem}") from error
    items = content if isinstance(content, list) else [content]
    for number, item in enumerate(items):
        yield record("json", {"key": f"{json_path}:{number}", "item": item, "root": root})


__all__ = [
    "CAPTION_FIELDS", "DataSource", "IMAGE_EXTENSIONS", "MAX_FILE_BYTES", "SOURCE_KINDS", "check_tar", "detect_kind",
    "record",
]
