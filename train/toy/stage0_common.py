"""Shared pieces of stage 0: the world's two word-level tokenizers, image batches as tensors, seeding and step
counts, learning-rate schedules and the training-loop progress bar."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast, get_cosine_with_min_lr_schedule_with_warmup
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from .world import WORLD_WORDS, Scene, render

CLIP_MAX_LENGTH = 32  # longest caption: 13 words + start/end; room for short sentences too


# ------------------------------------------------------------------------------------------------------ tokenizers
def _word_level(vocab: Sequence[str], unk: str) -> Tokenizer:
    """A WordLevel tokenizer over `vocab` (ids in order) that lowercases and splits on whitespace and punctuation,
    and decodes by joining words with spaces (no space before . , ?)."""
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocab)}, unk_token=unk))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    # WordPiece's decoder puts a space before every token but continuation pieces (no token starts with the prefix)
    # and its cleanup removes the one before punctuation.
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return tokenizer


def build_lm_tokenizer() -> PreTrainedTokenizerFast:
    """The LM's tokenizer, laid out like LLaMA's: `<unk>`=0, `<s>`=1, `</s>`=2, then WORLD_WORDS; `<s>` prefixed."""
    tokenizer = _word_level(["<unk>", "<s>", "</s>", *WORLD_WORDS], unk="<unk>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", model_max_length=2048
    )


def build_clip_tokenizer() -> PreTrainedTokenizerFast:
    """CLIP's text tokenizer, laid out like OpenAI's: start/end of text are the two last ids and the end token pads.

    CLIPTextModel pools at the first `eos_token_id`; ending the vocabulary with it also keeps the legacy argmax
    pooling right."""
    vocab = ["<unk>", *WORLD_WORDS, "<|startoftext|>", "<|endoftext|>"]
    tokenizer = _word_level(vocab, unk="<unk>")
    bos, eos = len(vocab) - 2, len(vocab) - 1
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>",
        pair="<|startoftext|> $A <|endoftext|> $B <|endoftext|>",
        special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|startoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        model_max_length=CLIP_MAX_LENGTH,
    )


def clip_input_ids(tokenizer: PreTrainedTokenizerFast, captions: Sequence[str]) -> torch.Tensor:
    """Ids exactly as StableDiffusionPipeline.encode_prompt makes them (padded to model_max_length, no mask)."""
    length = tokenizer.model_max_length
    batch = tokenizer(list(captions), padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return batch.input_ids


# ---------------------------------------------------------------------------------------------------------- images
def images_to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1]."""
    array = np.stack([np.asarray(image.convert("RGB"), dtype=np.float32) for image in images]) / 255.0
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def render_batch(scenes: Sequence[Scene]) -> torch.Tensor:
    """Rendered scenes, (B, 3, 64, 64) in [0, 1]."""
    return images_to_tensor([render(scene) for scene in scenes])


def clip_normalize(pixels: torch.Tensor) -> torch.Tensor:
    """[0, 1] pixels as CLIPImageProcessor (size 64, crop 64) makes them: only the mean/std normalisation."""
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    return (pixels - mean) / std


def tensor_to_images(pixels: torch.Tensor) -> list[Image.Image]:
    """[-1, 1] (B, 3, H, W) back to PIL images."""
    array = ((pixels.detach().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]


# -------------------------------------------------------------------------------------------------------- training
def scaled(steps: int, scale: float, minimum: int = 2) -> int:
    """A step (or sample) count under --steps-scale."""
    return max(minimum, int(round(steps * scale)))


def scaled_batch(batch: int, scale: float) -> int:
    """A batch size under --steps-scale: unchanged from 0.1 up; below, shrunk with it (a tenth at 0.01) so that
    smoke tests stay fast."""
    return max(4, int(round(batch * min(1.0, scale * 10))))


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup (at most a tenth of the run), then cosine decay to 10% of the peak rate."""
    warmup = max(1, min(warmup, total // 10))
    return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, total, min_lr_rate=0.1)


def progress(total: int, desc: str) -> Iterator[tuple[int, tqdm]]:
    """Steps 0..total-1 with a tqdm bar (set its postfix to show the loss)."""
    bar = tqdm(range(total), desc=desc, mininterval=5.0, dynamic_ncols=True)
    for step in bar:
        yield step, bar


def smooth(values: Sequence[float], every: int) -> list[float]:
    """Means of consecutive chunks, for a compact loss curve in the log."""
    return [float(np.mean(values[i : i + every])) for i in range(0, len(values), every)] if values else []


@contextmanager
def timed(log: dict, key: str):
    """Store the block's wall time in seconds under log[key]."""
    start = time.perf_counter()
    yield
    log[key] = round(time.perf_counter() - start, 1)
