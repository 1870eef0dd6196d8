"""Interleaved generation: the LLM writes a document of text and images on one KV cache.

The token loop is transformers' own pieces: a `LogitsProcessorList` (the caller's processors, the DreamLLM tokens the
runtime writes itself suppressed, an image budget, then temperature / top-p), `StoppingCriteria`, and a
`BaseStreamer` (`put` / `end`) that receives the prompt and every sampled text token, as `generate` feeds one.
Images come from a `draw` callable (the pipeline's decoder); the loop only decides *when* one is made and reads it
back into the document. This module imports nothing from the DreamLLM files, so it travels with the pipeline as is.
"""

from collections.abc import Callable
from dataclasses import dataclass

import PIL.Image
import torch
from diffusers.utils import BaseOutput
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    StoppingCriteriaList,
    SuppressTokensLogitsProcessor,
    TemperatureLogitsWarper,
    TextIteratorStreamer,
    TopPLogitsWarper,
)
from transformers.generation.streamers import BaseStreamer


@dataclass
class DreamLLMInterleavedOutput(BaseOutput):
    """Output of [`DreamLLMPipeline.generate_interleaved`].

    Args:
        segments (`list[str | PIL.Image.Image]`): what the model wrote after the prompt, in order.
        token_ids (`torch.LongTensor` of shape `(document_length,)`): the whole document as the LLM read it: prompt,
            sampled tokens and every creation / comprehension block (a final `</s>` is not read, so not included).
        num_prompt_tokens (`int`): tokens of the prompt.
        num_llm_tokens (`int`): tokens passed through the LLM for this document; equals `document_length` because
            the history is never re-encoded (the null condition of guidance is cached on the pipeline, not counted).
        document_length (`int`): `len(token_ids)`.
        finish_reason (`str`): `"eos"` (the model wrote `</s>`), `"length"` (`max_new_tokens` sampled or the LLM's
            context full) or `"stop"` (a caller's stopping criterion).
    """

    segments: list
    token_ids: torch.LongTensor
    num_prompt_tokens: int
    num_llm_tokens: int
    document_length: int
    finish_reason: str


class DreamLLMStreamer(TextIteratorStreamer):
    """A `TextIteratorStreamer` that also carries the document's images: iterating it yields text pieces as they
    are decoded and each `PIL.Image.Image` at its place. Plain transformers streamers work too (text only).

    Example:

    ```python
    >>> from threading import Thread
    >>> streamer = DreamLLMStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    >>> Thread(target=pipe.generate_interleaved, args=("A story:",), kwargs={"streamer": streamer}).start()
    >>> for piece in streamer:  # str or PIL.Image.Image
    ...     print(piece)
    ```
    """

    def put_image(self, image: PIL.Image.Image):
        """Flush the text decoded so far (an image ends a text run), then queue the image."""
        if self.token_cache:
            text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
            self.token_cache, printable, self.print_len = [], text[self.print_len :], 0
            if printable:
                self.text_queue.put(printable, timeout=self.timeout)
        self.text_queue.put(image, timeout=self.timeout)


class ImageBudgetLogitsProcessor(LogitsProcessor):
    """Forbid `<dream_start>` once the document holds `max_images` creation blocks, or when a creation block and the
    comprehension block of its image would no longer fit in the LLM's `max_positions`."""

    def __init__(self, dream_start_token_id: int, max_images: int, image_tokens: int, max_positions: int):
        self.dream_start_token_id = dream_start_token_id
        self.max_images, self.image_tokens, self.max_positions = max_images, image_tokens, max_positions

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        num_images = (input_ids == self.dream_start_token_id).sum(-1)
        full = (num_images >= self.max_images) | (self.max_positions - input_ids.shape[-1] < self.image_tokens)
        scores = scores.clone()
        scores[full, self.dream_start_token_id] = float("-inf")
        return scores


def never_sampled_token_ids(config) -> list[int]:
    """Tokens the runtime writes itself (block slots and closers, placeholders) or that are not text: the model's
    DreamLLM tokens (its `generate` suppresses them all) except `<dream_start>`, which opens an image, and padding."""
    ids = set(config.special_token_ids) - {config.dream_start_token_id}
    ids.add(config.text_config.pad_token_id)
    return sorted(token for token in ids if token is not None)


def interleaved_logits_processor(
    config,
    max_images: int,
    image_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    logits_processor: LogitsProcessorList | Callable | None = None,
) -> LogitsProcessorList:
    """The caller's processors first, then the DreamLLM masks, then (when sampling) temperature and top-p."""
    processors = LogitsProcessorList()
    if logits_processor is not None:
        processors.extend(logits_processor if isinstance(logits_processor, list) else [logits_processor])
    processors.append(SuppressTokensLogitsProcessor(never_sampled_token_ids(config)))
    processors.append(ImageBudgetLogitsProcessor(
        config.dream_start_token_id, max_images, image_tokens, config.text_config.max_position_embeddings
    ))
    if do_sample:
        if temperature != 1.0:
            processors.append(TemperatureLogitsWarper(temperature))
        if top_p < 1.0:
            processors.append(TopPLogitsWarper(top_p))
    return processors


class CachedDocument:
    """A document being written: each token goes through the LLM exactly once, on top of one growing KV cache."""

    def __init__(self, llm: PreTrainedModel, device: torch.device):
        self.llm, self.device = llm, device
        self.cache = None
        self.token_ids: list[int] = []
        self.num_llm_tokens = 0

    @property
    def input_ids(self) -> torch.LongTensor:
        return torch.tensor([self.token_ids], device=self.device)

    def read(self, ids: list[int], **model_inputs):
        """Feed `ids` (whole blocks only) and return the model output at the last of them."""
        outputs = self.llm(
            input_ids=torch.tensor([ids], device=self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,  # attribute access below, whatever the config's return_dict
            **model_inputs,
        )
        self.cache = outputs.cache
        self.token_ids += ids
        self.num_llm_tokens += len(ids)
        return outputs


def write_document(
    llm: PreTrainedModel,
    prompt_ids: list[int],
    pixel_values: torch.Tensor | None,
    dream_block: list[int],
    image_block: list[int],
    draw: Callable[[torch.Tensor], PIL.Image.Image],
    encode_image: Callable[[PIL.Image.Image], torch.Tensor],
    decode_text: Callable[[list[int]], str],
    logits_processor: LogitsProcessorList,
    max_new_tokens: int,
    do_sample: bool = False,
    generator: torch.Generator | None = None,
    stopping_criteria: StoppingCriteriaList | None = None,
    streamer: BaseStreamer | None = None,
    device: torch.device | None = None,
) -> DreamLLMInterleavedOutput:
    """Sample up to `max_new_tokens` tokens after the prompt. `<dream_start>` makes the loop read `dream_block`,
    `draw` the image from its condition, and read the image back as `image_block` (`encode_image` gives its pixel
    values); `</s>` ends the document. The streamer gets the prompt, each text token, and each image
    (`put_image`, where it has one); it is ended whatever happens."""
    config = llm.config
    eos_token_id, dream_start = config.text_config.eos_token_id, config.dream_start_token_id
    max_positions = config.text_config.max_position_embeddings
    device = device if device is not None else llm.device
    document = CachedDocument(llm, device)
    segments, text_ids, finish_reason = [], [], "length"

    def end_text_run():
        if text_ids:
            segments.append(decode_text(text_ids))
            text_ids.clear()

    try:
        logits = document.read(prompt_ids, pixel_values=pixel_values).logits[:, -1]
        num_prompt_tokens = document.num_llm_tokens
        if streamer is not None:
            streamer.put(torch.tensor([prompt_ids]))
        for _ in range(max_new_tokens):
            if len(document.token_ids) >= max_positions:  # the LLM's context is full
                break
            input_ids = document.input_ids
            scores = logits_processor(input_ids, logits.float())
            if do_sample:
                probs = scores.softmax(-1)
                probs = probs.to(generator.device) if generator is not None else probs
                token = int(torch.multinomial(probs, 1, generator=generator))
            else:
                token = int(scores.argmax(-1))
            if token == eos_token_id:
                finish_reason = "eos"
                break
            if token == dream_start:
                end_text_run()
                condition = document.read(dream_block).condition_embeds
                image = draw(condition)
                logits = document.read(image_block, pixel_values=encode_image(image).to(device)).logits[:, -1]
                segments.append(image)
                if streamer is not None and hasattr(streamer, "put_image"):
                    streamer.put_image(image)
            else:
                text_ids.append(token)
                logits = document.read([token]).logits[:, -1]
                if streamer is not None:
                    streamer.put(torch.tensor([token]))
            if stopping_criteria is not None and stopping_criteria(document.input_ids, scores).any():
                finish_reason = "stop"
                break
        end_text_run()
    finally:
        if streamer is not None:
            streamer.end()
    return DreamLLMInterleavedOutput(
        segments=segments,
        token_ids=torch.tensor(document.token_ids),
        num_prompt_tokens=num_prompt_tokens,
        num_llm_tokens=document.num_llm_tokens,
        document_length=len(document.token_ids),
        finish_reason=finish_reason,
    )
