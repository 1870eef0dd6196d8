"""DreamLLM model: a causal LLM that reads vision-tower features of input images and writes dream-query conditions
for a diffusion decoder, built from the library's own LLM and vision classes (any causal LM; CLIP or SigLIP) in the
shape of transformers' LLaVA."""

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoModel, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states

try:
    from .configuration_dreamllm import DreamLLMConfig
except ImportError:  # imported as a top-level module (tests, scripts)
    from configuration_dreamllm import DreamLLMConfig


@dataclass
class DreamLLMModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        The vision tower's output for the input images; `pooler_output` holds one `(num_image_tokens, hidden_size)`
        projected feature tensor per image. `None` when the call had no images.
    condition_embeds (`torch.FloatTensor` of shape `(num_creation_blocks, num_dream_queries, width)`):
        Diffusion-decoder conditions, one per creation block of the batch in document order; `None` when there are
        none. `width` is `condition_hidden_size + pooled_condition_hidden_size` (the context, then the pooled part).
    """

    condition_embeds: torch.FloatTensor | None = None


@dataclass
class DreamLLMCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    image_outputs (`BaseModelOutputWithPooling`, *optional*):
        As in [`DreamLLMModelOutputWithPast`].
    condition_embeds (`torch.FloatTensor` of shape `(num_creation_blocks, num_dream_queries, width)`):
        Diffusion-decoder conditions, one per creation block of the batch in document order; `None` when there are
        none. `width` is `condition_hidden_size + pooled_condition_hidden_size` (the context, then the pooled part).
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


def check_pixel_values(pixel_values, name: str = "pixel_values", num_channels: int | None = None) -> None:
    """Reject pixel inputs that are not a non-empty float `(num_images, channels, height, width)` tensor (with
    `num_channels` channels when given), naming the problem."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (the processor's output), got {type(pixel_values).__name__}")
    if not torch.is_floating_point(pixel_values):
        raise TypeError(
            f"{name} must be normalised floating-point pixels (the processor's output), got dtype {pixel_values.dtype}"
        )
    if pixel_values.ndim != 4:
        raise ValueError(f"{name} must have shape (num_images, channels, height, width), got {tuple(pixel_values.shape)}")
    if pixel_values.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(pixel_values.shape)}); pass None when there are no images")
    if num_channels is not None and pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"{name} has {pixel_values.shape[1]} channels but the vision tower reads {num_channels} "
            f"(shape {tuple(pixel_values.shape)}); convert the images to RGB or use the processor"
        )


def check_token_inputs(input_ids: torch.Tensor | None, inputs_embeds: torch.Tensor | None) -> None:
    """Reject token inputs that are not a non-empty `(batch, seq)` integer tensor (or `(batch, seq, hidden)` float
    embeddings), naming the problem; shape checks only, so no host sync."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("pass exactly one of input_ids or inputs_embeds")
    name, tensor, ndim = ("input_ids", input_ids, 2) if inputs_embeds is None else ("inputs_embeds", inputs_embeds, 3)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.ndim != ndim:
        layout = "(batch, sequence)" if ndim == 2 else "(batch, sequence, hidden)"
        raise ValueError(f"{name} must have shape {layout}, got {tuple(tensor.shape)}; add a batch dimension")
    if name == "input_ids" and (torch.is_floating_point(tensor) or tensor.is_complex() or tensor.dtype == torch.bool):
        raise TypeError(f"input_ids must hold integer token ids, got dtype {tensor.dtype}")
    if tensor.shape[0] == 0 or tensor.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}): give at least one sequence of one token")


def damaged_weights_file(folder) -> str:
    """The first `*.safetensors` file of a local `folder` whose header does not read (the folder itself otherwise),
    for an error message that names it; used only once loading has failed."""
    folder = Path(folder)
    for file in sorted(folder.glob("*.safetensors")) if folder.is_dir() else ():
        try:
            safe_open(file, framework="pt").keys()
        except (SafetensorError, OSError):
            return f"{file} is damaged or truncated (re-download or re-save it)"
    return f"{folder}: a weights file is damaged or truncated"


class DreamLLMPreTrainedModel(PreTrainedModel):
    config: DreamLLMConfig
    config_class = DreamLLMConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # None: `post_init` gathers the layer classes of the LLM and the vision tower actually built (see `fsdp_wrap_classes`).
    _no_split_modules = None
    _skip_keys_device_placement = "cache"
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except SafetensorError as error:  # safetensors' own message names no file
            raise OSError(f"{damaged_weights_file(pretrained_model_name_or_path)}: {error}") from error
        model = loaded[0] if isinstance(loaded, tuple) else loaded  # `output_loading_info=True` adds a dict
        if getattr(model, "generation_config", None) is not None and model.generation_config.suppress_tokens is None:
            # Folders saved before the text-only `generate` contract get it at load time.
            model.generation_config.suppress_tokens = model.config.special_token_ids
        return loaded

    @torch.no_grad()
    def initialize_weights(self):
        # CLIP and LLaMA are library models: their `_init_weights` must run as library code. Called from this custom
        # class, transformers would skip the modules without direct parameters (CLIPAttention, CLIPMLP, ...), leaving
        # their Linear layers at the generic std instead of the scheme `CLIPVisionModel(config)` uses.
        for module in self.modules():
            if module is not self and isinstance(module, PreTrainedModel) and not module.is_custom_code():
                module.initialize_weights()
        super().initialize_weights()

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
        vision_width = config.vision_config.hidden_size * len(config.vision_feature_layers)
        self.vision_projector = nn.Linear(vision_width, text_hidden, bias=True)
        self.language_model = AutoModel.from_config(config.text_config)
        self.dream_queries = nn.Embedding(config.num_dream_queries, text_hidden)
        self.condition_projector = nn.Linear(text_hidden, config.condition_hidden_size, bias=False)
        # Decoders with a pooled input (SDXL, SD3) get it from the same states through their own projector; linear and
        # bias-free, so the decoder adapter's mean over queries equals projecting the mean dream-query state.
        if config.pooled_condition_hidden_size:
            self.pooled_projector = nn.Linear(text_hidden, config.pooled_condition_hidden_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    @property
    def fsdp_wrap_classes(self) -> list[str]:
        """Class names of the trained LLM's decoder layers (its own `_no_split_modules`), the units FSDP shards;
        the frozen vision tower is replicated, not wrapped."""
        return sorted(self.language_model._no_split_modules or [])

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Encode `pixel_values` `(num_images, 3, H, W)` with the vision tower, as LLaVA's `get_image_features` does.

        Returns the tower's `BaseModelOutputWithPooling` whose `pooler_output` holds one `(num_image_tokens,
        hidden_size)` tensor per image: hidden states of `vision_feature_layer` (default `config.vision_feature_layer`;
        a list concatenates layers on the channel axis), with the CLS token dropped under the "default"
        `vision_feature_select_strategy` and kept under "full", through the visual projector. Only the selected
        layers' hidden states are kept unless the caller passes `output_hidden_states=True`.

        Example:

        ```python
        >>> features = model.get_image_features(pixel_values).pooler_output  # num_images x (N, hidden_size)
        >>> out = model(input_ids=ids, mm_encoder_outputs={"image": model.get_image_features(pixel_values)})
        ```
        """
        check_pixel_values(pixel_values, "pixel_values", self.config.vision_config.num_channels)
        tower = self.vision_tower
        # No gradient has to reach the pixels, so a frozen tower runs without building a graph.
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in tower.parameters())
        with torch.set_grad_enabled(needs_grad):
            image_outputs = tower(pixel_values.to(tower.dtype), return_dict=True, **kwargs)
            layers = vision_feature_layer if isinstance(vision_feature_layer, (list, tuple)) else [vision_feature_layer]
            first = 1 if vision_feature_select_strategy == "default" else 0  # "default" drops the CLS token
            selected = torch.cat([image_outputs.hidden_states[layer][:, first:] for layer in layers], dim=-1)
        features = self.vision_projector(selected.to(self.vision_projector.weight.dtype))
        image_outputs.pooler_output = list(features)
        return image_outputs

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

    def block_token_ids_from_embeds(self, inputs_embeds: torch.FloatTensor) -> torch.LongTensor:
        """The block markers and slots found in `inputs_embeds` (rows equal to those tokens' input embeddings, as
        LLaVA finds its image tokens), -1 everywhere else: the ids `block_layout` needs when no `input_ids` are given."""
        config = self.config
        block_ids = torch.tensor(
            [
                config.image_start_token_id,
                config.image_patch_token_id,
                config.image_end_token_id,
                config.dream_start_token_id,
                config.dream_end_token_id,
            ],
            device=inputs_embeds.device,
        )
        table = self.get_input_embeddings()(block_ids).to(inputs_embeds.dtype)
        matches = (inputs_embeds[..., None, :] == table).all(-1)  # (batch, seq, 5)
        return torch.where(matches.any(-1), block_ids[matches.int().argmax(-1)], -1)

    def _check_layout(self, input_ids: torch.LongTensor, layout: BlockLayout, num_images: int, ids_given: bool) -> int:
        """Validate the token ids (when `ids_given`) and the blocks against the images given; returns the number of
        creation blocks (one host sync for all the checks)."""
        config = self.config
        is_patch = input_ids == config.image_patch_token_id
        vocab_size = config.text_config.vocab_size
        out_of_vocab = ((input_ids < 0) | (input_ids >= vocab_size)).sum() if ids_given else input_ids.new_zeros(())
        counts = torch.stack(
            [
                out_of_vocab,
                (input_ids == config.image_start_token_id).sum(),
                layout.image_mask.sum(),
                (input_ids == config.dream_start_token_id).sum(),
                layout.dream_mask.sum(),
                (is_patch & ~layout.image_mask & ~layout.dream_mask).sum(),
                (layout.image_mask & (layout.slot_index >= config.num_image_tokens)).sum(),
                (layout.dream_mask & (layout.slot_index >= config.num_dream_queries)).sum(),
            ]
        ).tolist()
        bad_ids, image_blocks, image_slots, dream_blocks, dream_slots, stray, image_overflow, dream_overflow = counts
        if bad_ids:
            raise ValueError(f"input_ids holds {bad_ids} ids outside the vocabulary [0, {vocab_size})")
        if stray:
            raise ValueError(f"{stray} <im_patch> tokens stand outside any <im_start> or <dream_start> block")
        # No block holds more than its size (overflow), so the totals match only when every block is exactly full.
        if image_overflow or image_slots != image_blocks * config.num_image_tokens:
            raise ValueError(
                f"each image block needs exactly {config.num_image_tokens} <im_patch> slots; got {image_slots} slots "
                f"in {image_blocks} blocks"
            )
        if image_blocks != num_images:
            raise ValueError(f"the input has {image_blocks} image blocks but {num_images} images were given")
        if dream_overflow or dream_slots != dream_blocks * config.num_dream_queries:
            raise ValueError(
                f"each creation block needs exactly {config.num_dream_queries} <im_patch> slots; got {dream_slots} "
                f"slots in {dream_blocks} <dream_start> blocks"
            )
        return dream_blocks

    def _check_attention_mask(self, attention_mask, inputs: torch.Tensor, cache: Cache | None):
        if attention_mask is None or not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2:
            return  # 4-D masks and mask dicts are built by transformers itself
        past = cache.get_seq_length() if cache is not None else 0
        expected = (inputs.shape[0], past + inputs.shape[1])
        if tuple(attention_mask.shape) != expected:
            raise ValueError(
                f"attention_mask has shape {tuple(attention_mask.shape)} but the input needs {expected} "
                f"(batch, cached + new tokens)"
            )

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> tuple | DreamLLMModelOutputWithPast:
        r"""
        Fill the image blocks with CLIP features and the creation blocks with dream queries, run the language model,
        and project the final hidden states at the dream queries into `condition_embeds`.

        Blocks are found in `input_ids`, or, with `inputs_embeds`, where rows equal the embeddings of the block tokens
        (so `inputs_embeds=embed(ids)` gives what `input_ids=ids` gives). Every block must come whole in one call.

        mm_encoder_outputs (`dict`, *optional*):
            `{"image": get_image_features(pixel_values)}`, precomputed, used instead of `pixel_values` (as in LLaVA).
        cache / past_key_values (`Cache`, *optional*): the KV cache to continue from (`past_key_values` is the older
            name of the same argument).
        """
        check_token_inputs(input_ids, inputs_embeds)
        if pixel_values is not None and mm_encoder_outputs is not None:
            raise ValueError("pass pixel_values or mm_encoder_outputs, not both")
        block_ids = input_ids if inputs_embeds is None else self.block_token_ids_from_embeds(inputs_embeds)
        self._check_attention_mask(attention_mask, block_ids, cache)
        layout = self.block_layout(block_ids)

        image_outputs = (mm_encoder_outputs or {}).get("image")
        if image_outputs is None and pixel_values is not None:  # the tower runs only when the batch has images
            image_outputs = self.get_image_features(pixel_values=pixel_values, return_dict=True)
        image_features = None if image_outputs is None else image_outputs.pooler_output
        if isinstance(image_features, (list, tuple)):
            image_features = torch.stack(list(image_features)) if image_features else None
        num_images = 0 if image_features is None else image_features.shape[0]
        num_creation_blocks = self._check_layout(block_ids, layout, num_images, ids_given=inputs_embeds is None)
        if inputs_embeds is None:  # embedded only once the ids are known to be in range
            inputs_embeds = self.get_input_embeddings()(input_ids)

        if image_features is not None:
            flat_features = image_features.reshape(-1, image_features.shape[-1]).to(inputs_embeds)
            feature_index = layout.image_ordinal * self.config.num_image_tokens + layout.slot_index
            feature_index = torch.where(layout.image_mask, feature_index, 0)
            inputs_embeds = torch.where(layout.image_mask[..., None], flat_features[feature_index], inputs_embeds)
        if num_creation_blocks:
            query_index = layout.slot_index.clamp(0, self.config.num_dream_queries - 1)
            queries = self.dream_queries(query_index).to(inputs_embeds.dtype)
            inputs_embeds = torch.where(layout.dream_mask[..., None], queries, inputs_embeds)

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            return_dict=True,
            **kwargs,
        )
        condition_embeds = None
        if num_creation_blocks:
            query_states = outputs.last_hidden_state[layout.dream_mask]
            query_states = query_states.view(num_creation_blocks, self.config.num_dream_queries, -1)
            condition_embeds = self.condition_projector(query_states)
            if self.config.pooled_condition_hidden_size:
                condition_embeds = torch.cat([condition_embeds, self.pooled_projector(query_states)], dim=-1)
        return DreamLLMModelOutputWithPast(**outputs, image_outputs=image_outputs, condition_embeds=condition_embeds)

    def null_condition_ids(self, device: torch.device | None = None) -> torch.LongTensor:
        """`[<s>, <dream_start>, <im_patch> x Q, <dream_end>]`: the empty prompt's creation block, shape `(1, Q+3)`;
        without the `<s>` (shape `(1, Q+2)`) for an LLM whose tokenizer has no BOS token (the text config's
        `bos_token_id` is None, as `train.assemble` writes it for Qwen2)."""
        config = self.config
        bos = config.text_config.bos_token_id
        ids = ([] if bos is None else [bos]) + [config.dream_start_token_id]
        ids += [config.image_patch_token_id] * config.num_dream_queries + [config.dream_end_token_id]
        return torch.tensor([ids], device=device if device is not None else self.dream_queries.weight.device)

    def get_null_condition(self) -> torch.FloatTensor:
        """The condition of the empty prompt, `(1, Q, condition width)`: the unconditional branch of
        classifier-free guidance, in training (condition dropout) and sampling alike. Differentiable."""
        return self(input_ids=self.null_condition_ids(), use_cache=False, return_dict=True).condition_embeds


class DreamLLMForConditionalGeneration(DreamLLMPreTrainedModel, GenerationMixin):
    """DreamLLM with its language-modelling head (tied to the input embedding when the LLM ties it): understanding
    (`generate`), the LM loss, and the `condition_embeds` of every creation block for the diffusion decoder.

    `generate` writes text only: the seven DreamLLM tokens (`<image> <im_patch> <im_start> <im_end> <dream>
    <dream_start> <dream_end>`) are in `generation_config.suppress_tokens` (saved with the model), so a plain
    `generate` never opens a block it could not fill. Documents with created images come from the diffusers pipeline's
    `DreamLLMPipeline.generate_interleaved`, which reads each creation block and draws its image. Image inputs are
    encoded once, before the prefill (`mm_encoder_outputs`), and work with the KV cache, beam search and assisted
    generation.

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
        if config.tie_word_embeddings:
            # An LLM that ties (Qwen2): transformers shares the head with the input embedding of whichever LLM was
            # built; the key is read from the module, never assumed.
            embedding = self.model.language_model.get_input_embeddings()
            name = next(name for name, module in self.model.language_model.named_modules() if module is embedding)
            self._tied_weights_keys = {"lm_head.weight": f"model.language_model.{name}.weight"}
        self.post_init()
        # The text-only generation contract, written into generation_config.json by `save_pretrained`.
        self.generation_config.suppress_tokens = config.special_token_ids

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

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """See [`DreamLLMModel.get_image_features`]."""
        return self.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kwargs,
        )

    def get_null_condition(self, device: torch.device | None = None) -> torch.FloatTensor:
        # Through this model's own forward, so accelerate's offload hooks on it fire. `device`: where the ids go when
        # the weights are not where the forward runs (offloaded to `meta`).
        null_ids = self.model.null_condition_ids(device)
        return self(input_ids=null_ids, use_cache=False, logits_to_keep=1, return_dict=True).condition_embeds

    def generate(self, inputs: torch.Tensor | None = None, *args, **kwargs):
        """[`GenerationMixin.generate`], after the shape checks `forward` makes (generation indexes a batch dimension
        before any forward, so a 1-D prompt would otherwise fail deep inside). Plain `generate` writes text only."""
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        inputs_embeds = kwargs.get("inputs_embeds")
        if inputs_embeds is not None:
            check_token_inputs(None, inputs_embeds)
        elif isinstance(input_ids, torch.Tensor):
            check_token_inputs(input_ids, None)
        return super().generate(inputs, *args, **kwargs)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Cache | None = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ):
        # Image inputs go to the call that reads their blocks: the first one with nothing cached. That is the prefill,
        # and also an assistant model's first draft call, which transformers does not count as a first iteration.
        if cache is None or cache.get_seq_length() == 0:
            is_first_iteration = True
        return super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )

    def _expand_multimodal_outputs(self, input_ids, mm_encoder_output: dict, expand_size: int = 1, inputs_embeds=None):
        # Beam search and `num_return_sequences` repeat each row `expand_size` times; each copy needs its row's images.
        # transformers groups images by `config.image_token_id`, but DreamLLM rows hold `<im_start>` blocks instead
        # (`<image>` is the processor's placeholder), so group by those.
        image_outputs = mm_encoder_output.get("image")
        if expand_size == 1 or image_outputs is None or image_outputs.pooler_output is None:
            return mm_encoder_output
        if input_ids is None or input_ids.numel() == 0:
            input_ids = self.model.block_token_ids_from_embeds(inputs_embeds)
        per_row = (input_ids == self.config.image_start_token_id).sum(-1).tolist()
        features = list(image_outputs.pooler_output)
        if sum(per_row) != len(features):
            raise ValueError(f"the input has {sum(per_row)} image blocks but {len(features)} images were given")
        starts = [sum(per_row[:row]) for row in range(len(per_row))]
        image_outputs.pooler_output = [
            feature
            for start, count in zip(starts, per_row)
            for _ in range(expand_size)
            for feature in features[start : start + count]
        ]
        return mm_encoder_output

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> tuple | DreamLLMCausalLMOutputWithPast:
        r"""
        See [`DreamLLMModel.forward`] for the inputs it shares (blocks, `mm_encoder_outputs`, `cache` /
        `past_key_values`).

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
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            expected = (input_ids if input_ids is not None else inputs_embeds).shape[:2]
            if tuple(labels.shape) != tuple(expected):
                raise ValueError(f"labels has shape {tuple(labels.shape)} but the input has {tuple(expected)}")
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return DreamLLMCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            condition_embeds=outputs.condition_embeds,
        )


# The class's name before it followed transformers' image-text-to-text naming: folders saved then list it in
# `architectures` and `auto_map`, pipelines in model_index.json, and they load through it unchanged.
DreamLLMForCausalLM = DreamLLMForConditionalGeneration

__all__ = ["DreamLLMPreTrainedModel", "DreamLLMModel", "DreamLLMForConditionalGeneration", "DreamLLMForCausalLM"]
