"""benchmarks/gpu_benchmark.py --tiny: every measurement of the GPU benchmark runs on the CPU and prints one table."""

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_benchmark.py"


def test_tiny_run_prints_one_table_of_every_measurement(capsys):
    previous = torch.get_num_threads()
    spec = importlib.util.spec_from_file_location("gpu_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_benchmark"] = module
    spec.loader.exec_module(module)
    try:
        results = module.main(["--tiny"])
    finally:
        torch.set_num_threads(previous)
    t2i, decode, lora = results["t2i"], results["decode"], results["lora"]
    assert results["device"] == "CPU" and t2i["dreamllm_s"] > 0 and t2i["sd_s"] > 0
    assert 0 < t2i["llm_share"] < 1 and t2i["ratio"] > 0
    assert decode["dreamllm_tok_s"] > 0 and decode["llava_tok_s"] > 0
    assert lora["step_s"] > 0 and lora["peak_gib"] > 0 and 0 < lora["trainable_m"]
    assert set(results["interleaved"]) == {1, 2, 4} and all(v > 0 for v in results["interleaved"].values())
    table = capsys.readouterr().out
    for label in ("text-to-image s/image", "StableDiffusionPipeline", "LlavaForConditionalGeneration",
                  "I-GPT LoRA step", "peak memory GiB", "interleaved, 4 images"):
        assert label in table, label
