"""DreamLLM configuration: a causal LLM, a vision tower (CLIP or SigLIP), dream queries and a diffusion-decoder
condition."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

# Token ids of the official release (its `added_tokens.json`); `train.assemble` writes the ids read from the
# tokenizer it builds, so these defaults only matter for the 7B configuration built from scratch.
RELEASED_TOKEN_IDS = {
    "pad_token_id": 32000,
    "image_start_token_id": 32001,
    "dream_end_token_id": 32002,
    "dream_start_token_id": 32003,
    "image_patch_token_id": 32004,
    "image_end_token_id": 32005,
    "image_token_id": 32006,
    "dream_token_id": 32007,
}

# Field name -> token string, the one map from config ids to tokenizer strings.
SPECIAL_TOKENS = {
    "image_token_id": "<image>",
    "image_patch_token_id": "<im_patch>",
    "image_start_token_id": "<im_start>",
    "image_end_token_id": "<im_end>",
    "dream_token_id": "<dream>",
    "dream_start_token_id": "<dream_start>",
    "dream_end_token_id": "<dream_end>",
}

# Leading tokens (CLS) each supported vision tower puts before its patch features, by its config's `model_type`.
# SigLIP2 FixRes checkpoints use the SigLIP classes; the variable-resolution NaFlex tower (`siglip2_vision_model`)
# takes per-image patch grids that a fixed number of image slots cannot hold.
VISION_TOWER_CLS_TOKENS = {"clip_vision_model": 1, "siglip_vision_model": 0}
# As in transformers' LLaVA: "default" drops the leading CLS token, "full" keeps every token.
VISION_FEATURE_SELECT_STRATEGIES = ("default", "full")


@strict
class DreamLLMConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DreamLLMForConditionalGeneration`]: a causal language model that reads interleaved documents (input images
    enter through a CLIP vision tower and a linear projector) and creates images (the hidden states of
    `num_dream_queries` learnable queries, through a linear condition projector, condition a diffusion decoder).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Any causal-LM config (LLaMA/Vicuna in the paper). Defaults to Vicuna-7B v1.1 with the 8 DreamLLM tokens.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            A CLIP or SigLIP vision config. Defaults to CLIP ViT-L/14 at 224 px (256 patches).
        num_dream_queries (`int`, defaults to 64): learnable queries per created image.
        vision_feature_layer (`int` or `list[int]`, defaults to -2): vision hidden-state layer fed to the LLM; a
            list concatenates those layers on the channel axis (the visual projector's input grows accordingly).
        vision_feature_select_strategy (`str`, defaults to `"default"`): `"default"` drops the tower's CLS token
            (CLIP), `"full"` keeps every token (required for towers without CLS, such as SigLIP).
        condition_hidden_size (`int`, defaults to 1024): context width of the diffusion decoder (the UNet's
            `cross_attention_dim`, the SD3 transformer's `joint_attention_dim`).
        pooled_condition_hidden_size (`int`, defaults to 0): width of the decoder's pooled input (SDXL's
            `text_embeds`, SD3's `pooled_projections`), made by a second projector from the dream-query states; 0 for
            decoders without one (SD 1.x/2.x). A condition has `condition_hidden_size + pooled_condition_hidden_size`
            channels (`decoders_dreamllm.py`).
        image_token_id, image_patch_token_id, image_start_token_id, image_end_token_id, dream_token_id,
        dream_start_token_id, dream_end_token_id (`int`): ids of `<image>`, `<im_patch>`, `<im_start>`, `<im_end>`,
            `<dream>`, `<dream_start>`, `<dream_end>`. `<im_patch>` fills the slots of both block kinds.
        lm_loss_weight (`float`, defaults to 1.0), diffusion_loss_weight (`float`, defaults to 10.0):
            weights of the two training losses.
        tie_word_embeddings (`bool`, *optional*): whether the LM head shares the input embedding matrix; defaults to
            the text config's own setting (Qwen2 ties, LLaMA does not).
        condition_drop_prob (`float`, defaults to 0.1):
            probability that a creation condition is replaced by the null condition while training (for
            classifier-free guidance).

    Example:

    ```python
    >>> from configuration_dreamllm import DreamLLMConfig
    >>> config = DreamLLMConfig()  # DreamLLM-7B: Vicuna-7B + CLIP ViT-L/14 + SD-2.1-base condition size
    >>> config.num_image_tokens, config.num_dream_queries
    (256, 64)
    ```
    """

    model_type = "dreamllm"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="llama",
            init_kwargs={
                "vocab_size": 32008,
                "max_position_embeddings": 2048,
                "rms_norm_eps": 1e-6,
                "bos_token_id": 1,
                "eos_token_id": 2,
                "pad_token_id": RELEASED_TOKEN_IDS["pad_token_id"],
            },
        ),
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs={
                "hidden_size": 1024,
                "intermediate_size": 4096,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "patch_size": 14,
                "image_size": 224,
                "projection_dim": 768,
            },
        ),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    num_dream_queries: int = 64
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str = "default"
    condition_hidden_size: int = 1024
    pooled_condition_hidden_size: int = 0
    image_token_id: int = RELEASED_TOKEN_IDS["image_token_id"]
    image_patch_token_id: int = RELEASED_TOKEN_IDS["image_patch_token_id"]
    image_start_token_id: int = RELEASED_TOKEN_IDS["image_start_token_id"]
    image_end_token_id: int = RELEASED_TOKEN_IDS["image_end_token_id"]
    dream_token_id: int = RELEASED_TOKEN_IDS["dream_token_id"]
    dream_start_token_id: int = RELEASED_TOKEN_IDS["dream_start_token_id"]
    dream_end_token_id: int = RELEASED_TOKEN_IDS["dream_end_token_id"]
    lm_loss_weight: float | int = 1.0
    diffusion_loss_weight: float | int = 10.0
    condition_drop_prob: float | int = 0.1
    tie_word_embeddings: bool | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.tie_word_embeddings is None:  # follow the LLM: tying is a property of its checkpoint
            self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))

    @property
    def special_token_ids(self) -> list[int]:
        """Ids of the seven DreamLLM tokens (placeholders, block markers and slots), in `SPECIAL_TOKENS` order."""
        return [getattr(self, name) for name in SPECIAL_TOKENS]

    @property
    def vision_feature_layers(self) -> list[int]:
        """`vision_feature_layer` as a list (one entry unless several layers are concatenated)."""
        layer = self.vision_feature_layer
        return list(layer) if isinstance(layer, (list, tuple)) else [layer]

    @property
    def num_vision_cls_tokens(self) -> int:
        """Leading non-patch tokens of the vision tower's sequence (1 for CLIP's CLS, 0 for SigLIP)."""
        model_type = self.vision_config.model_type
        if model_type not in VISION_TOWER_CLS_TOKENS:
            raise ValueError(
                f"vision tower model_type {model_type!r} is not supported: expected one of "
                f"{sorted(VISION_TOWER_CLS_TOKENS)} (SigLIP2 FixRes checkpoints load as siglip_vision_model)"
            )
        return VISION_TOWER_CLS_TOKENS[model_type]

    @property
    def num_image_tokens(self) -> int:
        """Number of vision features per input image: the patch grid plus the tower's CLS token, which the
        "default" strategy drops."""
        vision = self.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2 + self.num_vision_cls_tokens
        return tokens - 1 if self.vision_feature_select_strategy == "default" else tokens

    def validate_dreamllm(self):
        """Reject settings that cannot describe a working DreamLLM, naming the problem."""
        text, vision = self.text_config, self.vision_config
        if self.num_dream_queries < 1:
            raise ValueError(f"num_dream_queries must be >= 1, got {self.num_dream_queries}")
        if self.condition_hidden_size < 1:
            raise ValueError(f"condition_hidden_size must be >= 1, got {self.condition_hidden_size}")
        if self.pooled_condition_hidden_size < 0:
            raise ValueError(f"pooled_condition_hidden_size must be >= 0, got {self.pooled_condition_hidden_size}")
        num_layers = vision.num_hidden_layers
        if not self.vision_feature_layers:
            raise ValueError("vision_feature_layer is an empty list: name at least one vision layer")
        for layer in self.vision_feature_layers:
            if not -(num_layers + 1) <= layer <= num_layers:
                raise ValueError(
                    f"vision_feature_layer={layer} is outside the {num_layers + 1} hidden states of "
                    f"a {num_layers}-layer vision tower"
                )
        if self.vision_feature_select_strategy not in VISION_FEATURE_SELECT_STRATEGIES:
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r} is not one of "
                f"{VISION_FEATURE_SELECT_STRATEGIES}"
            )
        if self.vision_feature_select_strategy == "default" and self.num_vision_cls_tokens == 0:
            raise ValueError(
                f"vision_feature_select_strategy='default' drops a CLS token, but a {vision.model_type} tower has "
                "none (it would drop a real patch): use 'full'"
            )
        # The patch convolution floors (SigLIP-so400m: 384 px / 14 = 27 patches a side), so only a grid of none fails.
        if vision.image_size < vision.patch_size:
            raise ValueError(f"vision image_size {vision.image_size} is smaller than patch_size {vision.patch_size}")
        ids = {name: getattr(self, name) for name in SPECIAL_TOKENS}
        for name, value in ids.items():
            if not 0 <= value < text.vocab_size:
                raise ValueError(f"{name}={value} is outside the text vocabulary of size {text.vocab_size}")
        if len(set(ids.values())) != len(ids):
            raise ValueError(f"the DreamLLM special token ids must be distinct, got {ids}")
        if min(self.lm_loss_weight, self.diffusion_loss_weight) < 0:
            raise ValueError(
                f"loss weights must be >= 0, got lm={self.lm_loss_weight} diffusion={self.diffusion_loss_weight}"
            )
        if not 0 <= self.condition_drop_prob < 1:
            raise ValueError(f"condition_drop_prob must be in [0, 1), got {self.condition_drop_prob}")
        text_ties = bool(getattr(text, "tie_word_embeddings", False))
        if bool(self.tie_word_embeddings) != text_ties:
            raise ValueError(
                f"tie_word_embeddings={self.tie_word_embeddings} disagrees with the text config's "
                f"tie_word_embeddings={text_ties}: the LM head is tied exactly when the LLM's is"
            )


__all__ = [
    "DreamLLMConfig",
    "SPECIAL_TOKENS",
    "RELEASED_TOKEN_IDS",
    "VISION_TOWER_CLS_TOKENS",
    "VISION_FEATURE_SELECT_STRATEGIES",
]
