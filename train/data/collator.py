"""Batch DreamLLM samples: right-pad ids/labels, concatenate CLIP inputs and diffusion targets in document order.

    collator = DreamLLMDataCollator(pad_token_id=processor.pad_token_id)
    batch = collator([dataset[0], dataset[1]])
    # input_ids, attention_mask, labels: (B, L); pixel_values: (num_comprehension_blocks, 3, h, w);
    # target_pixel_values: (num_creation_blocks, 3, H, W); data_counts: {"skipped_unreadable_image": 1, ...}
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


def _concat(samples: list[dict], key: str) -> torch.Tensor | None:
    parts = [sample[key] for sample in samples if sample.get(key) is not None and len(sample[key])]
    return torch.cat(parts) if parts else None


@dataclass
class DreamLLMDataCollator:
    """Right padding (training); `pad_to_multiple_of` rounds the length up (tensor-core friendly shapes).

    Sample order is kept, so `pixel_values` follow the comprehension blocks and `target_pixel_values` the creation
    blocks of the batch in document order, which is the order of the model's `condition_embeds`.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("an empty batch")
        ids = [torch.as_tensor(sample["input_ids"], dtype=torch.long) for sample in samples]
        width = max(len(row) for row in ids)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
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
        return batch


__all__ = ["DreamLLMDataCollator"]
