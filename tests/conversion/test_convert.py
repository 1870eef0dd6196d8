"""`python -m train.convert`: an official-layout checkpoint converts into a folder that loads through the Auto classes
and computes exactly what the original tensors compute."""

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from official_checkpoint import LLAMA, NUM_DREAM_QUERIES, VISION, write_official_checkpoint
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoProcessor, CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaModel

from train.convert import original as converter
from train.convert import release as release_configs
from train.convert.original import convert_original, main
from train.convert.sources import ConversionError

REPO_ROOT = Path(__file__).resolve().parents[2]


def convert(ckpt, output: Path, **kwargs) -> Path:
    return convert_original(ckpt.release, output, vision=ckpt.vision, diffusion=ckpt.diffusion, **kwargs)


def folder_tensors(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a converted folder, keyed `<subfolder>/<name>`."""
    tensors = {}
    for path in sorted(folder.rglob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            assert handle.metadata() == {"format": "pt"}
            prefix = "" if path.parent == folder else f"{path.parent.name}/"
            tensors.update({prefix + key: handle.get_tensor(key) for key in handle.keys()})
    return tensors


def no_leftovers(output: Path) -> bool:
    """Neither the output folder nor a hidden staging sibling exists."""
    return not output.exists() and not list(output.parent.glob(f".{output.name}.*"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_official_checkpoint(tmp_path_factory.mktemp("official"), layout="plugin_files")


@pytest.fixture(scope="module")
def converted(ckpt, tmp_path_factory) -> Path:
    """The release converted to fp32, so that comparisons with the bf16 originals are exact."""
    return convert(ckpt, tmp_path_factory.mktemp("converted") / "dreamllm-fp32", dtype="fp32")


@pytest.fixture(scope="module")
def model(converted):
    return AutoModelForCausalLM.from_pretrained(converted, trust_remote_code=True).eval()


@pytest.fixture(scope="module")
def processor(converted):
    return AutoProcessor.from_pretrained(converted, trust_remote_code=True)


class OfficialReference:
    """The official DreamLLM forward, written directly on the release's files with plain transformers modules."""

    def __init__(self, release: Path, scratch: Path):
        load = lambda name: torch.load(release / name, map_location="cpu", weights_only=True)  # noqa: E731
        llm = load("pytorch_model.bin")
        config = json.loads((release / "config.json").read_text())
        llama_config = LlamaConfig(
            vocab_size=llm["lm_head.weight"].shape[0], **{k: config[k] for k in LLAMA if k != "rope_scaling"}
        )
        self.llama = LlamaModel(llama_config).eval()
        self.llama.load_state_dict(
            {
                k.removeprefix("model."): v.float()
                for k, v in llm.items()
                if k.startswith("model.") and "inv_freq" not in k
            }
        )
        self.lm_head = llm["lm_head.weight"].float()
        self.dream_queries = load("dream_embedding.bin")["dream_queries"].float()[0]
        self.condition_projector = load("stable_diffusion_head.bin")["projector.projector.weight"].float()
        clip = load("clip_vision_embedding.bin")
        self.vision_weight, self.vision_bias = (
            clip["projector.projector.weight"].float(),
            clip["projector.projector.bias"].float(),
        )
        # CLIPVisionModel.from_pretrained itself reads the transformers-4 names (`vision_model.*`).
        CLIPVisionConfig(**VISION).save_pretrained(scratch)
        vision_state = {
            k.removeprefix("clip_vision_model."): v.float().contiguous()
            for k, v in clip.items()
            if k.startswith("clip_vision_model.") and v.is_floating_point()
        }
        save_file(vision_state, str(scratch / "model.safetensors"))
        self.clip = CLIPVisionModel.from_pretrained(scratch, dtype=torch.float32).eval()

    @torch.no_grad()
    def forward(
        self, ids: list[int], query_start: int | None = None, image_start: int | None = None, pixel_values=None
    ):
        """(final-norm hidden states, logits); dream queries fill `query_start:+Q`, projected CLIP penultimate
        features (CLS dropped) fill `image_start:+N`."""
        embeds = self.llama.embed_tokens(torch.tensor([ids]))
        if query_start is not None:
            embeds[0, query_start : query_start + NUM_DREAM_QUERIES] = self.dream_queries
        if image_start is not None:
            features = self.clip(pixel_values, output_hidden_states=True).hidden_states[-2][0, 1:]
            features = features @ self.vision_weight.T + self.vision_bias
            embeds[0, image_start : image_start + features.shape[0]] = features
        hidden = self.llama(inputs_embeds=embeds).last_hidden_state
        return hidden, hidden @ self.lm_head.T


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    return OfficialReference(ckpt.release, tmp_path_factory.mktemp("reference-clip"))


def test_folder_has_our_layout_and_the_tokenizer_ids(converted, ckpt):
    for name in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "modeling_dreamllm.py",
        "configuration_dreamllm.py",
        "processing_dreamllm.py",
        "processor_config.json",
        "tokenizer.json",
        "README.md",
        "unet/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]:
        assert (converted / name).is_file(), name
    config = json.loads((converted / "config.json").read_text())
    added = ckpt.added_tokens  # the release's shuffled order, read back from its files
    assert (
        config["image_start_token_id"] == added["<im_start>"]
        and config["dream_start_token_id"] == added["<dream_start>"]
    )
    assert (
        config["image_patch_token_id"] == added["<im_patch>"] and config["dream_end_token_id"] == added["<dream_end>"]
    )
    text = config["text_config"]
    assert (text["bos_token_id"], text["eos_token_id"], text["pad_token_id"]) == (1, 2, added["[PAD]"])
    assert text["vocab_size"] == added["[PAD]"] + 8 and config["num_dream_queries"] == NUM_DREAM_QUERIES
    generation = json.loads((converted / "generation_config.json").read_text())
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        1,
        2,
        added["[PAD]"],
    )
    processor_config = json.loads((converted / "processor_config.json").read_text())
    assert (processor_config["num_image_tokens"], processor_config["num_dream_queries"]) == (16, NUM_DREAM_QUERIES)
    card = (converted / "README.md").read_text()
    assert "stable_diffusion_head.bin" in card and "bos 0 / eos 1 / pad -1" in card
    from huggingface_hub import ModelCard

    data = ModelCard.load(converted / "README.md").data  # the library reads back what it wrote
    assert (data.library_name, data.pipeline_tag, data.license) == ("transformers", "image-text-to-text", "other")
    assert {"dreamllm", "custom_code"} <= set(data.tags)


def test_card_names_a_hub_release_as_its_base_model():
    from train.convert.card import card_data

    assert card_data("RunpeiDong/dreamllm-7b-chat-v1.0").base_model == "RunpeiDong/dreamllm-7b-chat-v1.0"
    assert card_data("release").base_model is None  # a local folder name is no Hub id


def test_every_tensor_is_the_original_value(converted, ckpt):
    tensors = folder_tensors(converted)
    expected = {
        f"model.language_model.{k[len('model.') :]}": v
        for k, v in ckpt.llm.items()
        if k.startswith("model.") and "inv_freq" not in k
    }
    expected["lm_head.weight"] = ckpt.llm["lm_head.weight"]
    expected["model.dream_queries.weight"] = ckpt.plugins["dream_embedding"]["dream_queries"][0]
    for key, value in ckpt.plugins["clip_vision_embedding"].items():
        if key.startswith("clip_vision_model.vision_model.") and value.is_floating_point():
            expected["model.vision_tower." + key.removeprefix("clip_vision_model.vision_model.")] = value
    expected["model.vision_projector.weight"] = ckpt.plugins["clip_vision_embedding"]["projector.projector.weight"]
    expected["model.vision_projector.bias"] = ckpt.plugins["clip_vision_embedding"]["projector.projector.bias"]
    for key, value in ckpt.plugins["stable_diffusion_head"].items():
        name = "model.condition_projector.weight" if key == "projector.projector.weight" else key.replace(".", "/", 1)
        expected[name] = value
    assert sorted(tensors) == sorted(expected)
    for key, value in expected.items():
        assert tensors[key].dtype == torch.float32 and torch.equal(tensors[key], value.float()), key


def test_loads_through_auto_classes_with_every_weight_from_the_file(converted, model, processor):
    state = model.state_dict()
    tensors = {k: v for k, v in folder_tensors(converted).items() if "/" not in k}
    assert sorted(state) == sorted(tensors)  # no missing, no unexpected keys
    assert all(torch.equal(state[key], tensors[key]) for key in tensors)
    assert type(model).__name__ == "DreamLLMForConditionalGeneration" and model.dtype == torch.float32
    assert type(processor).__name__ == "DreamLLMProcessor"
    from diffusers import AutoencoderKL, UNet2DConditionModel

    assert UNet2DConditionModel.from_pretrained(converted, subfolder="unet").config.cross_attention_dim == 16
    assert AutoencoderKL.from_pretrained(converted, subfolder="vae").config.latent_channels == 4


def test_condition_embeds_and_logits_match_the_official_forward(model, processor, reference, ckpt):
    tokenizer = Tokenizer.from_file(str(ckpt.release / "tokenizer.json"))  # the raw base tokenizer
    added = ckpt.added_tokens
    prompt = tokenizer.encode("a red circle").ids
    assert prompt[0] == 1  # <s>
    ids = prompt + [added["<dream_start>"]] + [added["<im_patch>"]] * NUM_DREAM_QUERIES + [added["<dream_end>"]]
    assert processor(text="a red circle<dream>")["input_ids"][0].tolist() == ids
    hidden, logits = reference.forward(ids, query_start=len(prompt) + 1)
    queries = hidden[0, len(prompt) + 1 : len(prompt) + 1 + NUM_DREAM_QUERIES]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    condition = queries @ reference.condition_projector.T
    print(
        f"condition_embeds max|diff| {(out.condition_embeds[0] - condition).abs().max():.3g}, "
        f"logits max|diff| {(out.logits - logits).abs().max():.3g}"
    )
    torch.testing.assert_close(out.condition_embeds[0], condition, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)
    assert condition.abs().mean() > 0.1  # the comparison is not between near-zero tensors


def test_image_features_path_matches_the_official_forward(model, reference, ckpt):
    tokenizer = Tokenizer.from_file(str(ckpt.release / "tokenizer.json"))
    added, num_patches = ckpt.added_tokens, (VISION["image_size"] // VISION["patch_size"]) ** 2
    question = tokenizer.encode("What is this?", add_special_tokens=False).ids
    ids = [1, added["<im_start>"]] + [added["<im_patch>"]] * num_patches + [added["<im_end>"]] + question
    pixel_values = torch.randn(
        1, 3, VISION["image_size"], VISION["image_size"], generator=torch.Generator().manual_seed(0)
    )
    _, logits = reference.forward(ids, image_start=2, pixel_values=pixel_values)
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), pixel_values=pixel_values)
    print(f"image-path logits max|diff| {(out.logits - logits).abs().max():.3g}")
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ["full_dump", "sharded_bin", "safetensors"])
def test_other_checkpoint_layouts_convert_identically(layout, converted, tmp_path):
    other = write_official_checkpoint(tmp_path / "ckpt", layout=layout)
    result = folder_tensors(convert(other, tmp_path / "out", dtype="fp32"))
    reference = folder_tensors(converted)
    assert sorted(result) == sorted(reference)
    assert all(torch.equal(result[key], reference[key]) for key in reference)


def test_plugin_files_win_over_the_plugin_tensors_of_a_full_dump(ckpt, tmp_path):
    full = write_official_checkpoint(tmp_path / "ckpt", layout="full_dump")
    queries = ckpt.plugins["dream_embedding"]["dream_queries"] * 2
    torch.save({"dream_queries": queries}, full.release / "dream_embedding.bin")
    result = folder_tensors(convert(full, tmp_path / "out", dtype="fp32"))
    assert torch.equal(result["model.dream_queries.weight"], queries[0].float())


def test_cli_default_dtype_is_bf16_and_shards_load(ckpt, tmp_path, capsys, monkeypatch):
    from train.convert import writer

    splits, split = [], writer.split_torch_state_dict_into_shards
    monkeypatch.setattr(writer, "split_torch_state_dict_into_shards", lambda *a, **k: splits.append(split(*a, **k))
                        or splits[-1])
    output = tmp_path / "bf16"
    main(
        [
            "--input",
            str(ckpt.release),
            "--output",
            str(output),
            "--vision",
            str(ckpt.vision),
            "--diffusion",
            str(ckpt.diffusion),
            "--max-shard-size",
            "40KB",
        ]
    )
    assert "written to" in capsys.readouterr().out
    assert (
        len(list(output.glob("model-*-of-*.safetensors"))) > 1 and (output / "model.safetensors.index.json").is_file()
    )
    assert (output / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    # the shards are huggingface_hub's split, file for file (model, unet, vae)
    index = json.loads((output / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == splits[0].tensor_to_filename and len(splits) == 3
    assert {t.dtype for t in folder_tensors(output).values()} == {torch.bfloat16}
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(output, trust_remote_code=True)
    assert loaded.dtype == torch.bfloat16
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(output, subfolder="unet", torch_dtype=torch.bfloat16)  # sharded
    torch.testing.assert_close(unet.conv_in.weight, folder_tensors(output)["unet/conv_in.weight"])


def test_fp16_is_respected(ckpt, tmp_path):
    output = convert(ckpt, tmp_path / "fp16", dtype="fp16")
    assert {t.dtype for t in folder_tensors(output).values()} == {torch.float16}


def _rewrite(path: Path, edit):
    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, path)


@pytest.mark.parametrize(
    "file, edit, messages",
    [
        (
            "pytorch_model.bin",
            lambda s: s.pop("model.layers.1.mlp.up_proj.weight"),
            [
                "missing required tensor",
                "model.language_model.layers.1.mlp.up_proj.weight",
                "model.layers.1.mlp.up_proj.weight",
            ],
        ),
        ("stable_diffusion_head.bin", lambda s: s.pop("unet.conv_in.weight"), ["unet", "conv_in.weight"]),
        (
            "clip_vision_embedding.bin",
            lambda s: s.update({"projector.projector.bias": torch.zeros(7)}),
            ["shape mismatch", "model.vision_projector.bias", "(7,)", "(32,)"],
        ),
        ("dream_embedding.bin", lambda s: s.clear(), ["model.dream_queries.weight", "dream_queries"]),
    ],
)
def test_tampered_checkpoint_names_the_key_and_writes_nothing(ckpt, tmp_path, file, edit, messages):
    release = shutil.copytree(ckpt.release, tmp_path / "release")
    _rewrite(release / file, edit)
    output = tmp_path / "out"
    with pytest.raises(ConversionError) as error:
        convert_original(release, output, vision=ckpt.vision, diffusion=ckpt.diffusion)
    for message in messages:
        assert message in str(error.value)
    assert no_leftovers(output)


@pytest.mark.parametrize("file", ["pytorch_model.bin", "stable_diffusion_head.bin"])
def test_truncated_file_gives_a_clear_error_and_no_output(ckpt, tmp_path, file):
    release = shutil.copytree(ckpt.release, tmp_path / "release")
    data = (release / file).read_bytes()
    (release / file).write_bytes(data[: len(data) // 2])
    output = tmp_path / "out"
    with pytest.raises(ConversionError, match=rf"cannot read .*{file}.*truncated"):
        convert_original(release, output, vision=ckpt.vision, diffusion=ckpt.diffusion)
    assert no_leftovers(output)


def test_failure_while_writing_removes_the_staging_folder(ckpt, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(converter, "write_model_card", fail)
    output = tmp_path / "out"
    with pytest.raises(OSError, match="disk full"):
        convert(ckpt, output)
    assert no_leftovers(output)


def test_unknown_tensors_are_reported_by_name(ckpt, tmp_path, caplog):
    release = shutil.copytree(ckpt.release, tmp_path / "release")
    _rewrite(release / "dream_embedding.bin", lambda s: s.update({"extra_scale": torch.ones(1)}))
    with caplog.at_level(logging.WARNING, logger="train.convert.original"):
        convert_original(release, tmp_path / "out", vision=ckpt.vision, diffusion=ckpt.diffusion)
    assert "dream_embedding.bin: extra_scale" in caplog.text


def test_release_tokenizer_model_converts_to_an_equivalent_tokenizer_json(tmp_path):
    sentencepiece = pytest.importorskip("sentencepiece")
    pytest.importorskip("google.protobuf")
    ckpt = write_official_checkpoint(tmp_path / "ckpt", sentencepiece=True)
    assert not (ckpt.release / "tokenizer.json").exists()
    output = convert(ckpt, tmp_path / "out")
    processor = AutoProcessor.from_pretrained(output, trust_remote_code=True)
    text = "What is this? It is a photo of a cat 0123"
    reference = sentencepiece.SentencePieceProcessor(model_file=str(ckpt.release / "tokenizer.model")).encode(text)
    assert processor(text=text)["input_ids"][0].tolist() == [1, *reference]
    assert processor.tokenizer.convert_tokens_to_ids("<dream_start>") == ckpt.added_tokens["<dream_start>"]
    assert (output / "tokenizer.json").is_file()


def test_existing_output_is_refused(ckpt, converted):
    with pytest.raises(FileExistsError):
        convert(ckpt, converted)


def test_carried_configs_are_clip_l14_and_sd21_base():
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

    vision_config, image_processor = release_configs.vision_configs(None)
    decoder = release_configs.decoder_configs(None)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(decoder.unet)
        vae = AutoencoderKL.from_config(decoder.vae)
        clip = CLIPVisionModel(vision_config)
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    assert (count(unet), count(vae), count(clip)) == (865_910_724, 83_653_863, 303_179_776)
    assert unet.config.cross_attention_dim == 1024 and unet.config.sample_size * 8 == 512
    assert vae.config.scaling_factor == 0.18215
    scheduler = PNDMScheduler.from_config(decoder.scheduler)
    assert (scheduler.config.beta_schedule, scheduler.config.prediction_type, scheduler.config.steps_offset) == (
        "scaled_linear",
        "epsilon",
        1,
    )
    assert image_processor.crop_size["height"] == 224 and image_processor.size["shortest_edge"] == 224
    assert (vision_config.image_size // vision_config.patch_size) ** 2 == 256


@pytest.mark.skipif(
    not (REPO_ROOT / "pipeline_dreamllm.py").is_file(), reason="pipeline_dreamllm.py not in this checkout"
)
def test_pipeline_runs_two_steps(converted):
    from pipeline_dreamllm import DreamLLMPipeline

    pipe = DreamLLMPipeline.from_pretrained(converted)
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images
    assert image.shape[0] == 1 and torch.isfinite(torch.as_tensor(image)).all()
