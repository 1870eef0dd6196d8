"""DreamLLM model: block filling, condition_embeds, gradients, generation with the cache, save/load."""

import pytest
import torch

from configuration_dreamllm import DreamLLMConfig
from modeling_dreamllm import DreamLLMForConditionalGeneration
from train.data.labels import encode_documents


@pytest.fixture
def model(tiny_folder):
    return DreamLLMForConditionalGeneration.from_pretrained(tiny_folder)


def count_calls(module: torch.nn.Module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def document(processor, image):
    return encode_documents(processor, "A photo. <image> Now draw it. <dream>", images=[image, image])


def test_document_gives_loss_and_one_condition(model, tiny_processor, rgb_image):
    batch = document(tiny_processor, rgb_image)
    batch.pop("target_pixel_values")
    out = model(**batch)
    config = model.config
    assert torch.isfinite(out.loss)
    assert out.condition_embeds.shape == (1, config.num_dream_queries, config.condition_hidden_size)
    assert out.logits.shape == (*batch["input_ids"].shape, config.text_config.vocab_size)


def test_condition_embeds_are_projected_final_hidden_states_at_query_slots(model, tiny_processor, rgb_image):
    batch = document(tiny_processor, rgb_image)
    batch.pop("target_pixel_values")
    batch.pop("labels")
    out = model(**batch, output_hidden_states=True)
    ids = batch["input_ids"][0]
    start = (ids == model.config.dream_start_token_id).nonzero().item()
    slots = slice(start + 1, start + 1 + model.config.num_dream_queries)
    final_states = out.hidden_states[-1][0, slots]
    expected = model.model.condition_projector(final_states)
    torch.testing.assert_close(out.condition_embeds[0], expected)


def test_slots_are_filled_with_clip_features_and_dream_queries(model, tiny_processor, rgb_image):
    batch = document(tiny_processor, rgb_image)
    seen = {}
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"])
    ids, embeds, config = batch["input_ids"][0], seen["embeds"][0], model.config
    features = model.get_image_features(batch["pixel_values"]).pooler_output
    first_image = (ids == config.image_start_token_id).nonzero()[0].item() + 1
    torch.testing.assert_close(embeds[first_image : first_image + config.num_image_tokens], features[0])
    dream = (ids == config.dream_start_token_id).nonzero().item() + 1
    torch.testing.assert_close(embeds[dream : dream + config.num_dream_queries], model.model.dream_queries.weight)
    second_image = (ids == config.image_start_token_id).nonzero()[1].item() + 1  # the created image read back
    torch.testing.assert_close(embeds[second_image : second_image + config.num_image_tokens], features[1])


def test_batch_conditions_come_in_document_order(model, tiny_processor):
    texts = ["a red circle<dream>", "two<dream> and three<dream>"]
    batch = tiny_processor(text=texts, padding_side="left")
    out = model(**batch)
    assert out.condition_embeds.shape[0] == 3
    for index, text in enumerate(["a red circle<dream>"]):
        single = model(**tiny_processor(text=text)).condition_embeds
        torch.testing.assert_close(out.condition_embeds[index], single[0], atol=1e-5, rtol=1e-4)


def test_no_images_means_no_clip_forward_and_no_condition(model, tiny_processor):
    calls = count_calls(model.model.vision_tower)
    out = model(**encode_documents(tiny_processor, "only text here"))
    assert calls == [] and out.condition_embeds is None and torch.isfinite(out.loss)


def test_gradients_reach_queries_projector_and_llm_but_not_a_frozen_clip(model, tiny_processor, rgb_image):
    model.train()
    model.model.vision_tower.requires_grad_(False)  # as training freezes it (train.stages.set_stage_trainable)
    batch = document(tiny_processor, rgb_image)
    batch.pop("target_pixel_values")
    out = model(**batch)
    (out.condition_embeds.square().mean() + out.loss).backward()
    base = model.model
    for name, param in [
        ("dream_queries", base.dream_queries.weight),
        ("condition_projector", base.condition_projector.weight),
        ("vision_projector", base.vision_projector.weight),
        ("llm layer", base.language_model.layers[0].self_attn.q_proj.weight),
    ]:
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(not p.requires_grad and p.grad is None for p in base.vision_tower.parameters())


def test_condition_loss_alone_reaches_llm_and_queries(model, tiny_processor):
    out = model(**tiny_processor(text="a blue square<dream>"))
    out.condition_embeds.sum().backward()
    assert model.model.dream_queries.weight.grad.abs().sum() > 0
    assert model.model.language_model.layers[-1].mlp.down_proj.weight.grad.abs().sum() > 0
    assert model.lm_head.weight.grad is None


def test_null_condition_is_the_empty_prompt_creation_block(model, tiny_processor):
    null = model.get_null_condition()
    from_processor = model(**tiny_processor(text="<dream>")).condition_embeds
    assert null.shape == (1, model.config.num_dream_queries, model.config.condition_hidden_size)
    torch.testing.assert_close(null, from_processor)
    assert null.requires_grad


def test_precomputed_image_features_match_pixels(model, tiny_processor, rgb_image):
    batch = tiny_processor(text="<image> what is it?", images=[rgb_image])
    from_pixels = model(**batch)
    encoded = model.get_image_features(batch.pop("pixel_values"))
    precomputed = model(**batch, mm_encoder_outputs={"image": encoded})
    torch.testing.assert_close(precomputed.logits, from_pixels.logits)
    torch.testing.assert_close(from_pixels.image_outputs.pooler_output[0], encoded.pooler_output[0])


def test_logits_to_keep(model, tiny_processor):
    batch = tiny_processor(text="a green triangle at the top")
    full = model(**batch).logits
    last = model(**batch, logits_to_keep=1).logits
    assert last.shape[1] == 1
    torch.testing.assert_close(last[:, -1], full[:, -1])


def test_generate_encodes_images_once_and_reuses_the_cache(model, tiny_processor, rgb_image):
    model.eval()
    clip_calls = count_calls(model.model.vision_tower)
    llm_lengths = []
    model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: llm_lengths.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True
    )
    batch = tiny_processor(text="<image>\nWhat is this?", images=[rgb_image])
    generated = model.generate(**batch, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    prompt_length = batch["input_ids"].shape[1]
    assert generated.shape == (1, prompt_length + 6)
    assert clip_calls == [1]
    assert llm_lengths == [prompt_length] + [1] * 5  # prefill, then one new token per step


def test_greedy_generate_matches_uncached_argmax(model, tiny_processor, rgb_image):
    model.eval()
    batch = tiny_processor(text="<image>\nDescribe", images=[rgb_image])
    generated = model.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    ids = batch["input_ids"]
    for _ in range(3):
        next_id = model(input_ids=ids, pixel_values=batch["pixel_values"]).logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    assert torch.equal(generated, ids)


@pytest.mark.parametrize(
    "edit, message",
    [
        ("drop_slot", "each image block needs exactly"),
        ("stray_patch", "stand outside any"),
        ("dream_overflow", "each creation block needs exactly"),
    ],
)
def test_malformed_blocks_raise(model, tiny_processor, rgb_image, edit, message):
    config = model.config
    batch = tiny_processor(text="<image> look<dream>", images=[rgb_image])
    ids = batch["input_ids"][0].tolist()
    if edit == "drop_slot":
        ids.remove(config.image_patch_token_id)
    elif edit == "stray_patch":
        ids.insert(1, config.image_patch_token_id)
    else:
        ids.insert(len(ids) - 1, config.image_patch_token_id)
    with pytest.raises(ValueError, match=message):
        model(input_ids=torch.tensor([ids]), pixel_values=batch["pixel_values"])


def test_image_count_mismatch_raises(model, tiny_processor, rgb_image):
    batch = tiny_processor(text="<image> and <image>", images=[rgb_image, rgb_image])
    with pytest.raises(ValueError, match="2 image blocks but 1 images"):
        model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"][:1])


def test_save_load_round_trip_keeps_outputs_and_leaves_requires_grad_to_transformers(model, tiny_processor, tmp_path):
    model.save_pretrained(tmp_path)
    loaded, info = DreamLLMForConditionalGeneration.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    batch = tiny_processor(text="a yellow circle<dream>")
    torch.testing.assert_close(loaded(**batch).condition_embeds, model(**batch).condition_embeds)
    # Loading decides nothing about training: every parameter is trainable, as transformers loads any model.
    assert all(p.requires_grad for p in loaded.parameters())


def test_7b_configuration_parameter_counts_on_meta_device():
    config = DreamLLMConfig()
    with torch.device("meta"):
        model = DreamLLMForConditionalGeneration(config)
    count = lambda module: sum(p.numel() for p in module.parameters())
    base = model.model
    vicuna_7b = 6_738_415_616  # LLaMA-7B with its 32000-token vocabulary, untied head
    assert count(base.language_model) + count(model.lm_head) == vicuna_7b + 2 * 8 * 4096  # 8 new rows, embed + head
    assert count(base.vision_tower) == 303_179_776  # CLIP ViT-L/14 vision tower
    assert count(base.vision_projector) == 1024 * 4096 + 4096
    assert tuple(base.dream_queries.weight.shape) == (64, 4096)
    assert tuple(base.condition_projector.weight.shape) == (1024, 4096) and base.condition_projector.bias is None
    assert model.lm_head.weight is not base.language_model.embed_tokens.weight


def test_left_padded_batch_generates_like_single_prompts(model, tiny_processor, rgb_image):
    model.eval()
    texts = ["<image>\nWhat is it?", "<image>\nA much longer question about this picture?"]
    batch = tiny_processor(text=texts, images=[[rgb_image], [rgb_image]])
    together = model.generate(**batch, max_new_tokens=4, min_new_tokens=4, do_sample=False)[:, -4:]
    for row, text in enumerate(texts):
        single = tiny_processor(text=text, images=[rgb_image])
        alone = model.generate(**single, max_new_tokens=4, min_new_tokens=4, do_sample=False)[:, -4:]
        assert torch.equal(together[row], alone[0])
