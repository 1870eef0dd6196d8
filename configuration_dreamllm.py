"""DreamLLM configuration: a causal LLM, a CLIP vision tower, dream queries and a diffusion-decoder condition."""

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


@strict
class DreamLLMConfig(PreTrainedConfig):
    r"""
    Configuration of a [`DreamLLMForCausalLM`]: a causal language model that reads interleaved documents (input images
    enter through a CLIP vision tower and a linear projector) and creates images (the hidden states of
    `num_dream_queries` learnable queries, through a linear condition projector, condition a diffusion decoder).

    Args:
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Any causal-LM config (LLaMA/Vicuna in the paper). Defaults to Vicuna-7B v1.1 with the 8 DreamLLM tokens.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            A CLIP vision config. Defaults to CLIP ViT-L/14 at 224 px (256 patches).
        num_dream_queries (`int`, defaults to 64): learnable queries per created image.
        vision_feature_layer (`int`, defaults to -2): CLIP hidden-state layer fed to the LLM (its CLS is dropped).
        condition_hidden_size (`int`, defaults to 1024): cross-attention width of the diffusion decoder.
        image_token_id, image_patch_token_id, image_start_token_id, image_end_token_id, dream_token_id,
        dream_start_token_id, dream_end_token_id (`int`): ids of `<image>`, `<im_patch>`, `<im_start>`, `<im_end>`,
            `<dream>`, `<dream_start>`, `<dream_end>`. `<im_patch>` fills the slots of both block kinds.
        lm_loss_weight (`float`, defaults to 1.0), diffusion_loss_weight (`float`, defaults to 10.0):
            weights of the two training losses.
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
    vision_feature_layer: int = -2
    condition_hidden_size: int = 1024
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
    tie_word_embeddings: bool = False

    @property
    def special_token_ids(self) -> list[int]:
        """Ids of the seven DreamLLM tokens (placeholders, block markers and slots), in `SPECIAL_TOKENS` order."""
        return [getattr(self, name) for name in SPECIAL_TOKENS]

    @property
    def num_image_tokens(self) -> int:
        """Number of CLIP patch features per input image (the CLS token is dropped)."""
        return (self.vision_config.image_size // self.vision_config.patch_size) ** 2

    def validate_dreamllm(self):
        """Reject settings that cannot describe a working DreamLLM, naming the problem."""
        text, vision = self.text_config, self.vision_config
        if self.num_dream_queries < 1:
            raise ValueError(f"num_dream_queries must be >= 1, got {self.num_dream_queries}")
        if self.condition_hidden_size < 1:
            raise ValueError(f"condition_hidden_size must be >= 1, got {self.condition_hidden_size}")
        num_layers = vision.num_hidden_layers
        if not -(num_layers + 1) <= self.vision_feature_layer <= num_layers:
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer} is outside the {num_layers + 1} hidden states of "
                f"a {num_layers}-layer vision tower"
            )
        if vision.image_size % vision.patch_size:
            raise ValueError(f"vision image_size {vision.image_size} is not a multiple of patch_size {vision.patch_size}")
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
        if self.tie_word_embeddings or getattr(text, "tie_word_embeddings", False):
            raise ValueError("DreamLLM keeps an untied lm_head; set tie_word_embeddings=False in the text config")


__all__ = ["DreamLLMConfig", "SPECIAL_TOKENS", "RELEASED_TOKEN_IDS"]
