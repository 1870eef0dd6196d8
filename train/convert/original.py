"""Convert an official DreamLLM release (e.g. `RunpeiDong/dreamllm-7b-chat-v1.0`) into this project's folder.

    python -m train.convert --input dreamllm-7b-chat-v1.0 --output dreamllm-7b-chat-hf
    python -m train.convert --input ckpt --output out --dtype fp32 --vision clip-dir --diffusion sd-dir

Input: `pytorch_model.bin` (or its shards + `pytorch_model.bin.index.json`, or the safetensors equivalents; FSDP
full dumps that also hold the plugin tensors work too), `dream_embedding.bin`, `clip_vision_embedding.bin`,
`stable_diffusion_head.bin`, `config.json` and the tokenizer files (`tokenizer.model` needs `sentencepiece` and
`protobuf`). Output: the standard folder of `train.assemble` (transformers remote-code model + processor at the root,
diffusers `unet/`, `vae/`, `scheduler/`), plus a model card.

CLIP ViT-L/14 and SD-2.1-base configs are carried in `train.convert.configs`, so no network is needed;
`--vision` / `--diffusion` name folders whose configs replace them. Tensors stream from memory-mapped files into
size-capped safetensors shards, so the 7B release converts in a few GB of RAM. The output is staged in a hidden
sibling folder and renamed into place only when complete.
"""

import argparse
import json
import logging
from pathlib import Path

import torch
from transformers import GenerationConfig
from transformers.dynamic_module_utils import custom_object_save

from configuration_dreamllm import DreamLLMConfig
from modeling_dreamllm import DreamLLMForConditionalGeneration
from processing_dreamllm import DreamLLMProcessor
from train.assemble import (
    DECODER_SUBFOLDERS,
    decoder_geometry,
    diffusion_image_processor,
    staged_folder,
    write_pipeline_files,
)
from train.convert.card import write_model_card
from train.convert.keys import MODEL, PLUGINS, UNET, VAE, ConversionPlan, check_plan, plan_conversion
from train.convert.release import (
    CARRIED_VISION,
    DIFFUSION_CONFIG_FILES,
    build_config,
    decoder_configs,
    expected_decoder_shapes,
    expected_model_shapes,
    load_tokenizer,
    vision_configs,
)
from train.convert.sources import (
    ConversionError,
    find_main_checkpoint,
    find_plugin_file,
    open_tensor_store,
    read_json,
)
from train.convert.writer import write_safetensors_shards

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def write_transformers_files(staging: Path, config: DreamLLMConfig, processor: DreamLLMProcessor, tokenizer) -> None:
    """config.json, generation_config.json, the code files and the processor, as `save_pretrained` writes them."""
    with torch.device("meta"):
        model = DreamLLMForConditionalGeneration(config)
    custom_object_save(model, staging, config=config)
    config.save_pretrained(staging)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=config.special_token_ids,  # plain `generate` writes text only
    ).save_pretrained(staging)
    processor.save_pretrained(staging)


def convert_original(
    input_dir: str | Path,
    output_dir: str | Path,
    dtype: str = "bf16",
    vision: str | Path | None = None,
    diffusion: str | Path | None = None,
    max_shard_size: str | int = "2GB",
    source: str | None = None,
) -> Path:
    """Convert the official checkpoint in `input_dir` into our folder at `output_dir` (which must not exist).

    Example:
        >>> convert_original("dreamllm-7b-chat-v1.0", "dreamllm-7b-chat-hf", dtype="bf16")
        PosixPath('dreamllm-7b-chat-hf')
    """
    input_dir, output_dir = Path(input_dir), Path(output_dir)
    torch_dtype = DTYPES[dtype]
    if not input_dir.is_dir():
        raise ConversionError(f"{input_dir} is not a folder")
    if output_dir.exists():
        raise FileExistsError(f"{output_dir} exists; choose a new output folder")
    vision, diffusion = (Path(p) if p is not None else None for p in (vision, diffusion))

    # 1. Read and check everything before writing anything.
    release_config = read_json(input_dir / "config.json")
    tokenizer = load_tokenizer(input_dir)
    main_files = find_main_checkpoint(input_dir)
    plugin_files = {plugin.name: find_plugin_file(input_dir, plugin.name) for plugin in PLUGINS}
    plan = plan_conversion(
        open_tensor_store(main_files),
        {name: open_tensor_store([path]) if path else None for name, path in plugin_files.items()},
    )
    vision_config, image_processor = vision_configs(vision)
    decoder = decoder_configs(diffusion)
    config = build_config(plan, release_config, tokenizer, vision_config, torch_dtype)
    if decoder.unet.get("cross_attention_dim") != config.condition_hidden_size:
        raise ConversionError(
            f"the condition projector writes {config.condition_hidden_size} features but the UNet config expects "
            f"cross_attention_dim={decoder.unet.get('cross_attention_dim')}"
        )
    expected = {MODEL: expected_model_shapes(config), **expected_decoder_shapes(decoder)}
    check_plan(plan, expected)
    report(plan)

    # 2. Write into a hidden sibling; move into place only when complete.
    with staged_folder(output_dir) as staging:
        model_tensors = [plan.tensors[MODEL][key] for key in expected[MODEL]]  # module order: layer-local shards
        write_safetensors_shards(staging, model_tensors, torch_dtype, "model", max_shard_size)
        for name in DECODER_SUBFOLDERS:
            (staging / name).mkdir()
            (staging / name / DIFFUSION_CONFIG_FILES[name]).write_text(
                json.dumps(getattr(decoder, name), indent=2) + "\n"
            )
        for component in (UNET, VAE):
            tensors = [plan.tensors[component][key] for key in expected[component]]
            write_safetensors_shards(
                staging / component, tensors, torch_dtype, "diffusion_pytorch_model", max_shard_size
            )

        *_, resolution = decoder_geometry(staging)
        tokenizer.model_max_length = config.text_config.max_position_embeddings
        processor = DreamLLMProcessor(
            image_processor=image_processor,
            tokenizer=tokenizer,
            diffusion_image_processor=diffusion_image_processor(resolution),
            num_image_tokens=config.num_image_tokens,
            num_dream_queries=config.num_dream_queries,
        )
        write_transformers_files(staging, config, processor, tokenizer)
        write_pipeline_files(staging)
        used_files = main_files + [path for path in plugin_files.values() if path]
        write_model_card(
            staging,
            folder_name=output_dir.name,
            source=source or input_dir.name,
            input_files=[input_dir / "config.json", *used_files],
            dtype=str(torch_dtype).removeprefix("torch."),
            config=config,
            vision=CARRIED_VISION if vision is None else f"CLIP vision tower (config from {vision})",
            decoder=decoder.origin,
            special_ids={"bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id, "pad": tokenizer.pad_token_id},
        )
    return output_dir


def report(plan: ConversionPlan) -> None:
    """Log what the conversion keeps, drops and ignores, naming the ignored tensors."""
    counts = {component: len(tensors) for component, tensors in plan.tensors.items()}
    logger.info("converting %s tensors; dropped %d buffers", counts, len(plan.dropped))
    if plan.superseded:
        logger.info("%d plugin tensors of the full dump are superseded by the plugin files", len(plan.superseded))
    if plan.unknown:
        logger.warning("ignoring %d unknown tensors: %s", len(plan.unknown), ", ".join(plan.unknown))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, help="folder of the official release (local)")
    parser.add_argument("--output", required=True, help="new folder to write")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default="bf16", help="weights dtype (default: bf16, as released)"
    )
    parser.add_argument("--vision", help="CLIP folder whose config + preprocessor config replace CLIP ViT-L/14's")
    parser.add_argument(
        "--diffusion", help="Stable Diffusion folder whose unet/vae/scheduler configs replace SD-2.1-base's"
    )
    parser.add_argument("--max-shard-size", default="2GB", help="cap per safetensors shard (default 2GB)")
    parser.add_argument(
        "--source", help="name of the release for the model card, e.g. RunpeiDong/dreamllm-7b-chat-v1.0"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        folder = convert_original(
            args.input, args.output, args.dtype, args.vision, args.diffusion, args.max_shard_size, args.source
        )
    except (ConversionError, FileExistsError) as error:
        parser.exit(1, f"error: {error}\n")
    print(f"DreamLLM folder written to {folder}")


if __name__ == "__main__":
    main()
