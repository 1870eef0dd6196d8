"""DreamLLM on transformers' model API: tuple outputs, inputs_embeds, past_key_values, image features and precomputed
encoder outputs, assisted generation, weight initialisation, the text-only generate contract and bad inputs."""

import json

import pytest
import torch
from transformers import GenerationConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling

from configuration_dreamllm import DreamLLMConfig
from modeling_dreamllm import DreamLLMForConditionalGeneration, DreamLLMModel


@pytest.fixture(scope="module")
def model(tiny_folder):
    return DreamLLMForConditionalGeneration.from_pretrained(tiny_folder).eval()


@pytest.fixture(scope="module")
def document(tiny_processor):
    import numpy as np
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, size=(40, 48, 3), dtype=np.uint8))
    batch = tiny_processor(text="A photo. <image> Now draw it. <dream> done", images=[image, image])
    batch.pop("target_pixel_values")
    return batch


@torch.no_grad()
def test_return_dict_false_gives_the_output_as_a_tuple(model, document):
    as_dict = model(**document)
    as_tuple = model(**document, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.logits)
    base_tuple = model.model(**document, return_dict=False)
    torch.testing.assert_close(base_tuple[0], model.model(**document).last_hidden_state)


@torch.no_grad()
def test_inputs_embeds_fill_image_and_creation_blocks_like_input_ids(model, document):
    from_ids = model(**document)
    ids = document["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    from_embeds = model(inputs_embeds=embeds, pixel_values=document["pixel_values"], attention_mask=document["attention_mask"])
    torch.testing.assert_close(from_embeds.logits, from_ids.logits)
    torch.testing.assert_close(from_embeds.condition_embeds, from_ids.condition_embeds)
    # Embeddings holding no block: the images have nowhere to go, which is an error, never a silent drop.
    plain = model.get_input_embeddings()(torch.tensor([[5, 6, 7]]))
    with pytest.raises(ValueError, match="0 image blocks but 2 images"):
        model(inputs_embeds=plain, pixel_values=document["pixel_values"])


@torch.no_grad()
def test_past_key_values_continues_the_cache(model, tiny_processor):
    ids = tiny_processor(text="a green triangle at the top")["input_ids"]
    full = model(input_ids=ids).logits[:, -1]
    prefix = model(input_ids=ids[:, :-1], use_cache=True)
    step = model(input_ids=ids[:, -1:], past_key_values=prefix.cache, use_cache=True)
    assert step.cache.get_seq_length() == ids.shape[1]
    torch.testing.assert_close(step.logits[:, -1], full, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_assisted_generation_with_images_matches_greedy(model, tiny_processor, rgb_image):
    inputs = tiny_processor(text="<image>\nWhat is this?", images=[rgb_image])
    greedy = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    assisted = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False, assistant_model=model)
    assert torch.equal(assisted, greedy)


@torch.no_grad()
def test_get_image_features_follows_the_llava_api(model, document):
    pixel_values = document["pixel_values"]
    config = model.config
    out = model.get_image_features(pixel_values)
    assert isinstance(out, BaseModelOutputWithPooling)
    assert len(out.pooler_output) == pixel_values.shape[0]
    assert out.pooler_output[0].shape == (config.num_image_tokens, config.text_config.hidden_size)
    assert out.last_hidden_state.shape[-1] == config.vision_config.hidden_size
    assert isinstance(model.get_image_features(pixel_values, return_dict=False), tuple)
    all_states = model.get_image_features(pixel_values, output_hidden_states=True).hidden_states
    assert len(all_states) == config.vision_config.num_hidden_layers + 1 and all(h is not None for h in all_states)
    expected = model.model.vision_projector(all_states[config.vision_feature_layer][:, 1:])
    torch.testing.assert_close(torch.stack(out.pooler_output), expected)
    forward = model(**document)
    assert forward.image_outputs is not None and len(forward.image_outputs.pooler_output) == pixel_values.shape[0]
    with pytest.raises(ValueError, match="not both"):
        model(**document, mm_encoder_outputs={"image": out})


def test_missing_weights_get_each_library_models_own_initialisation(tiny_folder):
    config = DreamLLMConfig.from_pretrained(tiny_folder)
    vision = config.vision_config
    # CLIP's scheme (modeling_clip.CLIPPreTrainedModel._init_weights), far from the generic std 0.02.
    q_std = vision.hidden_size**-0.5 * (2 * vision.num_hidden_layers) ** -0.5 * vision.initializer_factor
    fc1_std = (2 * vision.hidden_size) ** -0.5 * vision.initializer_factor
    torch.manual_seed(0)
    built = DreamLLMModel(config)
    loaded = DreamLLMModel.from_pretrained(None, config=config, state_dict={})
    for model in (built, loaded):
        layer = model.vision_tower.encoder.layers[0]
        assert layer.self_attn.q_proj.weight.std().item() == pytest.approx(q_std, rel=0.25)
        assert layer.mlp.fc1.weight.std().item() == pytest.approx(fc1_std, rel=0.25)


@torch.no_grad()
def test_plain_generate_writes_text_only_and_saves_the_contract(model, tiny_processor, rgb_image, tmp_path):
    config = model.config
    inputs = tiny_processor(text="<image>\nWhat is this?", images=[rgb_image])
    forced = {(config.image_start_token_id,): 100.0, (config.dream_start_token_id,): 100.0}
    out = model.generate(**inputs, max_new_tokens=4, do_sample=False, sequence_bias=forced)
    new_tokens = set(out[0, inputs["input_ids"].shape[1] :].tolist())
    assert not new_tokens & set(config.special_token_ids)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "generation_config.json").read_text())
    assert sorted(saved["suppress_tokens"]) == sorted(config.special_token_ids)
    # A folder saved before the contract (no suppress_tokens) gets it when loaded.
    GenerationConfig(bos_token_id=1, eos_token_id=2).save_pretrained(tmp_path)
    reloaded = DreamLLMForConditionalGeneration.from_pretrained(tmp_path)
    assert sorted(reloaded.generation_config.suppress_tokens) == sorted(config.special_token_ids)


@torch.no_grad()
def test_bad_model_inputs_are_clear_errors(model, document, tiny_processor):
    config = model.config
    with pytest.raises(TypeError, match="floating-point pixels.*uint8"):
        model(input_ids=document["input_ids"], pixel_values=document["pixel_values"].to(torch.uint8))
    with pytest.raises(ValueError, match=r"attention_mask has shape \(1, 3\)"):
        model(input_ids=document["input_ids"], pixel_values=document["pixel_values"], attention_mask=torch.ones(1, 3))
    text = tiny_processor(text="draw")["input_ids"][0].tolist()
    patch, start, end = config.image_patch_token_id, config.dream_start_token_id, config.dream_end_token_id
    q = config.num_dream_queries
    no_slots = text + [start, end]
    half_blocks = text + [start] + [patch] * (q // 2) + [end] + [start] + [patch] * (q - q // 2) + [end]
    for ids in (no_slots, half_blocks):
        with pytest.raises(ValueError, match=f"each creation block needs exactly {q}"):
            model(input_ids=torch.tensor([ids]))


def test_malformed_token_and_pixel_inputs_name_the_input(model, document):
    ids, pixels = document["input_ids"], document["pixel_values"]
    cases = [
        (dict(input_ids=ids[0], pixel_values=pixels), ValueError, r"input_ids must have shape \(batch, sequence\)"),
        (dict(input_ids=ids[:0], pixel_values=pixels), ValueError, r"input_ids is empty \(shape \(0,"),
        (dict(input_ids=ids[:, :0]), ValueError, r"input_ids is empty \(shape \(1, 0\)\)"),
        (dict(input_ids=ids.float(), pixel_values=pixels), TypeError, "input_ids must hold integer token ids"),
        (dict(input_ids=ids + 10**6, pixel_values=pixels), ValueError, "ids outside the vocabulary"),
        (dict(input_ids=-ids, pixel_values=pixels), ValueError, "ids outside the vocabulary"),
        (dict(input_ids=ids, pixel_values=pixels[:, :1]), ValueError, "pixel_values has 1 channels but the vision"),
        (dict(input_ids=ids, pixel_values=pixels[:0]), ValueError, "pixel_values is empty"),
        (dict(inputs_embeds=torch.zeros(4, 8)), ValueError, r"inputs_embeds must have shape \(batch, sequence, hidd"),
        (dict(input_ids=ids, pixel_values=pixels, labels=ids[:, :3]), ValueError, r"labels has shape \(1, 3\)"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            model(**kwargs)
    with pytest.raises(ValueError, match=r"input_ids must have shape \(batch, sequence\)"):
        model.generate(ids[0], pixel_values=pixels, max_new_tokens=1)
    with pytest.raises(ValueError, match="input_ids is empty"):
        model.generate(input_ids=ids[:, :0], max_new_tokens=1)


@pytest.mark.parametrize("damage", ["truncated", "overwritten header"])
def test_a_damaged_weights_file_is_named(tiny_folder, tmp_path, damage):
    import shutil

    from transformers import AutoModelForCausalLM

    folder = shutil.copytree(tiny_folder, tmp_path / "damaged")
    weights = folder / "model.safetensors"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        weights.write_bytes(b"\xff" * 16 + weights.read_bytes()[16:])
    for load in (DreamLLMForConditionalGeneration.from_pretrained,
                 lambda path: AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)):
        with pytest.raises(OSError, match=f"{weights} is damaged or truncated"):
            load(folder)
