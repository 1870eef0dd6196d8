"""Encode source records into training samples with the DreamLLM processor, skipping and counting bad ones.

    encoder = SampleEncoder(processor, SampleBuilder(), max_length=2048)
    sample = encoder.encode(row)   # {"input_ids", "labels", "pixel_values", "target_pixel_values", "data_counts"}

Counts travel inside the samples (`data_counts`: skipped records per reason, dropped/filtered images), because the
records are encoded in data-loader worker processes: the collator sums them per batch and the trainer logs them.
"""

from __future__ import annotations

import json
from collections import Counter

import torch
from datasets import IterableDataset

from train.errors import InputError

from processing_dreamllm import IGNORE_INDEX

from .labels import encode_conversation, encode_documents
from .samples import NOTE_KEYS, SKIP_REASONS, BadSample, SampleBuilder, SampleSpec

COUNT_KEYS = tuple(f"skipped_{reason}" for reason in SKIP_REASONS) + NOTE_KEYS
SAMPLE_KEYS = ("input_ids", "labels", "pixel_values", "target_pixel_values", "data_counts")


class SampleEncoder:
    """`encode(row)`: one source record -> one training sample, or `BadSample`.

    Args:
        processor: a `DreamLLMProcessor`.
        builder: the `SampleBuilder` holding the format options.
        max_length: longest sample in tokens (default: the tokenizer's `model_max_length`). Interleaved documents
            over it lose trailing units at block boundaries; other samples over it are skipped (`too_long`).
    """

    def __init__(self, processor, builder: SampleBuilder, max_length: int | None = None):
        self.processor = processor
        self.builder = builder
        self.max_length = max_length or processor.tokenizer.model_max_length
        self.dream_start_token_id = processor.dream_start_token_id

    def _call_processor(self, spec: SampleSpec, truncation: bool):
        images = spec.images or None
        if spec.messages is not None:
            return encode_conversation(
                self.processor, spec.messages, images, truncation=truncation, max_length=self.max_length
            )
        return encode_documents(self.processor, spec.text, images, truncation=truncation, max_length=self.max_length)

    def encode_spec(self, spec: SampleSpec) -> dict:
        try:
            try:
                batch = self._call_processor(spec, truncation=False)
            except ValueError as error:
                if "max_length" not in str(error):
                    raise
                if not spec.truncatable:
                    raise BadSample("too_long", str(error)) from error
                batch = self._call_processor(spec, truncation=True)
        except BadSample:
            raise
        except ValueError as error:  # placeholders and images that do not match, and the like
            raise BadSample("invalid_sample", str(error)) from error
        input_ids, labels = batch["input_ids"][0], batch["labels"][0]
        is_dream_start = input_ids == self.dream_start_token_id
        num_blocks = int(is_dream_start.sum())
        targets = batch.get("target_pixel_values")
        extra_targets = spec.extra_targets
        if spec.truncatable:  # truncation may have dropped trailing blocks, whose targets go with them
            extra_targets = extra_targets[: max(0, num_blocks - (0 if targets is None else len(targets)))]
        if extra_targets:  # <dream>s without read-back come after every other creation block
            extra = self.processor.diffusion_image_processor(extra_targets, return_tensors="pt")["pixel_values"]
            targets = extra if targets is None else torch.cat([targets, extra])
        num_targets = 0 if targets is None else len(targets)
        if num_blocks != num_targets:
            raise BadSample("invalid_sample", f"{num_blocks} creation blocks for {num_targets} targets")
        if not spec.learn_labels:
            labels = torch.full_like(labels, IGNORE_INDEX)
        elif not spec.learn_dream_start:
            labels = labels.masked_fill(is_dream_start, IGNORE_INDEX)
        if not bool((labels != IGNORE_INDEX).any()) and not num_targets:
            raise BadSample("too_long", "nothing left to learn after truncation")
        return {
            "input_ids": input_ids,
            "labels": labels,
            "pixel_values": batch.get("pixel_values"),
            "target_pixel_values": targets,
            "data_counts": dict(spec.notes),
        }

    def encode(self, row: dict) -> dict:
        return self.encode_spec(self.builder.build(row))


class MapStyleTransform:
    """`datasets.Dataset.with_transform` hook: encodes the rows asked for; a bad row is replaced by the next good
    one (deterministically, so resumed runs see the same data) and counted once, when its own index is read."""

    def __init__(self, encoder: SampleEncoder, records, max_consecutive_bad: int = 64):
        self.encoder = encoder
        self.records = records  # the un-transformed dataset, to read the replacement rows
        self.max_consecutive_bad = max_consecutive_bad

    def _encode_row(self, row: dict) -> dict:
        skipped = Counter()
        num_records = len(self.records)
        for attempt in range(min(self.max_consecutive_bad, num_records)):
            if attempt:
                row = self.records[(row["row"] + 1) % num_records]
            try:
                sample = self.encoder.encode(row)
            except BadSample as bad:
                if not attempt:  # a bad record is counted when its own index comes up, once per epoch
                    skipped[f"skipped_{bad.reason}"] += 1
                continue
            sample["data_counts"] = dict(Counter(sample["data_counts"]) + skipped)
            return sample
        source = json.loads(row["record"]).get("key", "?")
        raise InputError(
            f"{attempt + 1} consecutive records up to {source} could not be used ({dict(skipped)} ...): check the data"
        )

    def __call__(self, batch: dict) -> dict:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        samples = [self._encode_row(row) for row in rows]
        return {key: [sample[key] for sample in samples] for key in SAMPLE_KEYS}


class StreamingTransform:
    """Batched `IterableDataset.map` hook: encodes each row; a bad row becomes a count-only row (`input_ids` None,
    `data_counts` naming its reason) that `CountedStream` folds into a neighbouring sample."""

    def __init__(self, encoder: SampleEncoder):
        self.encoder = encoder

    def __call__(self, batch: dict) -> dict:
        out = {key: [] for key in SAMPLE_KEYS}
        for values in zip(*batch.values(), strict=True):
            try:
                sample = self.encoder.encode(dict(zip(batch, values, strict=True)))
            except BadSample as bad:
                sample = dict.fromkeys(SAMPLE_KEYS, None) | {"data_counts": {f"skipped_{bad.reason}": 1}}
            for key in SAMPLE_KEYS:
                out[key].append(sample[key])
        return out


def fold_counts(samples, sources: list[str]):
    """Yield the real samples of `samples`, each carrying the counts of the count-only rows before it; those after
    the last one go to the last one (held back one step for that). A pass without any real sample is an error."""
    held, pending = None, Counter()
    for sample in samples:
        if sample["input_ids"] is None:
            pending.update(sample["data_counts"])
            continue
        sample["data_counts"] = dict(Counter(sample["data_counts"]) + pending)
        pending = Counter()
        if held is not None:
            yield held
        held = sample
    if held is None:
        if pending:
            raise InputError(f"--data {', '.join(sources)}: no record of this pass could be used ({dict(pending)})")
        return
    held["data_counts"] = dict(Counter(held["data_counts"]) + pending)
    yield held


class CountedStream(IterableDataset):
    """The encoded stream as a `datasets.IterableDataset` whose iteration (in each data-loader worker, and on each
    process after `shard`) folds the count-only rows of skipped records into real samples (`fold_counts`), so every
    skipped record is counted, the last ones of a pass included."""

    sources: list[str]

    @classmethod
    def wrap(cls, stream: IterableDataset, sources: list[str]) -> "CountedStream":
        counted = cls(
            ex_iterable=stream._ex_iterable,
            info=stream._info,
            split=stream._split,
            formatting=stream._formatting,
            distributed=stream._distributed,
            token_per_repo_id=stream._token_per_repo_id,
        )
        counted.sources = sources
        return counted

    def __iter__(self):
        yield from fold_counts(super().__iter__(), self.sources)

    def shard(self, *args, **kwargs) -> "CountedStream":  # accelerate shards the stream over processes
        return CountedStream.wrap(super().shard(*args, **kwargs), self.sources)


__all__ = ["COUNT_KEYS", "SAMPLE_KEYS", "CountedStream", "MapStyleTransform", "SampleEncoder", "StreamingTransform"]
