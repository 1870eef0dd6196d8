"""Interleaved generation (`interleaved_dreamllm.py`): transformers' logits processors sample the same tokens as
the hand-written sampler they replace, streamers receive exactly the returned text, stopping criteria end a
document, and a saved folder carries the module."""

import pytest
import torch
from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

from interleaved_dreamllm import interleaved_logits_processor, never_sampled_token_ids
from pipeline_dreamllm import DreamLLMPipeline

STEPS = 2


@pytest.fixture
def pipe(tiny_folder):
    pipe = DreamLLMPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hand_written_sample(logits, do_sample, temperature, top_p, generator):
    """The sampler the processors replaced: greedy, or softmax at `temperature`, the smallest set of tokens whose
    mass reaches `top_p`, and one multinomial draw."""
    if not do_sample or temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        sorted_probs[sorted_probs.cumsum(0) - sorted_probs > top_p] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


@pytest.mark.parametrize("do_sample, temperature, top_p", [(False, 1.0, 1.0), (True, 1.0, 1.0), (True, 0.7, 1.0),
                                                           (True, 1.0, 0.9), (True, 1.3, 0.5)])
def test_logits_processors_sample_the_tokens_of_the_hand_written_sampler(tiny_model, do_sample, temperature, top_p):
    config = tiny_model.config
    processors = interleaved_logits_processor(config, max_images=4, image_tokens=10, do_sample=do_sample,
                                              temperature=temperature, top_p=top_p)
    masked = never_sampled_token_ids(config)
    input_ids = torch.tensor([[1, 5, 6]])
    ours, theirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    logits_rng = torch.Generator().manual_seed(1)
    for _ in range(200):
        logits = torch.randn(config.text_config.vocab_size, generator=logits_rng) * 3
        reference_logits = logits.clone()
        reference_logits[masked] = float("-inf")
        expected = hand_written_sample(reference_logits, do_sample, temperature, top_p, theirs)
        scores = processors(input_ids, logits[None].clone())
        got = int(torch.multinomial(scores.softmax(-1), 1, generator=ours)) if do_sample else int(scores.argmax(-1))
        assert got == expected


def test_processors_refuse_images_past_the_budget_and_the_context(tiny_model):
    config = tiny_model.config
    dream_start = config.dream_start_token_id
    processors = interleaved_logits_processor(config, max_images=1, image_tokens=10, do_sample=False,
                                              temperature=1.0, top_p=1.0)
    scores = torch.zeros(1, config.text_config.vocab_size)
    assert processors(torch.tensor([[1, 5]]), scores)[0, dream_start] == 0  # one image allowed
    assert processors(torch.tensor([[1, dream_start, 5]]), scores)[0, dream_start] == float("-inf")  # budget spent
    full = torch.ones(1, config.text_config.max_position_embeddings - 5, dtype=torch.long)
    assert processors(full, scores)[0, dream_start] == float("-inf")  # a block of 10 no longer fits
    assert (processors(torch.tensor([[1]]), scores)[0, never_sampled_token_ids(config)] == float("-inf")).all()


def test_a_transformers_streamer_receives_exactly_the_returned_text(pipe):
    streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = pipe.generate_interleaved("Tell a story", max_new_tokens=12, max_images=0, do_sample=True,
                                    generator=torch.Generator().manual_seed(0), streamer=streamer)
    (text,) = out.segments
    assert "".join(streamer) == text and len(text) > 0


def test_stopping_criteria_end_the_document(pipe):
    class AfterTokens(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length, dtype=torch.bool)

    prompt_length = pipe.generate_interleaved("Tell a story", max_new_tokens=0).num_prompt_tokens
    criterion = AfterTokens()
    criterion.length = prompt_length + 3
    out = pipe.generate_interleaved("Tell a story", max_new_tokens=10, max_images=0,
                                    stopping_criteria=StoppingCriteriaList([criterion]))
    assert out.finish_reason == "stop" and out.document_length == prompt_length + 3


def test_a_failing_generation_still_ends_the_stream(pipe):
    streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True)

    def failing(input_ids, scores):
        raise RuntimeError("processor failed")

    with pytest.raises(RuntimeError, match="processor failed"):
        pipe.generate_interleaved("Tell a story", max_new_tokens=3, logits_processor=LogitsProcessorList([failing]),
                                  streamer=streamer)
    assert list(streamer) == [""]  # ended: a reader never waits forever


def test_a_streamer_without_put_and_end_is_named(pipe):
    with pytest.raises(TypeError, match="streamer"):
        pipe.generate_interleaved("Tell a story", max_new_tokens=1, streamer=print)


@pytest.mark.parametrize("kwargs", [{"max_images": -1}, {"prompt": [{"role": "user", "content": "a <dream> cat"}]}],
                         ids=["bad-argument", "refused-prompt"])
def test_a_refused_request_ends_the_stream(pipe, kwargs):
    streamer = TextIteratorStreamer(pipe.processor.tokenizer, skip_prompt=True)
    with pytest.raises(ValueError):
        pipe.generate_interleaved(**{"prompt": "Tell a story", "max_new_tokens": 3, "streamer": streamer, **kwargs})
    assert list(streamer) == [""]  # ended before any token: a reader in another thread is released
