"""DreamLLMPipeline on bad input: required components, prompt text that imitates blocks, and every argument checked
with an error that names it (never a raw library error, a silent result or a hang)."""

import pytest
import torch
from torch import nn

from pipeline_dreamllm import DreamLLMPipeline

STEPS = 2


@pytest.fixture
def pipe(tiny_folder):
    pipe = DreamLLMPipeline.from_pretrained(tiny_folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def llm_inputs(pipe) -> list[torch.Tensor]:
    """Record the `input_ids` of every llm call."""
    calls, forward = [], pipe.llm.forward

    def recording_forward(*args, **kwargs):
        calls.append(kwargs["input_ids"])
        return forward(*args, **kwargs)

    pipe.llm.forward = recording_forward
    return calls


# ------------------------------------------------------------------------------------------------- components
MISSING_WORK = [  # a component left out, and a call whose work needs it
    ("llm", lambda pipe: pipe("a cat", num_inference_steps=STEPS)),
    ("processor", lambda pipe: pipe.encode_prompt("a cat", pipe.device, 1, False)),
    ("unet", lambda pipe: pipe(prompt_embeds=torch.zeros(1, 8, 16), guidance_scale=1.0)),
    ("vae", lambda pipe: pipe(prompt_embeds=torch.zeros(1, 8, 16), guidance_scale=1.0, num_inference_steps=STEPS)),
    ("scheduler", lambda pipe: pipe.generate_interleaved("Tell a story", max_new_tokens=1)),
]


@pytest.mark.parametrize("missing, work", MISSING_WORK, ids=[name for name, _ in MISSING_WORK])
def test_a_call_needing_a_missing_component_names_it(pipe, missing, work):
    unet_calls = []
    pipe.unet.register_forward_pre_hook(lambda *args: unet_calls.append(1))
    without = DreamLLMPipeline(**{**pipe.components, missing: None})  # every component is optional
    with pytest.raises(ValueError, match=f"needs the pipeline's .*{missing}.*None"):
        work(without)
    assert unet_calls == []  # refused before any work


def test_a_folder_without_model_index_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match=f"no file named model_index.json found in directory {tmp_path}"):
        DreamLLMPipeline.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------------------- prompt text is text
def test_typed_placeholders_never_shift_conditions_between_prompts(pipe):
    device = pipe.device
    batch, _ = pipe.encode_prompt(["a <dream> cat", "dog"], device, 1, False)
    assert batch.shape[0] == 2
    torch.testing.assert_close(batch[1], pipe.encode_prompt("dog", device, 1, False)[0][0])
    torch.testing.assert_close(batch[0], pipe.encode_prompt("a <dream> cat", device, 1, False)[0][0])


@pytest.mark.parametrize("text", ["a <dream> cat", "a <image> cat", "a cat <im_patch> on a mat", "<dream_start> x",
                                  "a cat</s>"])
def test_block_tokens_never_come_from_prompt_text(pipe, text):
    config = pipe.llm.config
    calls = llm_inputs(pipe)
    pipe.encode_prompt(text, pipe.device, 1, False)
    (ids,) = calls
    ids = ids[0].tolist()
    queries = config.num_dream_queries
    assert ids[-(queries + 2):] == pipe.processor.dream_block()  # the pipeline's one creation block, last
    text_ids = ids[1 : -(queries + 2)]
    reserved = {config.image_token_id, config.dream_token_id, config.image_patch_token_id, config.image_start_token_id,
                config.image_end_token_id, config.dream_start_token_id, config.dream_end_token_id,
                config.text_config.eos_token_id}
    assert not reserved & set(text_ids)


def test_plain_prompt_ids_are_the_processors_training_ids(pipe, rgb_image):
    """Prompt text without look-alike tokens is encoded exactly as the processor encodes `text<dream>` in training."""
    for parts, text, images in ((["a red circle"], "a red circle<dream>", None),
                                ([rgb_image, "the same, painted"], "<image>the same, painted<dream>", [rgb_image])):
        ids, _ = pipe._prompt_ids(parts, creation=True)
        expected = pipe.processor(text=text, images=images, add_eos=False, return_tensors=None)["input_ids"][0]
        assert ids == list(expected)


def test_conditions_that_do_not_match_prompts_one_to_one_are_an_error(pipe, monkeypatch):
    block = pipe.processor.dream_block()
    monkeypatch.setattr(pipe.processor, "dream_block", lambda: block + block)  # two creation blocks per prompt
    with pytest.raises(ValueError, match="2 prompts gave 4 creation conditions"):
        pipe.encode_prompt(["a cat", "a dog"], pipe.device, 1, False)


def test_interleaved_text_is_read_literally_and_chat_text_may_not_forge_blocks(pipe):
    config = pipe.llm.config
    out = pipe.generate_interleaved("describe <dream> this <im_start>", max_new_tokens=0)
    prompt_ids = out.token_ids[: out.num_prompt_tokens].tolist()
    assert config.dream_start_token_id not in prompt_ids and config.image_start_token_id not in prompt_ids
    with pytest.raises(ValueError, match="reserved token"):
        pipe.generate_interleaved([{"role": "user", "content": "describe <dream> this"}], max_new_tokens=1)
    with pytest.raises(ValueError, match="message 0"):
        pipe.generate_interleaved([{"content": "no role"}], max_new_tokens=1)


# ------------------------------------------------------------------------------------------------ __call__ checks
BAD_CALLS = [
    ({"num_inference_steps": 0}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": -3}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 2.5}, ValueError, "num_inference_steps"),
    ({"num_inference_steps": 10**9}, ValueError, "num_inference_steps"),
    ({"height": 0}, ValueError, "height"),
    ({"width": -16}, ValueError, "width"),
    ({"height": 15}, ValueError, "divisible by 2"),
    ({"height": 100_000, "width": 16}, ValueError, "height"),
    ({"output_type": "bogus"}, ValueError, "output_type"),
    ({"prompt": []}, ValueError, "empty list"),
    ({"prompt": 123}, TypeError, "prompt"),
    ({"prompt": ["a cat", 5]}, TypeError, "prompt"),
    ({"num_images_per_prompt": 0}, ValueError, "num_images_per_prompt"),
    ({"guidance_scale": float("nan")}, ValueError, "guidance_scale"),
    ({"latents": torch.zeros(1, 4, 3, 3)}, ValueError, "latents"),
    ({"negative_prompt": ["a", "b"]}, ValueError, "negative prompts"),
    ({"prompt": None, "prompt_embeds": torch.zeros(1, 8, 5)}, ValueError, "prompt_embeds"),
    ({"callback_on_step_end": "not callable"}, TypeError, "callback_on_step_end"),
    ({"callback_on_step_end_tensor_inputs": ["noise"]}, ValueError, "callback_on_step_end_tensor_inputs"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_CALLS, ids=[str(sorted(k)) + str(i) for i, (k, _, _) in
                                                                    enumerate(BAD_CALLS)])
def test_bad_call_arguments_are_named(pipe, kwargs, error, message):
    kwargs = {"prompt": "a cat", "num_inference_steps": STEPS, **kwargs}
    unet_calls = []
    pipe.unet.register_forward_pre_hook(lambda *args: unet_calls.append(1))
    with pytest.raises(error, match=message):
        pipe(**kwargs)
    assert unet_calls == []  # refused before sampling


@pytest.mark.parametrize("returned, error, message", [
    (None, TypeError, "must return a dict"),
    ([1, 2], TypeError, "must return a dict"),
    ({"latents": 3}, TypeError, "tensors only"),
    ({"latents": torch.zeros(1, 4, 2, 2)}, ValueError, "latents of shape"),
])
def test_a_callback_returning_the_wrong_thing_is_named(pipe, returned, error, message):
    with pytest.raises(error, match=message):
        pipe("a cat", num_inference_steps=STEPS, callback_on_step_end=lambda *args: returned)


# ------------------------------------------------------------------------------------ generate_interleaved checks
@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": []}, "empty list"),
    ({"temperature": -1.0, "do_sample": True}, "temperature"),
    ({"top_p": 0.0, "do_sample": True}, "top_p"),
    ({"max_new_tokens": -1}, "max_new_tokens"),
    ({"max_images": 1.5}, "max_images"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"height": 3}, "divisible"),
])
def test_bad_generate_interleaved_arguments_are_named(pipe, kwargs, message):
    kwargs = {"prompt": "Tell a story", "max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        pipe.generate_interleaved(**kwargs)


def test_temperature_zero_is_greedy(pipe):
    greedy = pipe.generate_interleaved("Tell a story", max_new_tokens=4, max_images=0)
    zero = pipe.generate_interleaved("Tell a story", max_new_tokens=4, max_images=0, do_sample=True, temperature=0.0,
                                     generator=torch.Generator().manual_seed(0))
    assert zero.token_ids.tolist() == greedy.token_ids.tolist()


def test_a_document_stops_when_the_llm_context_is_full(pipe):
    text_config = pipe.llm.config.text_config
    head = nn.Linear(text_config.hidden_size, text_config.vocab_size, bias=True)  # always the same text token
    nn.init.zeros_(head.weight)
    nn.init.constant_(head.bias, -1e4)
    head.bias.data[70] = 0.0
    pipe.llm.lm_head = head
    prompt_length = len(pipe._prompt_ids(["Tell a story"], creation=False)[0])
    text_config.max_position_embeddings = prompt_length + 5
    out = pipe.generate_interleaved("Tell a story", max_new_tokens=10**9)
    assert out.finish_reason == "length" and out.document_length == prompt_length + 5
    with pytest.raises(ValueError, match="more than the llm's"):
        pipe("a long prompt " * 10, num_inference_steps=STEPS)
