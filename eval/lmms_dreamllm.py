"""DreamLLM as an lmms-eval model ("simple" interface): `generate_until` answers with the images of each document,
`loglikelihood` scores continuations for multiple-choice tasks.

Registered under the name `dreamllm` through the `lmms_eval.models` entry point of this project's pyproject.toml, so
once the project is installed (`pip install -e .`):

    lmms-eval --model dreamllm --model_args pretrained=checkpoints/toy,dtype=float32 --tasks shapes_vqa \
        --include_path eval/lmms_tasks
    accelerate launch -m lmms_eval --model dreamllm --model_args pretrained=DIR,dtype=bfloat16 --tasks mmbench_en_dev

`python -m eval.understanding` registers the same manifest without installing the project.
"""

from __future__ import annotations

import torch
from lmms_eval.api.instance import GenerationResult, Instance, unwrap_generation_output
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from PIL import Image
from tqdm import tqdm

IMAGE_PLACEHOLDER = "<image>"  # lmms-eval's (and DreamLLM's) marker of where an image goes in a prompt

MANIFEST = ModelManifest(model_id="dreamllm", simple_class_path="eval.lmms_dreamllm.DreamLLM")

# lmms-eval 0.7.x's evaluator passes every model output through `unwrap_generation_output`, which turns the
# (log-likelihood, is-greedy) pairs of `loglikelihood` into strings, so every multiple-choice task then fails in
# `process_results` ("too many values to unpack"). A GenerationResult's `text` is passed through untouched, so the
# pairs travel in one while the evaluator has that bug (checked here, so a fixed lmms-eval gets plain pairs).
_PAIRS_NEED_WRAPPING = unwrap_generation_output((0.0, True))[0] != (0.0, True)


class DreamLLM(lmms):
    """
    Args (`--model_args key=value,...`):
        pretrained: a DreamLLM folder (or Hub repo id) as `save_pretrained` writes it.
        device: where to run (default: cuda when available, else cpu).
        dtype: `float32`, `bfloat16` or `float16`.
        max_new_tokens: default answer length when a task does not set it.
        batch_size: only 1 (each document is generated on its own, like the reference adapters).

    Example:

    ```python
    >>> from lmms_eval.evaluator import simple_evaluate
    >>> simple_evaluate(model=DreamLLM(pretrained="checkpoints/toy"), tasks=["shapes_vqa"], ...)
    ```
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str,
        device: str | None = None,
        dtype: str = "float32",
        max_new_tokens: int = 128,
        batch_size: int | str = 1,
        **kwargs,
    ) -> None:
        super().__init__()
        unknown = {key: value for key, value in kwargs.items() if value is not None and key != "max_batch_size"}
        if unknown:
            raise ValueError(f"dreamllm: unknown --model_args {sorted(unknown)}")
        if int(batch_size) != 1:
            raise ValueError(f"dreamllm: batch_size={batch_size} is not supported, use 1")
        from modeling_dreamllm import DreamLLMForConditionalGeneration
        from processing_dreamllm import DreamLLMProcessor

        if not hasattr(torch, str(dtype)) or not isinstance(getattr(torch, str(dtype)), torch.dtype):
            raise ValueError(f"dreamllm: dtype={dtype!r} is not a torch dtype name (float32, bfloat16, float16)")
        self._device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        model = DreamLLMForConditionalGeneration.from_pretrained(pretrained, dtype=getattr(torch, dtype))
        self.model = model.to(self._device).eval()
        self.processor = DreamLLMProcessor.from_pretrained(pretrained, config=self.model.config)
        self.max_new_tokens = int(max_new_tokens)

    @property
    def device(self) -> torch.device:
        return self._device

    # --------------------------------------------------------------------------------------------------- inputs
    def _visuals(self, doc_to_visual, doc_id: int, task: str, split: str) -> list[Image.Image]:
        visuals = doc_to_visual(self.task_dict[task][split][doc_id]) if doc_to_visual is not None else []
        images = [visual for visual in (visuals or []) if visual is not None]
        for visual in images:
            if not isinstance(visual, Image.Image):
                raise ValueError(f"dreamllm reads images only; task {task} doc {doc_id} gave {type(visual).__name__}")
        return [image.convert("RGB") for image in images]

    def _prompt(self, context: str, images: list[Image.Image]) -> str:
        """The user turn in DreamLLM's chat template: the images where the context puts `<image>`, else first."""
        pieces = context.split(IMAGE_PLACEHOLDER)
        if len(pieces) - 1 not in (0, len(images)):
            raise ValueError(f"the context has {len(pieces) - 1} {IMAGE_PLACEHOLDER} but {len(images)} images came")
        if len(pieces) == 1:
            content = [{"type": "image"} for _ in images] + [{"type": "text", "text": context}]
        else:
            content = [{"type": "text", "text": pieces[0]}]
            for piece in pieces[1:]:
                content += [{"type": "image"}, {"type": "text", "text": piece}]
        messages = [{"role": "user", "content": [item for item in content if item.get("text", True)]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _encode(self, text: str, images: list[Image.Image]):
        return self.processor(text=text, images=images or None, add_eos=False, return_tensors="pt").to(self.device)

    # ------------------------------------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        answers = []
        for request in tqdm(requests, disable=self.rank != 0, desc="dreamllm generate"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            temperature = float(gen_kwargs.pop("temperature", 0) or 0)
            top_p = gen_kwargs.pop("top_p", None)
            images = self._visuals(doc_to_visual, doc_id, task, split)
            inputs = self._encode(self._prompt(context, images), images)
            output = self.model.generate(
                **inputs,
                max_new_tokens=int(gen_kwargs.pop("max_new_tokens", self.max_new_tokens)),
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None,
                num_beams=int(gen_kwargs.pop("num_beams", 1)),
            )
            answer = self.processor.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
            for stop in until:
                if stop:
                    answer = answer.split(stop)[0]
            answers.append(answer)
            self.cache_hook.add_partial("generate_until", (context, request.args[1]), answer)
        return answers

    def generate_until_multi_round(self, requests) -> list[str]:
        raise NotImplementedError("dreamllm: multi-round generation is not implemented; use generate_until tasks")

    # ---------------------------------------------------------------------------------------------- likelihood
    @torch.no_grad()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool] | GenerationResult]:
        """Per request: the negative log-likelihood (summed over tokens) of the continuation after the prompt, images
        included, and whether greedy decoding would have written exactly those tokens. lmms-eval's multiple choice
        picks the *lowest* first value (its adapters return a loss, unlike lm-eval's log-probability), so this is a
        negative log-likelihood."""
        results = []
        for request in tqdm(requests, disable=self.rank != 0, desc="dreamllm loglikelihood"):
            context, continuation, doc_to_visual, doc_id, task, split = request.args
            doc = self.task_dict[task][split][doc_id]
            continuation = continuation if isinstance(continuation, str) else str(continuation(doc))
            images = self._visuals(doc_to_visual, doc_id, task, split)
            prompt = self._prompt(context, images)
            context_ids = self._encode(prompt, images)["input_ids"][0]
            inputs = self._encode(prompt + continuation, images)
            full_ids = inputs["input_ids"][0]
            if torch.equal(full_ids[: len(context_ids)], context_ids):  # the usual case: the prompt's tokens stay
                target = full_ids[len(context_ids) :]
            else:  # the continuation merged with the prompt's last token: score its own tokens after the prompt
                target = torch.tensor(self.processor.tokenizer(continuation, add_special_tokens=False)["input_ids"])
                inputs = self._encode(prompt, images)
                inputs["input_ids"] = torch.cat([context_ids, target.to(self.device)])[None]
                inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            if len(target) == 0:
                raise ValueError(f"task {task} doc {doc_id}: the continuation {continuation!r} has no tokens")
            logits = self.model(**inputs).logits[0, -len(target) - 1 : -1].float()
            target = target.to(logits.device)
            logprobs = torch.log_softmax(logits, dim=-1).gather(1, target[:, None])[:, 0]
            pair = (-float(logprobs.sum()), bool((logits.argmax(-1) == target).all()))
            self.cache_hook.add_partial("loglikelihood", (context, continuation), pair)
            results.append(GenerationResult(text=pair) if _PAIRS_NEED_WRAPPING else pair)
        return results
