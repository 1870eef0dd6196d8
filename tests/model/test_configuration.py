"""DreamLLMConfig: defaults, save/load round trip, and clear errors for inconsistent settings."""

import pytest
from huggingface_hub.errors import StrictDataclassClassValidationError

from configuration_dreamllm import RELEASED_TOKEN_IDS, DreamLLMConfig

TINY_TEXT = dict(
    model_type="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    intermediate_size=64, vocab_size=120,
)
TINY_VISION = dict(hidden_size=16, num_attention_heads=2, intermediate_size=32, num_hidden_layers=2, image_size=32, patch_size=8)
TINY_IDS = dict(
    image_token_id=100, image_patch_token_id=101, image_start_token_id=102, image_end_token_id=103,
    dream_token_id=104, dream_start_token_id=105, dream_end_token_id=106,
)


def tiny_config(**overrides) -> DreamLLMConfig:
    kwargs = dict(text_config=TINY_TEXT, vision_config=TINY_VISION, num_dream_queries=4, condition_hidden_size=8, **TINY_IDS)
    kwargs.update(overrides)
    return DreamLLMConfig(**kwargs)


def test_defaults_are_the_released_7b_configuration():
    config = DreamLLMConfig()
    assert config.model_type == "dreamllm"
    assert (config.text_config.hidden_size, config.text_config.num_hidden_layers, config.text_config.vocab_size) == (4096, 32, 32008)
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (1024, 24)
    assert config.num_image_tokens == 256 and config.num_dream_queries == 64
    assert config.vision_feature_layer == -2 and config.condition_hidden_size == 1024
    assert (config.lm_loss_weight, config.diffusion_loss_weight) == (1.0, 10.0)
    assert config.dream_start_token_id == RELEASED_TOKEN_IDS["dream_start_token_id"] == 32003
    assert config.text_config.bos_token_id == 1 and config.text_config.eos_token_id == 2


def test_save_load_round_trip(tmp_path):
    config = tiny_config(condition_drop_prob=0.25, diffusion_loss_weight=5.0)
    config.save_pretrained(tmp_path)
    loaded = DreamLLMConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert type(loaded.text_config).__name__ == "LlamaConfig"
    assert type(loaded.vision_config).__name__ == "CLIPVisionConfig"
    assert loaded.num_image_tokens == 16


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_dream_queries=0), "num_dream_queries must be >= 1"),
        (dict(condition_hidden_size=0), "condition_hidden_size"),
        (dict(vision_feature_layer=5), "vision_feature_layer=5"),
        (dict(dream_start_token_id=500), "dream_start_token_id=500 is outside the text vocabulary of size 120"),
        (dict(dream_end_token_id=105), "must be distinct"),
        (dict(diffusion_loss_weight=-1.0), "loss weights must be >= 0"),
        (dict(condition_drop_prob=1.0), "condition_drop_prob must be in [0, 1)"),
        (dict(tie_word_embeddings=True), "tie_word_embeddings=True disagrees with the text config's"),
        (dict(vision_feature_layer=[-2, 3]), "vision_feature_layer=3"),
        (dict(vision_feature_layer=[]), "vision_feature_layer is an empty list"),
        (dict(vision_feature_select_strategy="cls"), "vision_feature_select_strategy='cls' is not one of"),
        (dict(vision_config={**TINY_VISION, "model_type": "siglip_vision_model"}), "tower has none"),
        (dict(vision_config={**TINY_VISION, "model_type": "siglip2_vision_model"}), "'siglip2_vision_model' is not supported"),
        (dict(vision_config={**TINY_VISION, "image_size": 4}), "image_size 4 is smaller than patch_size 8"),
    ],
)
def test_inconsistent_settings_raise_at_construction(overrides, message):
    with pytest.raises(StrictDataclassClassValidationError, match=message.replace("[", r"\[").replace(")", r"\)")):
        tiny_config(**overrides)


SIGLIP = {**TINY_VISION, "model_type": "siglip_vision_model"}


@pytest.mark.parametrize(
    "vision, strategy, layer, tokens",
    [
        (TINY_VISION, "default", -2, 16),  # CLIP: 4x4 patches + CLS, CLS dropped (the release's setting)
        (TINY_VISION, "full", -2, 17),  # CLIP with its CLS kept
        (SIGLIP, "full", -1, 16),  # SigLIP: no CLS token
        (SIGLIP, "full", [-3, -2], 16),  # layers concatenated on channels: the token count is unchanged
        ({**SIGLIP, "image_size": 38}, "full", -2, 16),  # the patch convolution floors: 38 px / 8 = 4 a side
    ],
)
def test_image_token_count_follows_the_tower_and_the_strategy(tmp_path, vision, strategy, layer, tokens):
    config = tiny_config(vision_config=vision, vision_feature_select_strategy=strategy, vision_feature_layer=layer)
    assert config.num_image_tokens == tokens
    assert config.vision_feature_layers == (layer if isinstance(layer, list) else [layer])
    config.save_pretrained(tmp_path)
    loaded = DreamLLMConfig.from_pretrained(tmp_path)
    assert (loaded.num_image_tokens, loaded.vision_feature_layer) == (tokens, layer)


def test_a_config_without_the_new_fields_keeps_the_release_behaviour(tmp_path):
    """config.json files written before the strategy and tying fields: CLIP penultimate layer, CLS dropped, untied."""
    import json

    config = tiny_config()
    saved = config.to_dict()
    for key in ("vision_feature_select_strategy", "tie_word_embeddings"):
        saved.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = DreamLLMConfig.from_pretrained(tmp_path)
    assert (loaded.vision_feature_layer, loaded.vision_feature_select_strategy) == (-2, "default")
    assert loaded.num_image_tokens == 16 and loaded.tie_word_embeddings is False


def test_tying_follows_the_text_config():
    tied = tiny_config(text_config={**TINY_TEXT, "tie_word_embeddings": True})
    assert tied.tie_word_embeddings is True
    assert tiny_config().tie_word_embeddings is False
