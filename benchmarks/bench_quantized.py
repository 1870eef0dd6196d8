"""Low-memory inference: the LLM in bf16 against int8 weight-only (torchao, through transformers' `TorchAoConfig`),
inside `DreamLLMPipeline`, on a 7B-shaped LLM (4096 wide, 11008 MLP, 32 heads, 32008 tokens) with few layers.

Each variant runs in its own process, so that its peak RSS (Linux `VmHWM`) is its own: load the folder (the LLM quantized while
loading), text-to-image (64 px random decoder, so that the LLM's part shows), greedy understanding decode.

    python benchmarks/bench_quantized.py              # 2 layers, CPU
    python benchmarks/bench_quantized.py --layers 4 --tokens 32
    # CUDA, 4-bit: DreamLLMForConditionalGeneration.from_pretrained(
    #     folder, quantization_config=BitsAndBytesConfig(load_in_4bit=True))
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
PROMPT = "A photo of a cat sitting on a red sofa."


def build_folder(root: Path, layers: int) -> Path:
    from configuration_dreamllm import DreamLLMConfig
    from train.assemble import assemble
    from train.tiny_random import build_tiny_components
    from transformers import LlamaConfig, LlamaForCausalLM

    parts = build_tiny_components(root / "parts", condition_hidden_size=64)
    text = DreamLLMConfig().text_config.to_dict()  # Vicuna-7B shapes
    tokenizer_config = LlamaConfig.from_pretrained(parts["llm"])
    text.update(num_hidden_layers=layers, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                vocab_size=max(text["vocab_size"], tokenizer_config.vocab_size))
    for key in ("model_type", "architectures", "transformers_version", "dtype", "torch_dtype"):
        text.pop(key, None)
    with torch.device("cpu"):
        LlamaForCausalLM(LlamaConfig(**text)).to(torch.bfloat16).save_pretrained(parts["llm"])
    from train.tiny_random import save_tiny_decoder

    save_tiny_decoder(parts["diffusion"], 64, channels=(32, 64), latent_size=32, attention_head_dim=8, norm_num_groups=8)
    return assemble(parts["llm"], parts["vision"], parts["diffusion"], root / "dreamllm", 16, dtype="bfloat16")


def memory_mib(field: str) -> float:
    """`VmRSS` (now) or `VmHWM` (peak) of this process from /proc: unlike `ru_maxrss`, the peak starts afresh at exec,
    so a child does not report the peak of the parent that built the folder."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def weight_mib(module: torch.nn.Module) -> float:
    """Bytes the parameters hold (a quantized weight: its int8 data and scales)."""
    total = 0
    for param in module.parameters():
        inner = [getattr(param.data, name) for name in getattr(param.data, "tensor_data_names", [])]
        total += sum(t.nbytes for t in inner) if inner else param.data.nbytes
    return total / 2**20


def measure(folder: Path, variant: str, tokens: int, steps: int) -> dict:
    from modeling_dreamllm import DreamLLMForConditionalGeneration
    from pipeline_dreamllm import DreamLLMPipeline

    torch.set_num_threads(1)
    start = time.perf_counter()
    kwargs = {}
    if variant == "int8":
        from torchao.quantization import Int8WeightOnlyConfig
        from transformers import TorchAoConfig

        kwargs["quantization_config"] = TorchAoConfig(Int8WeightOnlyConfig())
    llm = DreamLLMForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16, **kwargs).eval()
    pipe = DreamLLMPipeline.from_pretrained(folder, llm=llm, dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    after_load = memory_mib("VmRSS")
    pipe("warm up", num_inference_steps=1, output_type="np")
    start = time.perf_counter()
    pipe(PROMPT, num_inference_steps=steps, output_type="np", generator=torch.manual_seed(0))
    text_to_image = time.perf_counter() - start
    start = time.perf_counter()
    pipe.encode_prompt(PROMPT, pipe.device, 1, True)
    encode = time.perf_counter() - start
    inputs = pipe.processor(text="USER: What is in the picture? ASSISTANT:", add_eos=False, return_tensors="pt")
    settings = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False}
    with torch.no_grad():
        llm.generate(**inputs, max_new_tokens=2, min_new_tokens=2, do_sample=False)
        start = time.perf_counter()
        llm.generate(**inputs, **settings)
        decode = time.perf_counter() - start
    return {"variant": variant, "load_s": load, "weights_mib": weight_mib(llm), "anon_mib": memory_mib("RssAnon"),
            "rss_after_load_mib": after_load,
            "peak_rss_mib": memory_mib("VmHWM"),
            "text_to_image_s": text_to_image, "encode_prompt_s": encode, "decode_tok_s": tokens / decode}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--variant", choices=["bf16", "int8"], help=argparse.SUPPRESS)  # one child process
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(measure(Path(args.folder), args.variant, args.tokens, args.steps)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        folder = build_folder(Path(scratch), args.layers)
        rows = []
        for variant in ("bf16", "int8"):
            command = [sys.executable, __file__, "--variant", variant, "--folder", str(folder),
                       "--tokens", str(args.tokens), "--steps", str(args.steps)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"7B-shaped LLM with {args.layers} layers, CPU, one thread; text-to-image {args.steps} steps at 64 px; "
          f"decode {args.tokens} tokens")
    print("| LLM | LLM weights MiB | load s | RSS after load MiB | peak RSS MiB | anonymous RSS at end MiB "
          "| text-to-image s | prompt encode s | decode tokens/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['variant']} | {row['weights_mib']:.0f} | {row['load_s']:.1f} | {row['rss_after_load_mib']:.0f} "
              f"| {row['peak_rss_mib']:.0f} "
              f"| {row['anon_mib']:.0f} | {row['text_to_image_s']:.2f} | {row['encode_prompt_s']:.3f} | {row['decode_tok_s']:.2f} |")


if __name__ == "__main__":
    main()
