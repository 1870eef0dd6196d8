"""Build the training dataset (a `datasets` object) from `--data` sources.

    dataset = build_train_dataset(["data/pairs", "data/mmc4.jsonl:2"], processor, seed=42)
    dataset[0].keys()   # input_ids, labels, pixel_values, target_pixel_values, data_counts

Map-style (default): a `datasets.Dataset` of light records (paths, tar offsets), encoded on access by
`with_transform` in the data-loader workers; the Trainer's sampler shuffles it and resumes exactly.
Streaming (`streaming=True`, for shards too large to index): a `datasets.IterableDataset` whose shards are the
source files (split over data-loader workers), read sequentially, with a shuffle buffer.
Several sources are mixed with `datasets.interleave_datasets`: each is drawn with probability proportional to
its weight until every source has been seen whole (smaller sources repeat).
Every source is tried before training starts: one whose first records all fail (an empty, foreign or broken
source) is an `InputError` naming it and the reasons, not a run that trains on nothing.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from itertools import islice

import datasets
from datasets import Dataset, Features, IterableDataset, List, Value

from train.errors import InputError

from .encoding import CountedStream, MapStyleTransform, SampleEncoder, StreamingTransform
from .samples import BadSample, SampleBuilder
from .sources import CAPTION_FIELDS, MAX_FILE_BYTES, DataSource, record

PROBE_RECORDS = 64  # records of each source tried before training: at least one must make a sample

RECORD_FEATURES = Features({"kind": Value("string"), "record": Value("string"), "blobs": List(Value("binary"))})


def _hf_rows_to_records(dataset, source: DataSource):
    """A Hugging Face image-caption dataset -> pair records (image bytes travel in `blobs`)."""
    columns = dataset.column_names
    image_column = next((c for c in ("image", "jpg", "png", "img") if c in columns), None)
    caption_column = next((c for c in CAPTION_FIELDS + ("txt",) if c in columns), None)
    if image_column is None or caption_column is None:
        raise InputError(f"--data {source.path}: needs an image column and a caption column, got {columns}")
    if isinstance(dataset.features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))

    root = source.path if os.path.isdir(source.path) else os.path.dirname(os.path.abspath(source.files[0]))

    def convert(row: dict, index: int) -> dict:
        image = row[image_column]
        blob = image.get("bytes") if isinstance(image, dict) else image
        blob = blob if isinstance(blob, bytes) else None
        reference = {"blob": 0}
        if blob is None and isinstance(image, dict) and isinstance(image.get("path"), str):
            reference = {"path": image["path"]}  # read, under the file rules, when the sample is built
        payload = {"key": f"{source.path}#{index}", "image": reference, "caption": row[caption_column], "root": root}
        return record("pair", payload, [blob or b""])

    return dataset.map(convert, with_indices=True, remove_columns=columns, features=RECORD_FEATURES)


def _load_hf(source: DataSource, streaming: bool):
    try:
        if source.files[0].endswith(".parquet"):
            loaded = datasets.load_dataset("parquet", data_files=source.files, split="train", streaming=streaming)
        else:
            loaded = datasets.load_from_disk(source.files[0])
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded["train"]
            if streaming:
                loaded = loaded.to_iterable_dataset(num_shards=max(1, min(64, len(loaded))))
    except Exception as error:  # datasets and pyarrow raise many types for files they cannot read
        problem = f"{type(error).__name__}: {error}"
        raise InputError(f"--data {source.path}: cannot be read as a dataset ({problem})") from error
    return _hf_rows_to_records(loaded, source)


def _record_dataset(source: DataSource, streaming: bool):
    if source.kind == "hf":
        return _load_hf(source, streaming)
    if streaming:

        def generate(files: list):
            flat = [name for item in files for name in (item if isinstance(item, list) else [item])]
            yield from source.iter_records(streaming=True, files=flat)

        shards = source.files if source.kind != "pairs" else _chunks(source.files, 64)
        return IterableDataset.from_generator(generate, gen_kwargs={"files": shards}, features=RECORD_FEATURES)
    records = list(source.iter_records())
    if not records:
        raise InputError(f"--data {source.path}: no records found")
    return Dataset.from_list(records, features=RECORD_FEATURES)


def probe_source(source: DataSource, records, encoder: SampleEncoder) -> None:
    """Encode the first records of `source` until one makes a sample; none of `PROBE_RECORDS` is an `InputError`
    naming the source, the reasons and the first problem."""
    reasons, first = Counter(), None
    rows = islice(iter(records), PROBE_RECORDS) if isinstance(records, IterableDataset) else (
        records[index] for index in range(min(PROBE_RECORDS, len(records)))
    )
    for row in rows:
        try:
            encoder.encode(row)
            return
        except BadSample as bad:
            reasons[bad.reason] += 1
            first = first or str(bad)
    tried = sum(reasons.values())
    if not tried:
        raise InputError(f"--data {source.path}: no records found")
    raise InputError(
        f"--data {source.path}: none of its first {tried} records could be used ({dict(reasons)}; first: {first})"[:600]
    )


def _chunks(items: list, count: int) -> list[list]:
    """`items` as at most `count` lists (shards of a folder of pairs), order kept within each."""
    count = max(1, min(count, len(items)))
    size = -(-len(items) // count)
    return [items[start : start + size] for start in range(0, len(items), size)]


def mix(parts: list, weights: list[float], seed: int):
    if len(parts) == 1:
        return parts[0]
    total = sum(weights)
    return datasets.interleave_datasets(
        parts, probabilities=[w / total for w in weights], seed=seed, stopping_strategy="all_exhausted"
    )


def build_train_dataset(
    data: list[str],
    processor,
    *,
    streaming: bool = False,
    creation_prob: float = 0.5,
    min_similarity: float | None = 0.25,
    max_length: int | None = None,
    seed: int = 42,
    shuffle_buffer: int = 1000,
    image_folders: Sequence[str] = (),
    max_file_bytes: int = MAX_FILE_BYTES,
    **format_options,
) -> Dataset | IterableDataset:
    """The encoded training dataset of `--data` specs `PATH[:WEIGHT]` (see `train.data.sources`); records may name
    images in their own folders and in `image_folders`, files of at most `max_file_bytes`. `format_options` are
    `SampleBuilder`'s label and block options (`pair_labels`, `reply_dream_labels`, `interleaved_blocks`,
    `pair_min_size`)."""
    if not data:
        raise InputError("no training data: pass --data PATH (a folder of pairs, .tar shards, .jsonl/.json, ...)")
    for folder in image_folders:
        if not os.path.isdir(folder):
            raise InputError(f"--image_folder {folder}: no such folder")
    sources = [DataSource.parse(spec, max_file_bytes) for spec in data]
    builder = SampleBuilder(creation_prob, min_similarity, seed, image_folders, max_file_bytes, **format_options)
    encoder = SampleEncoder(processor, builder, max_length=max_length)
    parts = [_record_dataset(source, streaming) for source in sources]
    for source, part in zip(sources, parts, strict=True):
        probe_source(source, part, encoder)
    mixed = mix(parts, [source.weight for source in sources], seed)
    if streaming:
        if shuffle_buffer > 1:
            mixed = mixed.shuffle(seed=seed, buffer_size=shuffle_buffer)
        transform = StreamingTransform(encoder)
        encoded = mixed.map(transform, batched=True, batch_size=8, remove_columns=list(RECORD_FEATURES))
        return CountedStream.wrap(encoded, [source.path for source in sources])
    mixed = mixed.flatten_indices() if mixed._indices is not None else mixed
    records = mixed.add_column("row", list(range(len(mixed))))
    return records.with_transform(MapStyleTransform(encoder, records))


__all__ = ["build_train_dataset", "RECORD_FEATURES"]
