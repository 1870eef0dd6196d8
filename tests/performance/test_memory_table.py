"""benchmarks/memory_table.py: counts of the real 7B configuration on the meta device, and per-GPU arithmetic."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "memory_table.py"


@pytest.fixture(scope="module")
def memory_table():
    spec = importlib.util.spec_from_file_location("memory_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["memory_table"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_parts_are_the_7b_model_counted_on_meta(memory_table):
    from configuration_dreamllm import DreamLLMConfig

    config = DreamLLMConfig()
    model, unet, vae = memory_table.build_meta(config)
    assert next(model.parameters()).is_meta and next(unet.parameters()).is_meta  # nothing allocated
    parts = memory_table.parts(model, unet, vae, lora_rank=16)
    t = config.text_config
    h, i, layers, vocab = t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.vocab_size
    llama = 2 * vocab * h + layers * (4 * h * h + 3 * h * i + 2 * h) + h  # untied head, no biases, RMSNorm
    assert parts.llm == llama and round(parts.llm / 1e9, 2) == 6.74
    assert parts.projectors == 1024 * h + h + config.num_dream_queries * h + h * config.condition_hidden_size
    assert 300e6 < parts.clip < 310e6 and 860e6 < parts.unet < 870e6  # ViT-L/14 vision tower, SD-2.1 UNet
    lora = layers * 16 * ((h + h) * 4 + (h + i) * 3) + 2 * 7 * h  # q,k,v,o + gate,up,down; 7 new token rows
    assert parts.lora == lora


def test_per_gpu_memory_follows_the_sharding(memory_table):
    parts = memory_table.Parts(llm=8_000, clip=1_000, projectors=100, unet=500, vae=50, lora=40)
    trained = parts.llm + parts.projectors
    eight = memory_table.per_gpu_gib(parts, trained, activations=0, strategy="fsdp2", gpus=8)
    thirty_two = memory_table.per_gpu_gib(parts, trained, activations=0, strategy="fsdp2", gpus=32)
    gib = memory_table.GIB
    assert eight["optimizer"] * gib == pytest.approx(8 * trained / 8)
    assert eight["grads"] * gib == pytest.approx(4 * trained / 8)
    # FSDP2: CLIP (ignored) and the decoder stay whole on every GPU
    assert thirty_two["params"] * gib == pytest.approx(4 * 8_100 / 32 + 4 * 1_000 + 2 * 500 + 4 * 50)
    zero3 = memory_table.per_gpu_gib(parts, trained, activations=0, strategy="zero3", gpus=8)
    assert zero3["params"] * gib == pytest.approx(2 * 9_100 / 8 + 4 * trained / 8 + 2 * 500 + 4 * 50)
    with pytest.raises(ValueError, match="unknown strategy 'ddp'"):
        memory_table.per_gpu_gib(parts, trained, 0, "ddp", 8)


def test_table_has_every_stage_and_setup(memory_table):
    text = memory_table.table(micro_batch=1, seq=64, gpu_counts=(8, 32))
    rows = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 3 * 2 * 2 + 1
    totals = {tuple(cell.strip() for cell in row.split("|")[1:3]): float(row.split("|")[-2]) for row in rows}
    assert totals[("igpt", "FSDP2, 32 GPUs")] < totals[("igpt", "FSDP2, 8 GPUs")]
    assert totals[("alignment", "ZeRO-3, 8 GPUs")] < totals[("igpt", "ZeRO-3, 8 GPUs")]
