"""`DreamLLMTrainer`: TRL's `SFTTrainer` with DreamLLM's joint loss, data counters and folder-shaped checkpoints.

    trainer = DreamLLMTrainer(
        model, args, diffusion_loss=DreamLLMDiffusionLoss.from_pretrained(folder), decoder_folder=folder,
        train_dataset=build_train_dataset(["data/pairs"], processor), processing_class=processor,
    )
    trainer.train()
    trainer.save_final()   # args.output_dir: a complete DreamLLM folder (model, processor, unet/, vae/, scheduler/)

loss = lm_loss_weight * LM token mean + diffusion_loss_weight * diffusion loss (the frozen UNet's noise-prediction
MSE, conditioned on the model's `condition_embeds`). Both terms are logged (`lm_loss`, `diffusion_loss`), as are
the data counters (`data/skipped_*`: records skipped, per reason, since the start).

Every folder the trainer writes (`checkpoint-N` and the final model) has the layout of `train.assemble`: the
model and processor with their code files, the frozen decoder's `unet/`, `vae/`, `scheduler/`, and the pipeline
index when `pipeline_dreamllm` is available. LoRA runs save PEFT adapters (`train.adapters`: adapter files, card
and processor, onto the folder the run started from), or, with `save_merged=True`, plain folders with the adapters
merged in (the adapter beside them in `adapter/`, for resuming). Folders are written aside and renamed into place:
complete or absent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftModel, set_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper, TrainableTokensWrapper
from safetensors.torch import load_file
from torch.distributed.fsdp import FSDPModule
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints
from trl import SFTConfig, SFTTrainer

from dreamllm_common.folders import clear_staging, publish_folder, staging_path
from processing_dreamllm import IGNORE_INDEX
from train.adapters import ADAPTER_WEIGHTS_NAME, is_adapter_folder, save_adapter
from train.assemble import decoder_subfolders, write_pipeline_files
from train.checkpoints import check_resumable, weight_names
from train.cpu_fsdp import enable_fsdp_on_cpu
from train.data.collator import DreamLLMDataCollator, LengthBucket
from train.data.encoding import COUNT_KEYS
from train.deepspeed_zero import install_ordered_reduction, keep_frozen_towers_out_of_zero3
from train.diffusion_loss import DreamLLMDiffusionLoss
from train.errors import InputError
from train.same_graph import append_null_row, project_images_first

ADAPTER_SUBFOLDER = "adapter"  # LoRA runs saved merged: the adapter, for resuming; the root holds the plain model
DREAM_PARAMETER_MARKERS = ("dream_queries", "condition_projector", "pooled_projector")
# A batch's rows run in one forward pass per length bucket (a bucket ends where rows are at most this share of its
# longest): short Q&A samples batched with long interleaved documents then skip the documents' padding.
LENGTH_BUCKET_RATIO = 0.5


# ------------------------------------------------------------------------------------------------ folder layout
# Everything training writes is a DreamLLM folder: root = model + processor + code files, `unet/`, `vae/`,
# `scheduler/` = the frozen decoder (+ the diffusers pipeline index). Folders are written aside and published whole.
def complete_folder(folder: str | Path, decoder_source: str | Path) -> None:
    """Add the frozen decoder (copied from the folder the run started from) and the pipeline files to a model."""
    folder, decoder_source = Path(folder), Path(decoder_source)
    for name in decoder_subfolders(decoder_source):  # an error naming what the source lacks
        if not (folder / name).exists():
            shutil.copytree(decoder_source / name, folder / name)
    write_pipeline_files(folder)


def carried_into_final(name: str) -> bool:
    """Entries of an output folder that its final model keeps: everything but an older model's weights and leftovers
    of interrupted saves (the new model brings its own files; checkpoints and logs stay)."""
    weights = name.endswith((".safetensors", ".safetensors.index.json")) or name.startswith("pytorch_model")
    return not (weights or name == ADAPTER_SUBFOLDER or name.endswith((".staging", ".old")))


def carried_into_adapter(name: str) -> bool:
    """Entries of an output folder that a LoRA run's final adapter keeps: checkpoints and logs only (an older
    model's files would make the adapter folder look like a whole model)."""
    return name.startswith(PREFIX_CHECKPOINT_DIR) or name == "runs"


# ---------------------------------------------------------------------------------------------------- LoRA merge
LORA_WRAPPER_MARKERS = (".base_layer.", "lora_", ".original_module.", ".modules_to_save.", ".token_adapter.")


@torch.no_grad()
def merged_state_dict(peft_model: PeftModel) -> dict[str, torch.Tensor]:
    """The state dict of the plain model with every adapter folded in, computed without touching `peft_model`
    (unlike `merge_adapter`/`unmerge_adapter`, which would round the training weights)."""
    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    state: dict[str, torch.Tensor] = {}
    for name, module in base.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, LoraLayer):
            layer = module.get_base_layer()
            weight = layer.weight
            if adapter in module.lora_A and adapter not in module.merged_adapters:
                weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            state[prefix + "weight"] = weight
            if getattr(layer, "bias", None) is not None:
                state[prefix + "bias"] = layer.bias
        elif isinstance(module, ModulesToSaveWrapper):
            for key, value in module.modules_to_save[adapter].state_dict().items():
                state[prefix + key] = value
        elif isinstance(module, TrainableTokensWrapper):
            state[prefix + "weight"] = module.token_adapter.get_merged_weights([adapter])
    for key, value in base.state_dict().items():
        if not any(marker in key for marker in LORA_WRAPPER_MARKERS):
            state.setdefault(key, value)
    return without_tied_copies(base, {key: value.detach().contiguous() for key, value in state.items()})


def without_tied_copies(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state_dict` without the weights tied to another (a tied LM head is its input embedding), which
    `save_pretrained` leaves out of a model's own state dict but keeps in one it is handed (FSDP's gathered one)."""
    tied = getattr(model, "all_tied_weights_keys", None) or {}
    return {key: value for key, value in state_dict.items() if key not in tied}


@contextlib.contextmanager
def own_class(model: torch.nn.Module):
    """FSDP2 turns a sharded module's class into a subclass defined in torch (`FSDPDreamLLMForConditionalGeneration`),
    which `save_pretrained` would write into `auto_map` and whose torch source files it would copy as the model's
    code: the model is saved under its own class."""
    sharded_class = type(model)
    if not isinstance(model, FSDPModule):
        yield model
        return
    model.__class__ = next(base for base in sharded_class.__mro__ if not issubclass(base, FSDPModule))
    try:
        yield model
    finally:
        model.__class__ = sharded_class


def causal_lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy summed over the learned tokens (fp32), and their count."""
    shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    total = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
    return total, (shift_labels != IGNORE_INDEX).sum()


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over the learned tokens of the whole batch (fp32). A batch without learned
    tokens gives 0, not NaN, and no host sync is needed to tell."""
    total, count = causal_lm_loss_sum(logits, labels)
    return total / count.clamp(min=1)


def bucket_inputs(inputs: dict, bucket: LengthBucket) -> dict:
    """The model inputs of one length bucket (`DreamLLMDataCollator(length_bucket_ratio=...)`), cut to its width."""
    rows = slice(bucket.row_start, bucket.row_end)
    sliced = {key: inputs[key][rows, : bucket.width] for key in ("input_ids", "attention_mask")}
    if bucket.pixel_end > bucket.pixel_start:
        sliced["pixel_values"] = inputs["pixel_values"][bucket.pixel_start : bucket.pixel_end]
    return sliced


class DreamLLMTrainer(SFTTrainer):
    """`SFTTrainer` for DreamLLM (see the module docstring).

    Args:
        model: a `DreamLLMForConditionalGeneration` (or a PEFT model around one) with the stage's `requires_grad`
            flags set.
        args: an `SFTConfig`; `remove_unused_columns` and dataset preparation are turned off (the samples are
            already encoded, and carry columns the model does not take).
        diffusion_loss: the frozen decoder's loss; it is moved to the training device, outside the optimizer.
        decoder_folder: where `unet/`, `vae/`, `scheduler/` are copied from into every saved folder.
        lm_loss_weight, diffusion_loss_weight, condition_drop_prob: default to the model config's values.
        save_merged: LoRA runs only: save plain folders with the adapters merged in instead of adapters.
        adapter_base_model: the base model an adapter names (default: `decoder_folder`, as an absolute path).
    """

    # Both loss terms are means over one micro-batch: the Trainer divides by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model,
        args: SFTConfig,
        *,
        diffusion_loss: DreamLLMDiffusionLoss,
        decoder_folder: str | Path,
        processing_class,
        data_collator=None,
        lm_loss_weight: float | None = None,
        diffusion_loss_weight: float | None = None,
        condition_drop_prob: float | None = None,
        save_merged: bool = False,
        adapter_base_model: str | None = None,
        **kwargs,
    ):
        args.remove_unused_columns = False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if data_collator is None:
            data_collator = DreamLLMDataCollator(
                processing_class.tokenizer.pad_token_id, args.pad_to_multiple_of, LENGTH_BUCKET_RATIO
            )
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )
        # The LM term is a per-batch token mean computed here: no token counting across micro-batches.
        self.model_accepts_loss_kwargs = False
        config = self._dreamllm().config
        pick = lambda value, default: default if value is None else value  # noqa: E731
        self.lm_loss_weight = pick(lm_loss_weight, config.lm_loss_weight)
        self.diffusion_loss_weight = pick(diffusion_loss_weight, config.diffusion_loss_weight)
        self.condition_drop_prob = pick(condition_drop_prob, config.condition_drop_prob)
        self.decoder_folder = Path(decoder_folder)
        self.save_merged = save_merged
        self.adapter_base_model = adapter_base_model or str(self.decoder_folder.resolve())
        self.diffusion_loss = diffusion_loss.to(self.args.device)
        if args.activation_checkpointing:
            self.diffusion_loss.enable_gradient_checkpointing()
        self._dream_parameters: list[torch.Tensor] | None = None
        self._term_sums = {"train": None, "eval": None}
        self._term_counts = {"train": 0, "eval": 0}
        self._data_counts = Counter()

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator):  # an FSDP launch on CPU processes (see train.cpu_fsdp)
            self.is_fsdp_enabled = True
        plugin = getattr(self.accelerator.state, "fsdp_plugin", None)
        if self.is_fsdp_enabled and plugin is not None and not plugin.transformer_cls_names_to_wrap:
            # The units FSDP shards are the decoder layers of the LLM actually loaded (LlamaDecoderLayer,
            # Qwen2DecoderLayer, ...), unless the launch config names its own.
            plugin.transformer_cls_names_to_wrap = self._dreamllm().model.fsdp_wrap_classes
        keep_frozen_towers_out_of_zero3(self.accelerator)  # CLIP replicated and unhooked under ZeRO-3

    def same_graph_on_every_rank(self) -> bool:
        """FSDP and DeepSpeed gather parameters inside forwards (FSDP, ZeRO-3) and reduce gradients in buckets as
        they become ready (FSDP, ZeRO-2/3), so every rank must run the same forwards and give every trainable
        parameter a gradient, whatever its batch holds. DDP finds unused parameters itself, but it broadcasts buffers
        in every forward and expects one forward per backward: several processes run one forward per step too."""
        return self.is_fsdp_enabled or self.is_deepspeed_enabled or self.args.world_size > 1

    def _reduce_unused_parameters(self, model) -> None:
        if self.is_deepspeed_enabled:  # ZeRO-2/3: gradients reduced in parameter order (see train.deepspeed_zero)
            install_ordered_reduction(self.accelerator)
        # A rank whose batch has no image (or no creation block) leaves the visual projector (or the dream queries)
        # without a gradient; FSDP2 must still reduce-scatter a zero for it, or the ranks' collectives differ.
        if isinstance(model, FSDPModule) and not getattr(model, "_dreamllm_reduces_unused", False):
            model.set_reduce_scatter_unused_params(True)
            model._dreamllm_reduces_unused = True

    # ------------------------------------------------------------------------------------------------ helpers
    def _unwrapped(self, model=None):
        return self.accelerator.unwrap_model(model if model is not None else self.model)

    def _dreamllm(self, model=None):
        """The plain `DreamLLMForConditionalGeneration` (inside DDP/FSDP/DeepSpeed and PEFT wrappers)."""
        unwrapped = self._unwrapped(model)
        return unwrapped.get_base_model() if isinstance(unwrapped, PeftModel) else unwrapped

    def _is_peft(self) -> bool:
        return isinstance(self._unwrapped(), PeftModel)

    def dream_parameters(self) -> list[torch.Tensor]:
        """Trainable parameters of the creation path (queries, condition projector): in a single process, a batch
        without creation blocks ties its zero diffusion loss to them. Read after `accelerator.prepare`."""
        if self._dream_parameters is None:
            self._dream_parameters = [
                param
                for name, param in self._unwrapped().named_parameters()
                if param.requires_grad
                and any(marker in name for marker in DREAM_PARAMETER_MARKERS)
                and type(param.data) is torch.Tensor  # sharded (DTensor) parameters cannot mix with plain tensors
            ]
        return self._dream_parameters

    def null_condition(self, model) -> torch.Tensor:
        """`model.get_null_condition()` through the root module, so FSDP/DeepSpeed hooks run: the same
        `[<s>, <dream_start>, queries, <dream_end>]` pass the pipeline uses for classifier-free guidance."""
        unwrapped = self._unwrapped(model)
        ids = self._dreamllm(model).model.null_condition_ids(device=self.args.device)
        return unwrapped(input_ids=ids, use_cache=False, logits_to_keep=1).condition_embeds

    # --------------------------------------------------------------------------------------------------- loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        data_counts = inputs.pop("data_counts", None)
        targets = inputs.pop("target_pixel_values", None)
        labels = inputs.pop("labels", None)
        buckets = inputs.pop("length_buckets", None)
        # The plain forward, not TRL's fused LM head: it is the forward that returns `condition_embeds`. Rows of
        # very different lengths run as length buckets, each without the longer rows' padding; their condition
        # blocks come back in row order, which is the order of the targets.
        same_graph = self.same_graph_on_every_rank()
        null_row = same_graph and model.training and bool(self.diffusion_loss_weight)
        image_tie = None
        if same_graph:  # every rank calls the same modules in the same order (see train.same_graph)
            self._reduce_unused_parameters(model)
            if null_row:
                null_ids = self._dreamllm(model).model.null_condition_ids(device=inputs["input_ids"].device)
                inputs, labels = append_null_row(inputs, labels, null_ids, self.processing_class.tokenizer.pad_token_id)
            if self.is_deepspeed_enabled:
                inputs, image_tie = project_images_first(self._dreamllm(model), inputs)
        if buckets is None or return_outputs or same_graph:  # one forward per step on every rank
            forwards = [(model(**inputs, use_cache=False), labels)]
        else:
            forwards = [
                (model(**bucket_inputs(inputs, bucket), use_cache=False),
                 None if labels is None else labels[bucket.row_start : bucket.row_end, : bucket.width])
                for bucket in buckets
            ]
        outputs = forwards[0][0]
        zero = torch.zeros((), device=outputs.logits.device)
        # A term weighted 0 is not computed at all (e.g. comprehension-only runs skip the UNet).
        lm_loss = zero
        if labels is not None and self.lm_loss_weight:
            sums, counts = zip(*(causal_lm_loss_sum(output.logits, rows) for output, rows in forwards))
            lm_loss = torch.stack(sums).sum() / torch.stack(counts).sum().clamp(min=1)
        conditions = [output.condition_embeds for output, _ in forwards if output.condition_embeds is not None]
        condition_embeds = torch.cat(conditions) if conditions and self.diffusion_loss_weight else None
        targets = targets if self.diffusion_loss_weight else None
        null = None
        drop_prob = self.condition_drop_prob if model.training else 0.0
        if null_row:  # the last creation block is the null condition's row
            null, condition_embeds = condition_embeds[-1:], condition_embeds[:-1]
            condition_embeds = condition_embeds if len(condition_embeds) else None
        elif drop_prob > 0 and condition_embeds is not None:
            null = self.null_condition(model)
        # Without creation blocks the loss is a zero tied to the creation parameters, so a single process sees
        # them in the graph; under DDP/FSDP/DeepSpeed it is a plain zero, since a parameter used outside the
        # wrapped forward would be reported twice (DDP finds unused parameters itself, the others need nothing).
        anchors = self.dream_parameters() if model is self._unwrapped(model) else ()
        diffusion_loss = self.diffusion_loss(
            condition_embeds, targets, null_condition=null, condition_drop_prob=drop_prob, anchors=anchors
        )
        loss = self.lm_loss_weight * lm_loss + self.diffusion_loss_weight * diffusion_loss
        if null is not None and condition_embeds is None:  # no creation block here: the same graph anyway
            loss = loss + 0.0 * null.float().sum()
        if image_tie is not None:  # no image in this rank's batch: a zero gradient for the visual projector
            loss = loss + 0.0 * image_tie

        mode = "train" if model.training else "eval"
        terms = torch.stack([lm_loss.detach().float(), diffusion_loss.detach().float().to(lm_loss.device)])
        self._term_sums[mode] = terms if self._term_sums[mode] is None else self._term_sums[mode] + terms
        self._term_counts[mode] += 1
        if data_counts and mode == "train":
            self._data_counts.update(data_counts)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Tensors become floats here only, once per logging step (no host sync inside the training step).
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        count = self._term_counts[mode]
        if count:
            means = self.accelerator.reduce(self._term_sums[mode] / count, reduction="mean").tolist()
            logs[f"{prefix}lm_loss"], logs[f"{prefix}diffusion_loss"] = means
            self._term_sums[mode], self._term_counts[mode] = None, 0
        if mode == "train":
            counts = torch.tensor([self._data_counts[key] for key in COUNT_KEYS], device=self.args.device)
            counts = self.accelerator.reduce(counts, reduction="sum").tolist()
            logs.update({f"data/{key}": value for key, value in zip(COUNT_KEYS, counts, strict=True) if value})
        super().log(logs, start_time)

    # ------------------------------------------------------------------------------------------------ saving
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save a plain DreamLLM folder with the decoder and pipeline files, or a LoRA run's adapter."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self._is_peft() and not self.save_merged:
            if self.args.should_save:
                os.makedirs(output_dir, exist_ok=True)
                save_adapter(self._unwrapped(), output_dir, self.adapter_base_model)
                self.processing_class.save_pretrained(output_dir)
                torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
            return
        if self._is_peft():
            if self.args.should_save:
                peft_model = self._unwrapped()
                os.makedirs(output_dir, exist_ok=True)
                peft_model.get_base_model().save_pretrained(output_dir, state_dict=merged_state_dict(peft_model))
                save_adapter(peft_model, os.path.join(output_dir, ADAPTER_SUBFOLDER), self.adapter_base_model)
                self.processing_class.save_pretrained(output_dir)
                torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))
        else:
            if state_dict is not None:
                state_dict = without_tied_copies(self._dreamllm(), state_dict)
            with own_class(self._unwrapped()):
                super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            complete_folder(output_dir, self.decoder_folder)

    def _save_checkpoint(self, model, trial) -> None:
        """Like `Trainer._save_checkpoint`, but written aside and renamed into place: complete or absent."""
        run_dir = self._get_output_dir(trial=trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging = os.path.join(run_dir, name), staging_path(os.path.join(run_dir, name))
        if self.args.should_save:
            clear_staging(final)  # a leftover of an interrupted save
        self.accelerator.wait_for_everyone()
        os.makedirs(staging, exist_ok=True)
        self.store_flos()
        self.save_model(staging, _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(staging)
            self._save_scaler(staging)
            self._save_rng_state(staging)
        if self.args.should_save:
            for callback in self.callback_handler.callbacks + [self.control]:
                if isinstance(callback, ExportableState):  # as Trainer._save_checkpoint does
                    name_, state = type(callback).__name__, callback.state()
                    if isinstance(self.state.stateful_callbacks[name_], list):
                        self.state.stateful_callbacks[name_].append(state)
                    else:
                        self.state.stateful_callbacks[name_] = state
            self.state.save_to_json(os.path.join(staging, TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            publish_folder(staging, final)
            if self.state.best_global_step:
                best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.best_global_step}")
                if os.path.exists(best):
                    self.state.best_model_checkpoint = best
            rotate_checkpoints(
                output_dir=run_dir,
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def save_final(self, output_dir: str | None = None) -> str:
        """Save the trained model as a complete, plain DreamLLM folder (a LoRA run: its adapter folder) at
        `output_dir` (default `args.output_dir`, which may already hold checkpoints): written into a staging sibling,
        which then replaces `output_dir` whole, keeping its checkpoints and logs
        (`dreamllm_common.folders.publish_folder`)."""
        output_dir = output_dir or self.args.output_dir
        staging = staging_path(output_dir)
        if self.args.should_save:
            clear_staging(output_dir)
        self.accelerator.wait_for_everyone()
        self.save_model(str(staging))
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            shutil.rmtree(staging / ADAPTER_SUBFOLDER, ignore_errors=True)  # only for resuming
            adapter = self._is_peft() and not self.save_merged
            publish_folder(staging, output_dir, carry=carried_into_adapter if adapter else carried_into_final)
        self.accelerator.wait_for_everyone()
        return output_dir

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        # LoRA checkpoints hold the adapter, at the root or (saved merged) in `adapter/` beside the plain model.
        target = model if model is not None else self.model
        # Everything the resume reads is checked first: a missing or cut-short file is named, not half-loaded.
        world = self.args.world_size
        try:
            expected = weight_names(self.decoder_folder)  # the tensors of the folder this run started from
        except InputError:
            expected = None  # a decoder-only folder: no tensor list to compare with
        check_resumable(
            resume_from_checkpoint,
            expected=expected,
            rng_file="rng_state.pth" if world <= 1 else f"rng_state_{self.args.process_index}.pth",
            optimizer_files=not (self.is_deepspeed_enabled or self.is_fsdp_enabled),  # they keep their own files
            adapter=isinstance(self._unwrapped(target), PeftModel),
        )
        if isinstance(self._unwrapped(target), PeftModel):
            folder = resume_from_checkpoint
            if not is_adapter_folder(folder):
                folder = os.path.join(resume_from_checkpoint, ADAPTER_SUBFOLDER)
            weights = load_file(os.path.join(folder, ADAPTER_WEIGHTS_NAME))
            set_peft_model_state_dict(self._unwrapped(target), weights)
            return
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)


__all__ = ["DreamLLMTrainer", "carried_into_final", "causal_lm_loss", "complete_folder", "merged_state_dict"]
