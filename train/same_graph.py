"""One forward graph on every rank, whatever each rank's batch holds (FSDP and DeepSpeed, see `DreamLLMTrainer`).

FSDP and DeepSpeed ZeRO-3 gather parameters in module hooks and ZeRO-3 checks that every rank calls the same modules
in the same order; ZeRO-2/3 and FSDP reduce gradients of every trainable parameter on every rank. A rank whose batch
has no creation block would skip the dream queries and the condition projector, and one without an input image the
visual projector. Both are fixed without running CLIP or the decoder on made-up inputs:

- the null condition (`[<s>, <dream_start>, queries, <dream_end>]`, the unconditional branch of the diffusion loss)
  rides as one more row of the batch, so every forward holds a creation block: the queries and the condition projector
  run in the same place on every rank, and the separate null-condition forward is saved;
- under DeepSpeed the images are projected before the model call (`mm_encoder_outputs`, as in LLaVA), and a rank
  without images projects zero rows, so the visual projector is called, and gets a (zero) gradient, in the same place
  on every rank.

    inputs, labels = append_null_row(inputs, labels, model.model.null_condition_ids(device), pad_token_id)
    inputs, tie = project_images_first(model, inputs)   # loss = loss + 0.0 * tie
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from processing_dreamllm import IGNORE_INDEX


def append_null_row(
    inputs: dict, labels: torch.Tensor | None, null_ids: torch.LongTensor, pad_token_id: int
) -> tuple[dict, torch.Tensor | None]:
    """`inputs` (right-padded `input_ids`, `attention_mask`) and `labels` with the null condition's ids as a last row
    that learns nothing; its creation block is the last of `condition_embeds`."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    width = max(ids.shape[1], null_ids.shape[1])
    grow = lambda rows, value: F.pad(rows, (0, width - rows.shape[1]), value=value)  # noqa: E731
    null_ids = null_ids.to(ids.device)
    inputs = {
        **inputs,
        "input_ids": torch.cat([grow(ids, pad_token_id), grow(null_ids, pad_token_id)]),
        "attention_mask": torch.cat([grow(mask, 0), grow(torch.ones_like(null_ids, dtype=mask.dtype), 0)]),
    }
    if labels is not None:
        labels = torch.cat([grow(labels, IGNORE_INDEX), torch.full_like(grow(null_ids, 0), IGNORE_INDEX)])
    return inputs, labels


def project_images_first(dreamllm, inputs: dict) -> tuple[dict, torch.Tensor | None]:
    """Move `pixel_values` into `mm_encoder_outputs` (CLIP, then the visual projector, called here); a batch without
    images projects zero rows instead and returns their (empty) sum as the tie to add to the loss with weight 0."""
    inner = dreamllm.model
    pixel_values = inputs.get("pixel_values")
    if pixel_values is not None:
        inputs = {key: value for key, value in inputs.items() if key != "pixel_values"}
        inputs["mm_encoder_outputs"] = {"image": inner.get_image_features(pixel_values=pixel_values, return_dict=True)}
        return inputs, None
    projector = inner.vision_projector
    nothing = torch.zeros(0, projector.in_features, device=inputs["input_ids"].device, dtype=projector.weight.dtype)
    return inputs, projector(nothing).float().sum()


__all__ = ["append_null_row", "project_images_first"]
