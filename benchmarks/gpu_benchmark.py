"""DreamLLM-7B-shaped speed and memory on one GPU, against the diffusers / transformers models it is built from.

Random weights in the shapes of the release (`DreamLLMConfig()`: Vicuna-7B, all 32 layers, CLIP ViT-L/14) with the
SD-2.1-base UNet and VAE (`train.convert.configs`), built directly on the device in bf16 (nothing is
downloaded or written):

(a) text-to-image, 512x512, 25 steps DPM-Solver++, guidance 7.5: `DreamLLMPipeline(prompt)` against diffusers'
    `StableDiffusionPipeline` on the same UNet/VAE fed the same conditions; the ratio, and the LLM's share of the
    DreamLLM time (encoding the prompt, the null condition cached as in use);
(b) understanding: greedy decode tokens/s of the DreamLLM LLM against transformers' `LlavaForConditionalGeneration`
    built from the same LLaMA and CLIP configurations;
(c) one I-GPT training step with LoRA (r=16, activation checkpointing, one document with a created image): time and
    peak memory;
(d) interleaved generation of documents with 1, 2 and 4 images: seconds per image.

    python benchmarks/gpu_benchmark.py            # CUDA, bf16: about 3 minutes on one H100
    python benchmarks/gpu_benchmark.py --tiny     # the same measurements on a tiny random model, CPU, seconds
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

BENCHMARKS = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCHMARKS.parent))
sys.path.insert(0, str(BENCHMARKS))

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline  # noqa: E402
from diffusers import UNet2DConditionModel  # noqa: E402
from transformers import CLIPImageProcessor, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration  # noqa: E402

from bench_pipeline import ImageEveryNTokens  # noqa: E402
from configuration_dreamllm import DreamLLMConfig  # noqa: E402
from modeling_dreamllm import DreamLLMForConditionalGeneration  # noqa: E402
from pipeline_dreamllm import DreamLLMPipeline  # noqa: E402
from processing_dreamllm import DreamLLMProcessor  # noqa: E402
from train.assemble import diffusion_image_processor  # noqa: E402
from train.convert.configs import (  # noqa: E402
    CLIP_VIT_L14_IMAGE_PROCESSOR_CONFIG,
    CLIP_VIT_L14_VISION_CONFIG,
    SD21_BASE_SCHEDULER_CONFIG,
    SD21_BASE_UNET_CONFIG,
    SD21_BASE_VAE_CONFIG,
)

PROMPT = "A photo of a cat sitting on a red sofa."
STEPS, GUIDANCE = 25, 7.5
TEXT_TOKENS_PER_IMAGE = 8


class Clock:
    """Wall-clock seconds of a call, synchronised with the device."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, run) -> float:
        self.sync()
        start = time.perf_counter()
        run()
        self.sync()
        return time.perf_counter() - start


def build(tiny: bool, device: torch.device, dtype: torch.dtype, scratch: Path):
    """(pipeline, LLaVA on the same LLaMA/CLIP configs, tiny folder). The tokenizer and token ids come from a
    tiny assembled folder (a 7B tokenizer would need a download); the 7B shapes do not depend on them."""
    from train.assemble import main as assemble

    folder = scratch / "tiny"
    assemble(["--preset", "tiny-random", "--output", str(folder)])
    processor = DreamLLMProcessor.from_pretrained(folder)
    tiny_config = DreamLLMConfig.from_pretrained(folder)
    if tiny:
        config = tiny_config
        unet_config = dict(UNet2DConditionModel.load_config(folder, subfolder="unet"))
        vae_config = dict(AutoencoderKL.load_config(folder, subfolder="vae"))
        scheduler_config = dict(DDPMScheduler.load_config(folder, subfolder="scheduler"))
    else:
        text = DreamLLMConfig().text_config.to_dict()  # Vicuna-7B: 32 x 4096, vocabulary 32008
        ids = tiny_config.text_config
        text.update(bos_token_id=ids.bos_token_id, eos_token_id=ids.eos_token_id, pad_token_id=ids.pad_token_id)
        config = DreamLLMConfig(
            text_config=text,
            vision_config=dict(CLIP_VIT_L14_VISION_CONFIG),
            num_dream_queries=64,
            condition_hidden_size=SD21_BASE_UNET_CONFIG["cross_attention_dim"],
            **{name: getattr(tiny_config, name) for name in DreamLLMConfig().to_dict() if name.endswith("_token_id")},
        )
        unet_config, vae_config = SD21_BASE_UNET_CONFIG, SD21_BASE_VAE_CONFIG
        scheduler_config = SD21_BASE_SCHEDULER_CONFIG
        processor.image_processor = CLIPImageProcessor.from_dict(CLIP_VIT_L14_IMAGE_PROCESSOR_CONFIG)
        processor.diffusion_image_processor = diffusion_image_processor(512)
        processor.num_image_tokens, processor.num_dream_queries = config.num_image_tokens, config.num_dream_queries
    config.text_config._attn_implementation = config.vision_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        llm = DreamLLMForConditionalGeneration._from_config(config, dtype=dtype).eval()
        unet = UNet2DConditionModel.from_config(unet_config).to(dtype)
        vae = AutoencoderKL.from_config(vae_config).to(dtype)
        llava_config = LlavaConfig(text_config=config.text_config.to_dict(),
                                   vision_config=config.vision_config.to_dict(),
                                   vision_feature_layer=config.vision_feature_layer)
        llava = LlavaForConditionalGeneration._from_config(llava_config, dtype=dtype).eval()
    sampler = DPMSolverMultistepScheduler.from_config({**scheduler_config, "steps_offset": 1})
    pipe = DreamLLMPipeline(llm=llm, processor=processor, unet=unet, vae=vae, scheduler=sampler)
    pipe.set_progress_bar_config(disable=True)
    return pipe, llava, DDPMScheduler.from_config(scheduler_config), folder


def bench_text_to_image(pipe: DreamLLMPipeline, clock: Clock, repeats: int) -> dict[str, float]:
    reference = StableDiffusionPipeline(
        vae=pipe.vae, text_encoder=None, tokenizer=None, unet=pipe.unet,
        scheduler=type(pipe.scheduler).from_config(pipe.scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    reference.set_progress_bar_config(disable=True)
    common = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, "output_type": "np"}
    cond, uncond = pipe.encode_prompt(PROMPT, pipe.device, 1, True)
    runs = {
        "dreamllm": lambda: pipe(PROMPT, generator=torch.manual_seed(0), **common),
        "sd": lambda: reference(prompt_embeds=cond, negative_prompt_embeds=uncond, generator=torch.manual_seed(0),
                                **common),
        "llm": lambda: pipe.encode_prompt(PROMPT, pipe.device, 1, True),
    }
    times = {name: [] for name in runs}
    for name, run in runs.items():  # warm-up
        run()
    for _ in range(repeats):  # interleaved, best of N
        for name, run in runs.items():
            times[name].append(clock(run))
    best = {name: min(values) for name, values in times.items()}
    return {"dreamllm_s": best["dreamllm"], "sd_s": best["sd"], "ratio": best["dreamllm"] / best["sd"],
            "llm_share": best["llm"] / best["dreamllm"]}


def bench_decode(pipe: DreamLLMPipeline, llava, clock: Clock, new_tokens: int) -> dict[str, float]:
    inputs = pipe.processor(text="USER: Describe a cat in detail. ASSISTANT:", add_eos=False, return_tensors="pt")
    input_ids = inputs["input_ids"].to(pipe.device)
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    rates = {}
    for name, model in (("dreamllm", pipe.llm), ("llava", llava)):
        with torch.no_grad():
            model.generate(input_ids=input_ids, **settings)  # warm-up
            seconds = min(clock(lambda: model.generate(input_ids=input_ids, **settings)) for _ in range(2))
        rates[name] = new_tokens / seconds
    return {"dreamllm_tok_s": rates["dreamllm"], "llava_tok_s": rates["llava"],
            "ratio": rates["dreamllm"] / rates["llava"]}


def bench_interleaved(pipe: DreamLLMPipeline, clock: Clock) -> dict[int, float]:
    def document(num_images: int):
        return pipe.generate_interleaved(
            "Tell a story with pictures.", max_new_tokens=num_images * (TEXT_TOKENS_PER_IMAGE + 1),
            max_images=num_images, guidance_scale=GUIDANCE, num_inference_steps=STEPS,
            generator=torch.manual_seed(0), logits_processor=ImageEveryNTokens(pipe, TEXT_TOKENS_PER_IMAGE),
        )

    document(1)  # warm-up
    per_image = {}
    for num_images in (1, 2, 4):
        outputs = []
        seconds = clock(lambda: outputs.append(document(num_images)))
        images = sum(not isinstance(segment, str) for segment in outputs[0].segments)
        assert images == num_images, (images, num_images)
        per_image[num_images] = seconds / images
    return per_image


def bench_lora_step(pipe: DreamLLMPipeline, decoder_scheduler, folder: Path, scratch: Path, clock: Clock,
                    steps: int) -> dict[str, float]:
    """One I-GPT step with LoRA through `DreamLLMTrainer` (the pipeline's LLM is wrapped: run this last)."""
    from train.data import build_train_dataset
    from train.data.example_files import write_mmc4
    from train.diffusion_loss import DreamLLMDiffusionLoss
    from train.stages import PROJECTORS_AND_QUERIES, apply_lora, parse_args, set_stage_trainable
    from train.trainer import DreamLLMTrainer

    on_gpu = pipe.device.type == "cuda"
    _, args = parse_args(["--stage", "igpt", "--model_name_or_path", str(folder), "--output_dir", str(scratch / "out"),
                          "--per_device_train_batch_size", "1", "--bf16", str(on_gpu).lower(), "--lora_r", "16",
                          "--use_cpu", str(not on_gpu).lower(), "--report_to", "none", "--max_steps", "1",
                          "--activation_checkpointing", "true", "--condition_drop_prob", "0.1"])
    model = pipe.llm.train()
    set_stage_trainable(model, "igpt")
    model.requires_grad_(False)
    model = apply_lora(model, 16, train_modules=PROJECTORS_AND_QUERIES)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    dataset = build_train_dataset([str(write_mmc4(scratch / "mmc4"))], pipe.processor, creation_prob=1.0)
    decoder = DreamLLMDiffusionLoss(pipe.unet, pipe.vae, decoder_scheduler)
    trainer = DreamLLMTrainer(model, args, diffusion_loss=decoder, decoder_folder=folder, train_dataset=dataset,
                              processing_class=pipe.processor)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which is bypassed here
    batch = trainer.data_collator([dataset[0]])

    def step():
        trainer.training_step(trainer.model, dict(batch))
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    step()  # warm-up (allocates the optimizer state)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    seconds = statistics.median(clock(step) for _ in range(steps))
    peak = torch.cuda.max_memory_allocated() if on_gpu else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"step_s": seconds, "peak_gib": peak / 2**30, "trainable_m": trainable / 1e6,
            "tokens": batch["input_ids"].shape[1]}


def run(tiny: bool) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    clock = Clock(device)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        start = time.perf_counter()
        pipe, llava, decoder_scheduler, folder = build(tiny, device, dtype, scratch)
        results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
                   "dtype": str(dtype).removeprefix("torch."), "build_s": time.perf_counter() - start,
                   "llm_params_b": sum(p.numel() for p in pipe.llm.parameters()) / 1e9,
                   "size": pipe.default_size()}
        results["t2i"] = bench_text_to_image(pipe, clock, repeats=2 if tiny else 3)
        results["decode"] = bench_decode(pipe, llava, clock, new_tokens=16 if tiny else 64)
        del llava
        results["interleaved"] = bench_interleaved(pipe, clock)
        results["lora"] = bench_lora_step(pipe, decoder_scheduler, folder, scratch, clock, steps=2 if tiny else 3)
    return results


def table(results: dict) -> str:
    t2i, decode, lora, inter = results["t2i"], results["decode"], results["lora"], results["interleaved"]
    height, width = results["size"]
    rows = [
        ("text-to-image s/image", f"{t2i['dreamllm_s']:.3f}", f"{t2i['sd_s']:.3f} (StableDiffusionPipeline)",
         f"{t2i['ratio']:.3f}"),
        ("  LLM share of DreamLLM time", f"{100 * t2i['llm_share']:.1f} %", "", ""),
        ("understanding decode tokens/s", f"{decode['dreamllm_tok_s']:.1f}",
         f"{decode['llava_tok_s']:.1f} (LlavaForConditionalGeneration)", f"{decode['ratio']:.3f}"),
        (f"I-GPT LoRA step s ({lora['tokens']} tokens, 1 image)", f"{lora['step_s']:.3f}", "", ""),
        ("  peak memory GiB", f"{lora['peak_gib']:.2f}", f"trainable {lora['trainable_m']:.3f} M", ""),
    ] + [(f"interleaved, {n} image{'s' * (n > 1)}: s/image", f"{inter[n]:.3f}", "", "") for n in (1, 2, 4)]
    lines = [
        f"DreamLLM-7B-shaped benchmark on {results['device']} ({results['dtype']}), "
        f"LLM {results['llm_params_b']:.2f} B "
        f"params, images {height}x{width}, {STEPS} steps, guidance {GUIDANCE}; built in {results['build_s']:.0f} s",
        f"| {'measurement':<44} | {'DreamLLM':>10} | {'reference':<40} | {'ratio':>6} |",
        f"| {'-' * 44} | {'-' * 10} | {'-' * 40} | {'-' * 6} |",
    ]
    lines += [f"| {a:<44} | {b:>10} | {c:<40} | {d:>6} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny random model on the CPU (for tests)")
    args = parser.parse_args(argv)
    transformers.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()
    if args.tiny:
        torch.set_num_threads(1)  # tiny kernels on shared cores
    results = run(args.tiny)
    print(table(results))
    return results


if __name__ == "__main__":
    main()
