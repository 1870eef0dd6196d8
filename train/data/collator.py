"""Batch DreamLLM samples: right-pad ids/labels, concatenate CLIP inputs and diffusion targets in document order.

    collator = DreamLLMDataCollator(pad_token_id=processor.pad_token_id)
    batch = collator([dataset[0], dataset[1]])
    # input_ids, attention_mask, labels: (B, L); pixel_values: (num_comprehension_blocks, 3, h, w);
    # target_pixel_values: (num_creation_blocks, 3, H, W); data_counts: {"skipped_unreadable_image": 1, ...}

With `length_bucket_ratio` the samples are sorted longest first and, when their lengths differ enough, the batch
carries `length_buckets`: row ranges whose forward passes can each stop at their own width (see `LengthBucket`),
so a short Q&A sample batched with a long picture story does not pay for the story's padding.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from processing_dreamllm import IGNORE_INDEX


def _concat(samples: list[dict], key: str) -> torch.Tensor | None:
    parts = [sample[key] for sample in samples if sample.get(key) is not None and len(sample[key])]
    return torch.cat(parts) if parts else None


@dataclass(frozen=True)
class LengthBucket:
    """Rows `[row_start, row_end)` of a length-sorted batch, padded to `width` tokens; their comprehension images
    are `pixel_values[pixel_start:pixel_end]`. Creation targets need no range: every bucket's condition blocks come
    back in row order, so the concatenated conditions line up with `target_pixel_values` as they are. Plain ints,
    so slicing needs no host sync; not a tuple, so moving the batch to the device leaves it as it is."""

    row_start: int
    row_end: int
    width: int
    pixel_start: int
    pixel_end: int


def _num_blocks(sample: dict, key: str) -> int:
    return len(sample[key]) if sample.get(key) is not None else 0


@dataclass
class DreamLLMDataCollator:
    """Right padding (training); `pad_to_multiple_of` rounds the length up (tensor-core friendly shapes).

    `pixel_values` follow the comprehension blocks and `target_pixel_values` the creation blocks of the batch in
    document order, which is the order of the model's `condition_embeds`. Sample order is kept, unless
    `length_bucket_ratio` is set: then samples are sorted longest first, and a new bucket starts at the first sample
    no longer than `length_bucket_ratio` times its bucket's longest (`length_buckets`, present when there are two
    or more).
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    length_bucket_ratio: float | None = None

    def _padded(self, length: int) -> int:
        if self.pad_to_multiple_of:
            return -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        return length

    def _buckets(self, samples: list[dict]) -> list[LengthBucket]:
        """Consecutive row ranges of the (length-sorted) `samples`, each with its own padded width."""
        buckets, start, pixels = [], 0, 0
        for row in range(1, len(samples) + 1):
            if row < len(samples) and len(samples[row]["input_ids"]) > self.length_bucket_ratio * len(
                samples[start]["input_ids"]
            ):
                continue
            group = samples[start:row]
            num_pixels = sum(_num_blocks(sample, "pixel_values") for sample in group)
            width = self._padded(len(group[0]["input_ids"]))
            buckets.append(LengthBucket(start, row, width, pixels, pixels + num_pixels))
            start, pixels = row, pixels + num_pixels
        return buckets

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("an empty batch")
        if self.length_bucket_ratio is not None:
            samples = sorted(samples, key=lambda sample: len(sample["input_ids"]), reverse=True)
        ids = [torch.as_tensor(sample["input_ids"], dtype=torch.long) for sample in samples]
        width = self._padded(max(len(row) for row in ids))
        input_ids = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, (sample, sample_ids) in enumerate(zip(samples, ids, strict=True)):
            input_ids[row, : len(sample_ids)] = sample_ids
            labels[row, : len(sample_ids)] = torch.as_tensor(sample["labels"], dtype=torch.long)
            attention_mask[row, : len(sample_ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        for key in ("pixel_values", "target_pixel_values"):
            stacked = _concat(samples, key)
            if stacked is not None:
                batch[key] = stacked
        counts = Counter()
        for sample in samples:
            counts.update(sample.get("data_counts") or {})
        batch["data_counts"] = dict(counts)
        if self.length_bucket_ratio is not None:
            buckets = self._buckets(samples)
            if len(buckets) > 1:
                batch["length_buckets"] = buckets
        return batch


__all__ = ["DreamLLMDataCollator", "LengthBucket"]
