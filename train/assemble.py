"""Build a fresh DreamLLM folder (before stage 1) from pretrained components in their native formats.

    python -m train.assemble --llm lmsys/vicuna-7b-v1.1 --vision openai/clip-vit-large-patch14 \
        --diffusion stabilityai/stable-diffusion-2-1-base --output dreamllm-7b-init
    python -m train.assemble --llm Qwen/Qwen2.5-7B-Instruct --vision google/siglip-so400m-patch14-384 \
        --diffusion stabilityai/stable-diffusion-2-1-base --output dreamllm-qwen2.5-siglip-init
    python -m train.assemble --llm Qwen/Qwen2.5-7B-Instruct --vision google/siglip-so400m-patch14-384 \
        --diffusion stabilityai/stable-diffusion-3.5-medium --output dreamllm-qwen2.5-siglip-sd3.5-init
    python -m train.assemble --preset tiny-random --output /tmp/dreamllm-tiny
    python -m train.assemble --preset tiny-random --llm qwen2 --vision siglip --decoder sd3 --output /tmp/tiny-sd3
    python -m train.assemble ... --projector-init pytorch   # the official release's projector initialisation

The LLM is any transformers causal LM with its tokenizer (LLaMA/Vicuna, Qwen2/2.5/3, Mistral, ...): its chat template
is kept when it has one (the release's Vicuna template otherwise), a tokenizer without BOS gets none, tied embeddings
stay tied. The vision tower is CLIP or SigLIP (a `*VisionModel` folder or a full dual-encoder one); the feature
layer and token selection follow transformers' LLaVA (`--vision-feature-layer`, `--vision-feature-select-strategy`).

The decoder is a diffusers folder in its native layout: Stable Diffusion 1.x/2.x or SDXL (`unet/`), SD3/SD3.5
(`transformer/`), with `vae/` and `scheduler/`; its text encoders are not read (DreamLLM's conditions replace them).
The condition projector's width, and the pooled projector's for SDXL/SD3, are read from the denoiser's config
(`decoders_dreamllm.py`).

The folder is the one layout every part of the project reads and writes: its root is the transformers remote-code
model and processor; `unet/` or `transformer/`, `vae/` and `scheduler/` hold the frozen diffusion decoder.
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn
from transformers import (
    MODEL_MAPPING,
    AutoConfig,
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPImageProcessorPil,
    GenerationConfig,
    PreTrainedModel,
)
from transformers.image_utils import PILImageResampling

from configuration_dreamllm import (
    SPECIAL_TOKENS,
    VISION_FEATURE_SELECT_STRATEGIES,
    VISION_TOWER_CLS_TOKENS,
    DreamLLMConfig,
)
from decoders_dreamllm import DECODER_PARTS, DENOISER_SUBFOLDERS, denoiser_subfolder, folder_decoder_family
from modeling_dreamllm import DreamLLMForConditionalGeneration, DreamLLMModel
from processing_dreamllm import CHAT_TEMPLATE, DreamLLMProcessor
from dreamllm_common.folders import staged_folder

# Added in SPECIAL_TOKENS' order, the official release's (ids then follow the tokenizer; they are read back, never
# assumed).
ADDED_TOKENS = list(SPECIAL_TOKENS.values())
# The Stable Diffusion 1.x/2.x layout (the official release's); `decoder_subfolders` gives any folder's own.
DECODER_SUBFOLDERS = ("unet", "vae", "scheduler")
AUTO_MAP = {
    "AutoConfig": "configuration_dreamllm.DreamLLMConfig",
    "AutoModel": "modeling_dreamllm.DreamLLMModel",
    "AutoModelForCausalLM": "modeling_dreamllm.DreamLLMForConditionalGeneration",
    "AutoModelForImageTextToText": "modeling_dreamllm.DreamLLMForConditionalGeneration",
}


def register_auto_classes(config: DreamLLMConfig):
    """Make `save_pretrained` copy the code files and write `auto_map` for every Auto class we support."""
    DreamLLMConfig.register_for_auto_class()
    DreamLLMForConditionalGeneration.register_for_auto_class("AutoModelForCausalLM")
    DreamLLMProcessor.register_for_auto_class()
    config.auto_map = dict(AUTO_MAP)


def add_special_tokens(tokenizer) -> None:
    """Add `[PAD]` (when missing) and the seven DreamLLM tokens, as the official training script does."""
    special = {"additional_special_tokens": ADDED_TOKENS}
    if tokenizer.pad_token is None:
        special["pad_token"] = "[PAD]"
    tokenizer.add_special_tokens(special)


def load_vision_tower(vision: str | Path, dtype: torch.dtype) -> PreTrainedModel:
    """The vision model of `vision` (a CLIP/SigLIP vision folder or a full CLIP/SigLIP one, whose text half is left
    out), in its own class: `CLIPVisionModel`, `SiglipVisionModel`."""
    config = AutoConfig.from_pretrained(vision)
    vision_config = getattr(config, "vision_config", None) or config  # dual encoders hold the tower's config
    if vision_config.model_type not in VISION_TOWER_CLS_TOKENS:
        raise ValueError(
            f"{vision} holds a {vision_config.model_type!r} model; supported vision towers: "
            f"{sorted(VISION_TOWER_CLS_TOKENS)} (SigLIP2: the FixRes checkpoints, which use the SigLIP classes)"
        )
    return MODEL_MAPPING[type(vision_config)].from_pretrained(vision, dtype=dtype)


def diffusion_image_processor(resolution: int) -> CLIPImageProcessorPil:
    """Targets for the diffusion decoder: resize + center crop to its resolution, values in [-1, 1], no flip."""
    return CLIPImageProcessorPil(
        size={"shortest_edge": resolution},
        crop_size={"height": resolution, "width": resolution},
        resample=PILImageResampling.BILINEAR,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def decoder_subfolders(folder: str | Path) -> list[str]:
    """The subfolders of a decoder folder that DreamLLM keeps: the denoiser's (`unet` or `transformer`), `vae` and
    `scheduler`."""
    return [denoiser_subfolder(folder), *DECODER_PARTS]


def decoder_geometry(diffusion_path: Path) -> tuple[int, int, int]:
    """(context width, pooled width, image resolution) of a diffusers decoder folder, read from its configs by the
    denoiser family's adapter (pooled width 0 for Stable Diffusion 1.x/2.x)."""
    family = folder_decoder_family(diffusion_path)
    vae = json.loads((diffusion_path / "vae" / "config.json").read_text())
    vae_scale_factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return family.context_dim, family.pooled_dim, family.config["sample_size"] * vae_scale_factor


# How the two linear projectors start: "normal" is N(0, initializer_range) with zero bias, the transformers
# convention the model's own `_init_weights` follows (this project's default); "pytorch" is `nn.Linear`'s own
# initialisation (Kaiming-uniform weights, uniform bias), which is what the official release ends up with (its
# projector init is a no-op). The dream queries are N(0, initializer_range) in both, as officially.
PROJECTOR_INITS = ("normal", "pytorch")


def _init_new_modules(
    model: DreamLLMForConditionalGeneration, std: float, dtype: torch.dtype, projector_init: str = "normal"
):
    """Materialise and initialise the modules DreamLLM adds (built on the meta device)."""
    if projector_init not in PROJECTOR_INITS:
        raise ValueError(f"projector_init must be one of {PROJECTOR_INITS}, got {projector_init!r}")
    base: DreamLLMModel = model.model
    for module in (base.vision_projector, base.dream_queries, base.condition_projector,
                   *([base.pooled_projector] if hasattr(base, "pooled_projector") else [])):
        module.to_empty(device="cpu")
        if projector_init == "pytorch" and isinstance(module, nn.Linear):
            module.to(torch.float32).reset_parameters()  # initialised in fp32, then cast
            module.to(dtype)
            continue
        module.to(dtype)
        nn.init.normal_(module.weight, std=std)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def assemble(
    llm: str | Path,
    vision: str | Path,
    diffusion: str | Path,
    output: str | Path,
    num_dream_queries: int = 64,
    dtype: str = "auto",
    condition_drop_prob: float = 0.1,
    projector_init: str = "normal",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str | None = None,
) -> Path:
    """Build the folder; it is written to a temporary sibling and moved into place only when complete.

    `vision_feature_select_strategy` defaults to "default" (drop the CLS token) for towers that have one (CLIP) and
    "full" for those without (SigLIP).

    Example:

    ```python
    >>> assemble("Qwen/Qwen2.5-7B-Instruct", "google/siglip-so400m-patch14-384", "sd-2-1-base/", "dreamllm-init")
    ```
    """
    diffusion, output = Path(diffusion), Path(output)
    subfolders = decoder_subfolders(diffusion)  # an error naming what is missing
    if output.exists():
        raise FileExistsError(f"{output} exists; choose a new output folder")

    if vision_feature_select_strategy not in (None, *VISION_FEATURE_SELECT_STRATEGIES):
        raise ValueError(
            f"vision_feature_select_strategy={vision_feature_select_strategy!r} is not one of "
            f"{VISION_FEATURE_SELECT_STRATEGIES}"
        )

    tokenizer = AutoTokenizer.from_pretrained(llm)
    add_special_tokens(tokenizer)
    language_model = AutoModelForCausalLM.from_pretrained(llm, dtype=dtype)
    # Qwen2-style checkpoints hold more embedding rows than tokens: the added tokens take unused rows, no resize.
    if len(tokenizer) > language_model.get_input_embeddings().num_embeddings:
        language_model.resize_token_embeddings(len(tokenizer))
    vision_tower = load_vision_tower(vision, dtype=language_model.dtype)
    image_processor = AutoImageProcessor.from_pretrained(vision)
    condition_hidden_size, pooled_condition_hidden_size, resolution = decoder_geometry(diffusion)
    if vision_feature_select_strategy is None:
        has_cls = VISION_TOWER_CLS_TOKENS[vision_tower.config.model_type] > 0
        vision_feature_select_strategy = "default" if has_cls else "full"

    text_config = language_model.config
    text_config.pad_token_id = tokenizer.pad_token_id
    # The id every document starts with, None for a tokenizer without BOS (Qwen2's config names one its tokenizer
    # never writes): the model's null condition and the processor's documents then agree.
    text_config.bos_token_id = tokenizer.bos_token_id
    text_config._name_or_path = vision_tower.config._name_or_path = ""  # the parts' local folders stay local
    tokenizer.model_max_length = text_config.max_position_embeddings
    config = DreamLLMConfig(
        text_config=text_config.to_dict(),
        vision_config=vision_tower.config.to_dict(),
        num_dream_queries=num_dream_queries,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        condition_hidden_size=condition_hidden_size,
        pooled_condition_hidden_size=pooled_condition_hidden_size,
        condition_drop_prob=condition_drop_prob,
        **{name: tokenizer.convert_tokens_to_ids(token) for name, token in SPECIAL_TOKENS.items()},
    )
    register_auto_classes(config)
    with torch.device("meta"):
        model = DreamLLMForConditionalGeneration(config)
    model.model.language_model = language_model.get_decoder()
    model.lm_head = language_model.get_output_embeddings()  # the embedding matrix itself when the LLM ties them
    model.model.vision_tower = vision_tower.requires_grad_(False)
    _init_new_modules(model, std=getattr(text_config, "initializer_range", 0.02), dtype=language_model.dtype,
                      projector_init=projector_init)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=config.special_token_ids,  # plain `generate` writes text only
    )

    processor = DreamLLMProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        diffusion_image_processor=diffusion_image_processor(resolution),
        chat_template=tokenizer.chat_template or CHAT_TEMPLATE,  # the LLM's own; Vicuna's for Vicuna/LLaMA
        num_image_tokens=config.num_image_tokens,
        num_dream_queries=num_dream_queries,
    )

    with staged_folder(output) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        for name in subfolders:
            shutil.copytree(diffusion / name, staging / name)
        write_pipeline_files(staging)
    return output


def write_pipeline_files(folder: Path) -> None:
    """Make the folder a diffusers pipeline too (`model_index.json` + `pipeline_dreamllm.py`), when available."""
    try:
        from pipeline_dreamllm import write_pipeline_index
    except ImportError:  # the pipeline module is optional for the transformers half of the folder
        return
    write_pipeline_index(folder)


def _layers(text: str) -> int | list[int]:
    """`-2` -> -2, `-2,-1` -> [-2, -1]: the CLI form of `vision_feature_layer`."""
    layers = [int(part) for part in text.split(",")]
    return layers[0] if len(layers) == 1 else layers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", help="causal LM folder or Hub id (with its tokenizer); with --preset, a family: "
                        "llama, qwen2, qwen3 or mistral")
    parser.add_argument("--vision", help="CLIP or SigLIP folder or Hub id (vision model + image processor); with "
                        "--preset, a family: clip or siglip")
    parser.add_argument("--diffusion", help="diffusers decoder folder or Hub id: Stable Diffusion 1.x/2.x or SDXL "
                        "(unet/), SD3/SD3.5 (transformer/), with vae/ and scheduler/")
    parser.add_argument("--decoder", help="with --preset: the decoder family built, sd (default), sdxl or sd3")
    parser.add_argument("--output", required=True)
    parser.add_argument("--preset", choices=["tiny-random"], help="build tiny random components instead")
    parser.add_argument("--num-dream-queries", type=int, default=None, help="64 by default (8 for tiny-random)")
    parser.add_argument("--dtype", default="auto", help="auto (the LLM's), float32, bfloat16 or float16")
    parser.add_argument("--vision-feature-layer", type=_layers, default=-2,
                        help="vision hidden-state layer(s) read, comma-separated to concatenate several (default -2)")
    parser.add_argument("--vision-feature-select-strategy", choices=VISION_FEATURE_SELECT_STRATEGIES, default=None,
                        help="default: drop the CLS token; full: keep all (default: by tower, CLIP default, SigLIP full)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--projector-init", choices=PROJECTOR_INITS, default="normal",
                        help="normal: N(0, 0.02), zero bias (default); pytorch: nn.Linear's own (the official release)")
    args = parser.parse_args(argv)

    vision_kwargs = dict(
        vision_feature_layer=args.vision_feature_layer, vision_feature_select_strategy=args.vision_feature_select_strategy
    )
    if args.preset == "tiny-random":
        from train.tiny_random import DECODER_FAMILIES, LLM_FAMILIES, VISION_FAMILIES, build_tiny_components

        families = dict(llm=args.llm or "llama", vision=args.vision or "clip", decoder=args.decoder or "sd")
        if (families["llm"] not in LLM_FAMILIES or families["vision"] not in VISION_FAMILIES
                or families["decoder"] not in DECODER_FAMILIES):
            parser.error(f"with --preset tiny-random, --llm is one of {LLM_FAMILIES}, --vision one of "
                         f"{VISION_FAMILIES} and --decoder one of {DECODER_FAMILIES}")
        with tempfile.TemporaryDirectory() as scratch:
            parts = build_tiny_components(scratch, seed=args.seed, **families)
            torch.manual_seed(args.seed)
            folder = assemble(
                parts["llm"], parts["vision"], parts["diffusion"], args.output, args.num_dream_queries or 8, args.dtype,
                projector_init=args.projector_init, **vision_kwargs,
            )
    else:
        if not (args.llm and args.vision and args.diffusion):
            parser.error("--llm, --vision and --diffusion are required without --preset")
        if args.decoder:
            parser.error("--decoder picks a tiny-random family; a real decoder's family is read from --diffusion")
        diffusion = Path(args.diffusion)
        if not diffusion.is_dir():  # a Hub id: fetch just the decoder's three subfolders
            from huggingface_hub import snapshot_download

            parts = (*DENOISER_SUBFOLDERS, *DECODER_PARTS)  # not the text encoders
            diffusion = Path(snapshot_download(args.diffusion, allow_patterns=[f"{n}/*" for n in parts]))
        folder = assemble(args.llm, args.vision, diffusion, args.output, args.num_dream_queries or 64, args.dtype,
                          projector_init=args.projector_init, **vision_kwargs)
    print(f"DreamLLM folder written to {folder}")


if __name__ == "__main__":
    main()
