"""DreamLLM model: a causal LLM that reads CLIP features of input images and writes dream-query conditions for a
diffusion decoder, built from the library's own LLaMA/CLIP classes in the shape of transformers' LLaVA."""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep

try:
    from .configuration_dreamllm import DreamLLMConfig
except ImportError:  # imported as a top-level module (tests, scripts)
    from configuration_dreamllm import DreamLLMConfig


@dataclass
class DreamLLMModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    condition_embeds (`torch.FloatTensor` of shape `(num_creation_blocks, num_dream_queries, condition_hidden_size)`):
        Diffusion-decoder conditions, one per creation block of the batch in document order; `None` when there are
        none.
    """

    condition_embeds: torch.FloatTensor | None = None


@dataclass
class DreamLLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    r"""
    condition_embeds (`torch.FloatTensor` of shape `(num_creation_blocks, num_dream_queries, condition_hidden_size)`):
        Diffusion-decoder conditions, one per creation block of the batch in document order; `None` when there are
        none.
    """

    condition_embeds: torch.FloatTensor | None = None


@dataclass
class BlockLayout:
    """Where the comprehension (CLIP) and creation (dream-query) slots of a batch of token ids are.

    Both block kinds fill their slots with `<im_patch>`; the opener before a slot (`<im_start>` or `<dream_start>`)
    decides its kind, so a block must be fed whole within one forward call.
    """

    image_mask: torch.BoolTensor  # (batch, seq): slots that take projected CLIP features
    dream_mask: torch.BoolTensor  # (batch, seq): slots that take dream queries
    slot_index: torch.LongTensor  # (batch, seq): index of each slot within its block
    image_ordinal: torch.LongTensor  # (batch, seq): which image of the batch (document order) a CLIP slot shows


class DreamLLMPreTrainedModel(PreTrainedModel):
    config: DreamLLMConfig
    config_class = DreamLLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer", "CLIPEncoderLayer"]
    _skip_keys_device_placement = "cache"
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True` adds a dict
        # Loading materialises fresh parameters, which forgets `requires_grad`: freeze CLIP again.
        base = model if isinstance(model, DreamLLMModel) else model.model
        base.vision_tower.requires_grad_(False)
        return loaded

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, DreamLLMModel):
            std = getattr(self.config.text_config, "initializer_range", 0.02)
            init.normal_(module.dream_queries.weight, mean=0.0, std=std)


class DreamLLMModel(DreamLLMPreTrainedModel):
    """The DreamLLM backbone (no LM head): vision tower, visual projector, dream queries, language model and
    condition projector.

    Example:

    ```python
    >>> from transformers import AutoModel
    >>> model = AutoModel.from_pretrained("path/to/dreamllm", trust_remote_code=True)
    >>> out = model(**processor("a red circle<dream>", return_tensors="pt"))
    >>> out.condition_embeds.shape  # (1, num_dream_queries, condition_hidden_size)
    ```
    """

    def __init__(self, config: DreamLLMConfig):
        super().__init__(config)
        text_hidden = config.text_config.hidden_size
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.vision_projector = nn.Linear(config.vision_config.hidden_size, text_hidden, bias=True)
        self.language_model = AutoModel.from_config(config.text_config)
        self.dream_queries = nn.Embedding(config.num_dream_queries, text_hidden)
        self.condition_projector = nn.Linear(text_hidden, config.condition_hidden_size, bias=False)
        # CLIP stays frozen in every DreamLLM stage.
        self.vision_tower.requires_grad_(False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """Projected CLIP features of `pixel_values` `(num_images, 3, H, W)` -> `(num_images, num_image_tokens,
        hidden_size)`: hidden states of `config.vision_feature_layer`, CLS dropped, through the visual projector."""
        tower = self.vision_tower
        # No gradient has to reach the pixels, so a frozen tower runs without building a graph.
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())
        with torch.set_grad_enabled(needs_grad):
            outputs = tower(pixel_values.to(tower.dtype), output_hidden_states=True)
            features = outputs.hidden_states[self.config.vision_feature_layer][:, 1:]
        return self.vision_projector(features.to(self.vision_projector.weight.dtype))

    def block_layout(self, input_ids: torch.LongTensor) -> BlockLayout:
        """Classify every `<im_patch>` of `input_ids` as a CLIP slot or a dream-query slot, without host syncs."""
        config = self.config
        opener_kind = torch.zeros_like(input_ids)
        opener_kind[input_ids == config.image_start_token_id] = 1
        opener_kind[input_ids == config.dream_start_token_id] = 2
        is_marker = (opener_kind > 0) | (input_ids == config.image_end_token_id) | (input_ids == config.dream_end_token_id)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        last_marker = torch.where(is_marker, positions, -1).cummax(dim=1).values
        kind = torch.where(last_marker >= 0, opener_kind.gather(1, last_marker.clamp(min=0)), 0)
        is_patch = input_ids == config.image_patch_token_id
        image_openers = (opener_kind == 1).flatten().cumsum(0).view_as(input_ids) - 1
        return BlockLayout(
            image_mask=is_patch & (kind == 1),
            dream_mask=is_patch & (kind == 2),
            slot_index=positions - last_marker - 1,
            image_ordinal=image_openers,
        )

    def _check_layout(self, input_ids: torch.LongTensor, layout: BlockLayout, num_images: int) -> int:
        """Validate the blocks against the images given; returns the number of creation blocks (one host sync)."""
        config = self.config
        is_patch = input_ids == config.image_patch_token_id
        counts = torch.stack(
            [
                (input_ids == config.image_start_token_id).sum(),
                layout.image_mask.sum(),
                (input_ids == config.dream_start_token_id).sum(),
                layout.dream_mask.sum(),
                (is_patch & ~layout.image_mask & ~layout.dream_mask).sum(),
                (layout.image_mask & (layout.slot_index >= config.num_image_tokens)).sum(),
                (layout.dream_mask & (layout.slot_index >= config.num_dream_queries)).sum(),
            ]
        ).tolist()
        image_blocks, image_slots, dream_openers, dream_slots, stray, image_overflow, dream_overflow = counts
        if stray:
            raise ValueError(f"{stray} <im_patch> tokens stand outside any <im_start> or <dream_start> block")
        if image_overflow or image_slots != image_blocks * config.num_image_tokens:
            raise ValueError(
                f"each image block needs exactly {config.num_image_tokens} <im_patch> slots; got {image_slots} slots "
                f"in {image_blocks} blocks"
            )
        if image_blocks != num_images:
            raise ValueError(f"the input has {image_blocks} image blocks but {num_images} images were given")
        if dream_overflow or dream_slots % config.num_dream_queries:
            raise ValueError(
                f"each creation block needs exactly {config.num_dream_queries} <im_patch> slots; got {dream_slots} "
                f"slots after {dream_openers} <dream_start> tokens"
            )
        return dream_slots // config.num_dream_queries

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        **kwargs,
    ) -> DreamLLMModelOutputWithPast:
        r"""
        image_features (`torch.FloatTensor` of shape `(num_images, num_image_tokens, hidden_size)`, *optional*):
            Precomputed `get_image_features` output, used instead of `pixel_values`.
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and image_features is not None:
            raise ValueError("pass pixel_values or image_features, not both")
        if inputs_embeds is not None:  # raw embeddings: no blocks to fill
            outputs = self.language_model(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache, **kwargs
            )
            return DreamLLMModelOutputWithPast(**outputs)

        inputs_embeds = self.get_input_embeddings()(input_ids)
        layout = self.block_layout(input_ids)
        if pixel_values is not None:  # CLIP runs only when the batch has images
            image_features = self.get_image_features(pixel_values)
        num_images = 0 if image_features is None else image_features.shape[0]
        num_creation_blocks = self._check_layout(input_ids, layout, num_images)

        if image_features is not None:
            flat_features = image_features.reshape(-1, image_features.shape[-1]).to(inputs_embeds.dtype)
            feature_index = layout.image_ordinal * self.config.num_image_tokens + layout.slot_index
            feature_index = torch.where(layout.image_mask, feature_index, 0)
            inputs_embeds = torch.where(layout.image_mask[..., None], flat_features[feature_index], inputs_embeds)
        if num_creation_blocks:
            query_index = layout.slot_index.clamp(0, self.config.num_dream_queries - 1)
            queries = self.dream_queries(query_index).to(inputs_embeds.dtype)
            inputs_embeds = torch.where(layout.dream_mask[..., None], queries, inputs_embeds)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids, cache=cache, **kwargs
        )
        condition_embeds = None
        if num_creation_blocks:
            query_states = outputs.last_hidden_state[layout.dream_mask]
            query_states = query_states.view(num_creation_blocks, self.config.num_dream_queries, -1)
            condition_embeds = self.condition_projector(query_states)
        return DreamLLMModelOutputWithPast(**outputs, condition_embeds=condition_embeds)

    def null_condition_ids(self, device: torch.device | None = None) -> torch.LongTensor:
        """`[<s>, <dream_start>, <im_patch> x Q, <dream_end>]`: the empty prompt's creation block, shape `(1, Q+3)`."""
        config = self.config
        ids = [config.text_config.bos_token_id, config.dream_start_token_id]
        ids += [config.image_patch_token_id] * config.num_dream_queries + [config.dream_end_token_id]
        return torch.tensor([ids], device=device if device is not None else self.dream_queries.weight.device)

    def get_null_condition(self) -> torch.FloatTensor:
        """The condition of the empty prompt, `(1, Q, condition_hidden_size)`: the unconditional branch of
        classifier-free guidance, in training (condition dropout) and sampling alike. Differentiable."""
        return self(input_ids=self.null_condition_ids(), use_cache=False).condition_embeds


class DreamLLMForCausalLM(DreamLLMPreTrainedModel, GenerationMixin):
    """DreamLLM with its (untied) language-modelling head: understanding (`generate`), the LM loss, and the
    `condition_embeds` of every creation block for the diffusion decoder.

    Example:

    ```python
    >>> from PIL import Image
    >>> from transformers import AutoModelForCausalLM, AutoProcessor
    >>> model = AutoModelForCausalLM.from_pretrained("path/to/dreamllm", trust_remote_code=True)
    >>> processor = AutoProcessor.from_pretrained("path/to/dreamllm", trust_remote_code=True)
    >>> inputs = processor(text="<image>\nWhat is this?", images=[Image.open("cat.png")], return_tensors="pt")
    >>> answer = model.generate(**inputs, max_new_tokens=20)
    >>> processor.batch_decode(answer[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    ```
    """

    def __init__(self, config: DreamLLMConfig):
        super().__init__(config)
        self.model = DreamLLMModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.lm_head = new_embeddings

    def get_decoder(self) -> nn.Module:
        return self.model.language_model

    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        return self.model.get_image_features(pixel_values)

    def get_null_condition(self) -> torch.FloatTensor:
        # Through this model's own forward, so accelerate's offload hooks on it fire.
        null_ids = self.model.null_condition_ids()
        return self(input_ids=null_ids, use_cache=False, logits_to_keep=1).condition_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        image_features: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> DreamLLMCausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets (shifted inside); -100 is ignored. The loss is the token mean over the others.
        logits_to_keep (`int` or `torch.Tensor`, defaults to 0):
            Compute logits only for the last `logits_to_keep` positions (0: all), or for the given indices.
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            image_features=image_features,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return DreamLLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            condition_embeds=outputs.condition_embeds,
        )


__all__ = ["DreamLLMPreTrainedModel", "DreamLLMModel", "DreamLLMForCausalLM"]
