"""Low-memory inference: the LLM loaded int8 weight-only through transformers' `TorchAoConfig`, passed to the pipeline
as its `llm` component, creates images and answers like the bf16 model it was quantized from."""

import pytest
import torch

pytest.importorskip("torchao", reason="torchao is not installed (pip install -r requirements-quantization.txt)")

from torchao.quantization import Int8WeightOnlyConfig  # noqa: E402
from transformers import TorchAoConfig  # noqa: E402

from modeling_dreamllm import DreamLLMForConditionalGeneration  # noqa: E402
from pipeline_dreamllm import DreamLLMPipeline  # noqa: E402


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes the parameters really hold (a quantized weight: its int8 data and its scales)."""
    total = 0
    for param in module.parameters():
        data = param.data
        inner = [getattr(data, name) for name in getattr(data, "tensor_data_names", [])]
        total += sum(t.numel() * t.element_size() for t in inner) if inner else data.numel() * data.element_size()
    return total


def test_int8_weight_only_llm_inside_the_pipeline(tiny_folder):
    quantized = DreamLLMForConditionalGeneration.from_pretrained(
        tiny_folder, dtype=torch.bfloat16, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
    ).eval()
    layer = quantized.model.language_model.layers[0]
    assert type(layer.self_attn.q_proj.weight).__name__ == "Int8Tensor"
    assert layer.self_attn.q_proj.weight.qdata.dtype == torch.int8
    pipe = DreamLLMPipeline.from_pretrained(tiny_folder, llm=quantized, dtype=torch.bfloat16)
    reference = DreamLLMPipeline.from_pretrained(tiny_folder, dtype=torch.bfloat16)
    assert pipe.llm is quantized and pipe.unet.dtype == torch.bfloat16
    layers, reference_layers = pipe.llm.model.language_model.layers, reference.llm.model.language_model.layers
    assert weight_bytes(layers) < 0.6 * weight_bytes(reference_layers)

    # Creation: conditions of the quantized LLM track the bf16 ones; the pipeline draws an image from them.
    cond, uncond = pipe.encode_prompt("a red circle", pipe.device, 1, True)
    ref_cond, ref_uncond = reference.encode_prompt("a red circle", reference.device, 1, True)
    for got, expected in ((cond, ref_cond), (uncond, ref_uncond)):
        similarity = torch.nn.functional.cosine_similarity(got.float().flatten(), expected.float().flatten(), dim=0)
        assert similarity > 0.99
    image = pipe("a red circle", num_inference_steps=3, output_type="np", generator=torch.manual_seed(0)).images
    assert image.shape == (1, 16, 16, 3) and float(image.std()) > 0

    # Understanding: greedy answers through `generate`, with the KV cache, as with the bf16 model.
    inputs = pipe.processor(text="What is this?", return_tensors="pt")
    answer = quantized.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    expected = reference.llm.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert answer.shape == expected.shape == (1, inputs["input_ids"].shape[1] + 6)
    logits = quantized(**inputs).logits[0, -1].float()
    ref_logits = reference.llm(**inputs).logits[0, -1].float()
    assert torch.nn.functional.cosine_similarity(logits, ref_logits, dim=0) > 0.99
