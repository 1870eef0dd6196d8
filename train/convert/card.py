"""The model card (`README.md`) written into a folder converted from an official DreamLLM release.

>>> write_model_card(folder, source="RunpeiDong/dreamllm-7b-chat-v1.0", input_files=[...], dtype="bfloat16",
...                  config=config, vision="CLIP ViT-L/14", decoder="SD-2.1-base", special_ids=ids)
"""

import re
from datetime import datetime, timezone
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["dreamllm", "multimodal", "text-to-image", "custom_code"]

CARD_TEMPLATE = """# DreamLLM ({source}), converted

DreamLLM (Dong et al., *DreamLLM: Synergistic Multimodal Comprehension and Creation*, ICLR 2024) reads interleaved
text and images and creates images: the final hidden states of {num_dream_queries} learned *dream queries* condition a
Stable Diffusion UNet through a linear projector. This folder holds the released weights in the Hugging Face layout:
a transformers remote-code model and processor at the root, and the diffusers decoder in `unet/`, `vae/`,
`scheduler/`.

- Language model: LLaMA architecture (Vicuna-7B v1.1 lineage), {num_layers} layers, hidden size {hidden_size},
  vocabulary {vocab_size} ({base_vocab_size} + `[PAD]` + the 7 DreamLLM tokens).
- Vision encoder: {vision}, {image_size} px input, {num_image_tokens} patch features per image (penultimate
  layer, CLS dropped), linear projector.
- Image decoder: Stable Diffusion UNet + VAE, {decoder}; condition width {condition_hidden_size}.
- Weights: `{dtype}`.

## License

The converted weights carry the terms of the original release ({source}) and of the models it is built on: the
LLaMA / Vicuna license for the language model, the MIT license of OpenAI CLIP, and the CreativeML Open RAIL++-M
license of Stable Diffusion 2.1-base. Check them before use; this conversion adds no rights.

## Use

```python
import torch
from transformers import AutoModelForCausalLM, AutoProcessor

model = AutoModelForCausalLM.from_pretrained("{folder_name}", trust_remote_code=True, dtype=torch.bfloat16)
processor = AutoProcessor.from_pretrained("{folder_name}", trust_remote_code=True)

# Understanding
inputs = processor.apply_chat_template(
    [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is in this picture?"}}]}}],
    add_generation_prompt=True, tokenize=False,
)
batch = processor(text=inputs, images=[image])
answer = model.generate(**batch, max_new_tokens=64)
print(processor.batch_decode(answer[:, batch["input_ids"].shape[1]:], skip_special_tokens=True))

# Conditions for the diffusion decoder: one (num_dream_queries, condition_hidden_size) tensor per `<dream>`
conditions = model(**processor(text="a red bicycle leaning on a brick wall<dream>")).condition_embeds
```

The decoder loads with diffusers:

```python
from diffusers import AutoencoderKL, UNet2DConditionModel, DDPMScheduler

unet = UNet2DConditionModel.from_pretrained("{folder_name}", subfolder="unet")
vae = AutoencoderKL.from_pretrained("{folder_name}", subfolder="vae")
scheduler = DDPMScheduler.from_pretrained("{folder_name}", subfolder="scheduler")  # the official sampler
```
{pipeline_note}
Prompts for image creation are raw text followed by `<dream>` (no chat template), as in the release's training pairs.
Special-token ids come from the tokenizer: `<s>`={bos}, `</s>`={eos}, `[PAD]`={pad}. (The release's own `config.json`
says bos 0 / eos 1 / pad -1; those values are wrong and were not used.)

## Provenance

Converted on {date} with `python -m train.convert` from these files of {source}:

{file_list}

- `pytorch_model.bin` (LLM) -> `model.language_model.*`, `lm_head.*`; `rotary_emb.inv_freq` buffers dropped.
- `dream_embedding.bin` `dream_queries` (1, Q, D) -> `model.dream_queries.weight` (Q, D).
- `clip_vision_embedding.bin` `clip_vision_model.vision_model.*` -> `model.vision_tower.*`,
  `projector.projector.*` -> `model.vision_projector.*`.
- `stable_diffusion_head.bin` `unet.*` -> `unet/`, `vae.*` -> `vae/`, `projector.projector.weight` ->
  `model.condition_projector.weight`.
- A full (FSDP) dump holds the same plugin tensors inside `pytorch_model.bin` under `model.dream_embedding.`,
  `model.clip_vision_embedding.` and `stable_diffusion_head.`; they are used when the plugin files are absent.
- Component configs: vision from {vision}; decoder from {decoder}.
"""

PIPELINE_NOTE = """
The folder is also a diffusers pipeline (`model_index.json`, `pipeline_dreamllm.py`):

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{folder_name}", trust_remote_code=True)
image = pipe("a red bicycle leaning on a brick wall", num_inference_steps=50, guidance_scale=3.5).images[0]
```
"""


def write_model_card(
    folder: Path,
    *,
    folder_name: str,
    source: str,
    input_files: list[Path],
    dtype: str,
    config,
    vision: str,
    decoder: str,
    special_ids: dict[str, int],
) -> None:
    """Write `README.md` (a `huggingface_hub.ModelCard`) describing the converted model, how to load it and what it
    was converted from."""
    text = config.text_config
    file_list = "\n".join(f"- `{path.name}` ({path.stat().st_size:,} bytes)" for path in input_files)
    pipeline_note = ""
    if (folder / "model_index.json").is_file():
        pipeline_note = PIPELINE_NOTE.format(folder_name=folder_name)
    card = CARD_TEMPLATE.format(
        source=source,
        folder_name=folder_name,
        num_dream_queries=config.num_dream_queries,
        num_layers=text.num_hidden_layers,
        hidden_size=text.hidden_size,
        vocab_size=text.vocab_size,
        base_vocab_size=text.vocab_size - 8,
        vision=vision,
        image_size=config.vision_config.image_size,
        num_image_tokens=config.num_image_tokens,
        decoder=decoder,
        condition_hidden_size=config.condition_hidden_size,
        dtype=dtype,
        pipeline_note=pipeline_note,
        date=datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        file_list=file_list,
        **special_ids,
    )
    ModelCard(f"---\n{card_data(source).to_yaml()}\n---\n\n{card}").save(folder / "README.md")


def card_data(source: str) -> ModelCardData:
    """The card's metadata: `base_model` is the release when `source` is a Hub repo id."""
    is_repo_id = re.fullmatch(r"[\w.-]+/[\w.-]+", source) is not None
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-text-to-text",
        license="other",
        base_model=source if is_repo_id else None,
        tags=TAGS,
    )


__all__ = ["write_model_card", "card_data"]
