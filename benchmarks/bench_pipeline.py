"""DreamLLMPipeline speed on CPU, on a small random DreamLLM (64 px images):

(a) text-to-image against diffusers' own `StableDiffusionPipeline` built from the same UNet, VAE and scheduler config
    and fed the same conditions (`prompt_embeds` / `negative_prompt_embeds`), same steps and guidance;
(b) interleaved generation of documents with 1, 2 and 4 images: LLM tokens processed per document token (1.0 means
    the history is never re-encoded) and seconds per image (flat means no cost grows with the document).

    python benchmarks/bench_pipeline.py   # about a minute on one CPU thread
"""

import sys
import tempfile
import time
from pathlib import Path

import diffusers
import numpy as np
import torch
import transformers
from diffusers import StableDiffusionPipeline
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline_dreamllm import DreamLLMPipeline  # noqa: E402
from train.assemble import assemble  # noqa: E402
from train.tiny_random import build_tiny_tokenizer, save_tiny_decoder  # noqa: E402

PROMPT = "A photo of a cat sitting on a red sofa."
STEPS = 25
GUIDANCE = 7.5
REPEATS = 6
CONDITION_SIZE = 64
TEXT_TOKENS_PER_IMAGE = 8
INTERLEAVED_STEPS = 25
INTERLEAVED_REPEATS = 2


def build_components(root: Path) -> dict[str, Path]:
    """Random LLaMA (4 x 256), CLIP (64 tokens per image), and a 64 px SD decoder, in their native formats."""
    torch.manual_seed(0)
    tokenizer = build_tiny_tokenizer()
    llm_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(llm_config).save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")

    vision_config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8
    )
    CLIPVisionModel(vision_config).save_pretrained(root / "vision")
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    image_processor.save_pretrained(root / "vision")

    diffusion = root / "diffusion"
    save_tiny_decoder(diffusion, CONDITION_SIZE, channels=(32, 64), latent_size=32, attention_head_dim=8, norm_num_groups=8)
    return {"llm": root / "llm", "vision": root / "vision", "diffusion": diffusion}


def timed(run) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) of one `run()`."""
    wall, cpu = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu


def accumulate_cpu_time(*module_methods) -> list[float]:
    """Wrap (module, method name) pairs to add their CPU time into the returned one-element list."""
    total = [0.0]
    for module, name in zip(module_methods[::2], module_methods[1::2]):
        method = getattr(module, name)

        def timed_method(*args, _method=method, **kwargs):
            start = time.process_time()
            try:
                return _method(*args, **kwargs)
            finally:
                total[0] += time.process_time() - start

        setattr(module, name, timed_method)
    return total


def bench_text_to_image(pipe: DreamLLMPipeline, decoder_cpu: list[float]) -> None:
    # StableDiffusionPipeline rewrites a scheduler config with steps_offset=0 to 1; give both the same schedule.
    scheduler_config = {**pipe.scheduler.config, "steps_offset": 1}
    pipe.scheduler = type(pipe.scheduler).from_config(scheduler_config)
    cond, uncond = pipe.encode_prompt(PROMPT, pipe.device, 1, True)
    reference = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=None,
        tokenizer=None,
        unet=pipe.unet,
        scheduler=type(pipe.scheduler).from_config(scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    common = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "output_type": "np"}

    def dreamllm_prompt():
        return pipe(PROMPT, generator=torch.manual_seed(0), **common).images

    def dreamllm_embeds():
        return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=torch.manual_seed(0), **common).images

    def stable_diffusion():
        generator = torch.manual_seed(0)
        return reference(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=generator, **common).images

    max_diff = float(np.abs(dreamllm_prompt() - stable_diffusion()).max())  # also warms up
    contenders = {"sd": stable_diffusion, "embeds": dreamllm_embeds, "prompt": dreamllm_prompt}
    timings = {name: [] for name in contenders}
    for _ in range(REPEATS):  # interleaved, so that load from other processes hits all contenders alike
        for name, run in contenders.items():
            decoder_cpu[0] = 0.0
            wall, cpu = timed(run)
            timings[name].append((wall, cpu, cpu - decoder_cpu[0]))
    # Best of N (interference only ever adds time). CPU time is this process's own (one thread), so it is far less
    # sensitive to other processes than wall-clock; the UNet and VAE calls are identical in all three (same modules,
    # same inputs, bit-identical images), so the time outside them is each pipeline's own cost, and the last column
    # compares pipelines on the best decoder time plus their own cost.
    best = {name: [min(run[i] for run in runs) for i in range(3)] for name, runs in timings.items()}
    decoder = min(cpu - own for runs in timings.values() for _, cpu, own in runs)
    rows = [
        ("StableDiffusionPipeline(prompt_embeds=...)", "sd"),
        ("DreamLLMPipeline(prompt_embeds=...)", "embeds"),
        ("DreamLLMPipeline(prompt) (LLM encode included)", "prompt"),
    ]
    print(f"(a) text-to-image, 64 px, {STEPS} steps {type(pipe.scheduler).__name__}, guidance {GUIDANCE}, "
          f"best of {REPEATS}; UNet+VAE take {decoder:.3f} CPU s per image")
    print(f"    {'pipeline':<48}{'wall s':>8}{'ratio':>7}{'cpu s':>8}{'ratio':>7}{'own cpu s':>11}{'ratio':>7}")
    sd_wall, sd_cpu, sd_own = best["sd"]
    for label, name in rows:
        wall, cpu, own = best[name]
        print(f"    {label:<48}{wall:>8.3f}{wall / sd_wall:>7.3f}{cpu:>8.3f}{cpu / sd_cpu:>7.3f}"
              f"{own:>11.4f}{(decoder + own) / (decoder + sd_own):>7.3f}")
    print("    goal: ratio <= 1.05 ('own cpu s': time outside the shared UNet/VAE calls)")
    print(f"    max |pixel difference| DreamLLM(prompt) vs SD on the same conditions: {max_diff:.2e}")


class ImageEveryNTokens:
    """Logits processor that makes a random model write N text tokens, then `<dream_start>`, again and again."""

    def __init__(self, pipe: DreamLLMPipeline, num_text_tokens: int):
        config = pipe.llm.config
        self.dream_start, self.block_end = config.dream_start_token_id, config.image_end_token_id
        self.eos, self.num_text_tokens = config.text_config.eos_token_id, num_text_tokens
        self.prompt_length = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        ids = input_ids[0]
        self.prompt_length = self.prompt_length or len(ids)
        ends = (ids == self.block_end).nonzero()
        since = len(ids) - (int(ends[-1]) + 1 if len(ends) else self.prompt_length)
        scores = scores.clone()
        scores[:, self.eos] = float("-inf")
        if since >= self.num_text_tokens:
            scores[:] = float("-inf")
            scores[:, self.dream_start] = 0
        else:
            scores[:, self.dream_start] = float("-inf")
        return scores


def generate(pipe: DreamLLMPipeline, num_images: int):
    """A document of `num_images` x (text tokens + image); the budget ends right after the last image."""
    return pipe.generate_interleaved(
        "Tell a story with pictures.",
        max_new_tokens=num_images * (TEXT_TOKENS_PER_IMAGE + 1),
        max_images=num_images,
        guidance_scale=GUIDANCE,
        num_inference_steps=INTERLEAVED_STEPS,
        generator=torch.manual_seed(0),
        logits_processor=ImageEveryNTokens(pipe, TEXT_TOKENS_PER_IMAGE),
    )


def bench_interleaved(pipe: DreamLLMPipeline, decoder_cpu: list[float]) -> None:
    fed = []
    forward = pipe.llm.forward

    def counting_forward(*args, **kwargs):
        fed.append(kwargs["input_ids"].shape[1])
        return forward(*args, **kwargs)

    pipe.llm.forward = counting_forward
    print(f"(b) interleaved generation: {TEXT_TOKENS_PER_IMAGE} text tokens + 1 image ({INTERLEAVED_STEPS} steps, "
          f"guidance {GUIDANCE}) per segment, best of {INTERLEAVED_REPEATS}")
    print(f"    {'images':>6}{'doc tokens':>12}{'LLM tokens':>12}{'LLM/doc':>9}{'wall s':>8}{'s/image':>9}"
          f"{'cpu s':>8}{'s/image':>9}{'LLM-side cpu s/image':>22}")
    generate(pipe, 1)  # warm-up
    for num_images in (1, 2, 4):
        outputs, runs = [], []
        for _ in range(INTERLEAVED_REPEATS):
            fed.clear()
            decoder_cpu[0] = 0.0
            wall, cpu = timed(lambda: outputs.append(generate(pipe, num_images)))
            runs.append((wall, cpu, cpu - decoder_cpu[0]))
        wall, cpu, own = (min(run[i] for run in runs) for i in range(3))  # best of N, as in (a)
        out = outputs[-1]
        images = sum(not isinstance(segment, str) for segment in out.segments)
        assert images == num_images and out.num_llm_tokens == sum(fed), (images, out.num_llm_tokens, sum(fed))
        print(f"    {images:>6}{out.document_length:>12}{sum(fed):>12}{sum(fed) / out.document_length:>9.3f}"
              f"{wall:>8.2f}{wall / images:>9.3f}{cpu:>8.2f}{cpu / images:>9.3f}{own / images:>22.4f}")
    pipe.llm.forward = forward
    print("    goals: LLM/doc exactly 1.000; s/image flat in the number of images (LLM-side: all but UNet/VAE calls)")


def main() -> None:
    # One thread: on a shared CPU, intra-op threads fighting other processes make timings swing by 10x or more.
    torch.set_num_threads(1)
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        parts = build_components(Path(scratch) / "parts")
        folder = assemble(parts["llm"], parts["vision"], parts["diffusion"], Path(scratch) / "dreamllm", 16)
        pipe = DreamLLMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    llm_params = sum(p.numel() for p in pipe.llm.parameters()) / 1e6
    unet_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e6
    print(f"random DreamLLM: LLM {llm_params:.1f}M params, UNet {unet_params:.1f}M params, 64 px, "
          f"{pipe.llm.config.num_dream_queries} dream queries, {pipe.llm.config.num_image_tokens} CLIP tokens/image; "
          f"torch threads {torch.get_num_threads()}")
    decoder_cpu = accumulate_cpu_time(pipe.unet, "forward", pipe.vae, "decode")
    bench_text_to_image(pipe, decoder_cpu)
    bench_interleaved(pipe, decoder_cpu)


if __name__ == "__main__":
    main()
