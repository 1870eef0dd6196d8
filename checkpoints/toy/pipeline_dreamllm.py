"""DreamLLM as a diffusers pipeline: prompts (text, optionally with input images) become images through the LLM's
dream-query conditions; `generate_interleaved` lets the LLM write documents of text and images
(`interleaved_dreamllm.py`).

One folder is both a transformers remote-code model (its root) and this pipeline: `model_index.json` names the
`llm` and `processor` classes, whose files diffusers' loader finds at the root (no `llm/` subfolder), and the
decoder's subfolders: `unet/` (Stable Diffusion 1.x/2.x, SDXL) or `transformer/` (SD3/SD3.5), `vae/` and
`scheduler/`; how each decoder family is conditioned is `decoders_dreamllm.py`. Every component is optional, as
diffusers means it.
"""

import importlib
import inspect
import json
import math
import numbers
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    ImagePipelineOutput,
    SchedulerMixin,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.guiders.guider_utils import rescale_noise_cfg  # the function of the SD pipeline module, same body
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from transformers import LogitsProcessorList, PreTrainedModel, ProcessorMixin, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

try:  # loaded from a DreamLLM folder by diffusers: the model code sits beside this file.
    # diffusers copies (or downloads) exactly the files this module imports relatively, one level deep, so the
    # configuration module is listed too although only the modeling module uses it.
    from .configuration_dreamllm import DreamLLMConfig  # noqa: F401
    from .decoders_dreamllm import FLOW_MATCHING_SCHEDULERS, decoder_family
    from .interleaved_dreamllm import (
        DreamLLMInterleavedOutput,
        DreamLLMStreamer,
        interleaved_logits_processor,
        write_document,
    )
    from .modeling_dreamllm import DreamLLMForCausalLM
    from .processing_dreamllm import DreamLLMProcessor

    # model_index.json names the llm and processor by their files' module names (`["modeling_dreamllm",
    # "DreamLLMForCausalLM"]`), which diffusers' loader resolves from `sys.modules`, as it does for any component
    # of a library it does not know; this import registered them under diffusers' dynamic-module namespace only.
    for _component_class in (DreamLLMForCausalLM, DreamLLMProcessor):
        sys.modules.setdefault(_component_class.__module__.rsplit(".", 1)[-1], sys.modules[_component_class.__module__])
except ImportError:  # imported as a top-level module (tests, scripts, train.assemble)
    # importlib rather than `from ... import`, which diffusers' import scan would report as missing packages
    DreamLLMForCausalLM = importlib.import_module("modeling_dreamllm").DreamLLMForCausalLM
    DreamLLMProcessor = importlib.import_module("processing_dreamllm").DreamLLMProcessor
    _decoders = importlib.import_module("decoders_dreamllm")
    FLOW_MATCHING_SCHEDULERS, decoder_family = _decoders.FLOW_MATCHING_SCHEDULERS, _decoders.decoder_family
    _interleaved = importlib.import_module("interleaved_dreamllm")
    DreamLLMInterleavedOutput, DreamLLMStreamer = _interleaved.DreamLLMInterleavedOutput, _interleaved.DreamLLMStreamer
    interleaved_logits_processor = _interleaved.interleaved_logits_processor
    write_document = _interleaved.write_document

# Sampling defaults: DPM-Solver++(2M) reaches the quality of 100+ ancestral DDPM steps in 20-30 steps.
DEFAULT_SAMPLER = "DPMSolverMultistepScheduler"
DEFAULT_NUM_INFERENCE_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 7.5
# Files that travel with the pipeline into every folder it saves (diffusers copies the relative imports too).
PIPELINE_FILES = ("pipeline_dreamllm.py", "interleaved_dreamllm.py", "decoders_dreamllm.py")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# The llm and processor are at the folder root (transformers' files); every other component is in the subfolder of
# its name, as diffusers lays pipelines out.
ROOT_COMPONENTS = ("llm", "processor")
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
# Height and width are bounded (at most this many times the decoder's trained side) so that a typo such as 100000
# fails at once instead of allocating latents and attention maps without limit.
MAX_SIZE_FACTOR = 8
IMAGE_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor)


def _index_entry(component) -> list:
    """A component's model_index.json entry: `[library, class]`, `[null, null]` for a component left out. The
    library of a DreamLLM class is its file's module name, however the file was imported (top-level, or by
    diffusers' dynamic-module loader as `diffusers_modules.local.modeling_dreamllm`)."""
    if component is None:
        return [None, None]
    module = type(component).__module__
    library = module.split(".")[0]
    if library not in ("diffusers", "transformers"):
        library = module.rsplit(".", 1)[-1]
    return [library, type(component).__name__]


def write_pipeline_index(folder: str | Path, scheduler_class: str = DEFAULT_SAMPLER) -> Path:
    """Make a DreamLLM folder a diffusers pipeline too: write `model_index.json` and copy this pipeline's files
    beside it. Also upgrades a folder written by an older version (whose index lists the llm as `[null, null]`).

    The llm and processor are entered when the folder root holds them (`config.json`, `processor_config.json`);
    `unet`/`transformer`/`vae` when their subfolders exist; `scheduler` names the class to *sample* with, built from
    `scheduler/scheduler_config.json`, which keeps the noise schedule the decoder was trained with (a flow-matching
    decoder keeps its own flow-matching sampler).

    Example:

    ```python
    >>> write_pipeline_index("dreamllm-7b")  # now also `DiffusionPipeline.from_pretrained("dreamllm-7b", ...)`
    ```
    """
    folder = Path(folder)
    index = {"_class_name": [Path(__file__).stem, DreamLLMPipeline.__name__]}
    index["_diffusers_version"] = diffusers.__version__
    # The root's transformers files, read by diffusers' loader from the root since no `llm/` or `processor/` exists.
    roots = zip(ROOT_COMPONENTS, (DreamLLMForCausalLM, DreamLLMProcessor), ("config.json", "processor_config.json"))
    for name, component_class, config in roots:
        library = component_class.__module__.rsplit(".", 1)[-1]
        index[name] = [library, component_class.__name__] if (folder / config).is_file() else [None, None]
    # Every other component in the subfolder of its name (diffusers' layout), entered by the class its config names;
    # the scheduler by the class to sample with.
    for name in sorted(set(DreamLLMPipeline._get_signature_keys(DreamLLMPipeline)[0]) - set(index)):
        config = next((folder / name).glob("*config.json"), None)
        class_name = config and json.loads(config.read_text())["_class_name"]
        if name == "scheduler" and class_name not in FLOW_MATCHING_SCHEDULERS:
            class_name = scheduler_class
        index[name] = ["diffusers", class_name] if config is not None else [None, None]
    index_file = folder / "model_index.json"
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    here = Path(__file__).parent
    for name in PIPELINE_FILES:
        target = folder / name
        if not target.exists() or not target.samefile(here / name):
            shutil.copyfile(here / name, target)
    return index_file


def _root_has_variant(folder: Path, variant: str) -> bool:
    """Whether the folder root holds transformers weights of `variant` (`model.<variant>.safetensors`, shards or
    their index), which diffusers' loader looks for in component subfolders only."""
    index = folder / f"model.safetensors.index.{variant}.json"
    return any(folder.glob(f"model.{variant}*.safetensors")) or index.is_file()


def _prompt_batch(prompt, name: str = "prompt") -> list[list]:
    """`"a cat"` is one prompt, `[image, "the same cat, painted"]` one interleaved prompt (it holds an image), and a
    list of those a batch; each prompt comes back as a list of `str` / image parts. Anything else is an error naming
    the input."""
    if isinstance(prompt, (str, *IMAGE_TYPES)):
        batch = [[prompt]]
    elif isinstance(prompt, (list, tuple)):
        if len(prompt) == 0:
            raise ValueError(f"`{name}` is an empty list: pass a string, an interleaved list or a list of those")
        if any(isinstance(part, IMAGE_TYPES) for part in prompt):
            batch = [list(prompt)]
        else:
            batch = [[item] if isinstance(item, str) else item for item in prompt]
    else:
        raise TypeError(f"`{name}` must be a string, an interleaved list of strings and images, or a list of those; "
                        f"got {type(prompt).__name__}")
    for index, parts in enumerate(batch):
        if not isinstance(parts, (list, tuple)):
            raise TypeError(f"`{name}`[{index}] must be a string or an interleaved list, got {type(parts).__name__}")
        for part in parts:
            if not isinstance(part, (str, *IMAGE_TYPES)):
                raise TypeError(f"`{name}`[{index}] holds a {type(part).__name__}: prompt parts are strings and images "
                                "(PIL.Image, numpy array or tensor)")
    return [list(parts) for parts in batch]


def _check_positive_int(value, name: str, upper: int | None = None, allow_zero: bool = False):
    lower = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lower:
        raise ValueError(f"`{name}` must be an integer >= {lower}, got {value!r}")
    if upper is not None and value > upper:
        raise ValueError(f"`{name}` must be at most {upper}, got {value}")


def _check_real(value, name: str, lower: float | None = None, upper: float | None = None, open_lower: bool = False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if lower is not None and (value < lower or (open_lower and value == lower)):
        raise ValueError(f"`{name}` must be {'>' if open_lower else '>='} {lower}, got {value}")
    if upper is not None and value > upper:
        raise ValueError(f"`{name}` must be <= {upper}, got {value}")


def _checked_callback_outputs(outputs, latents: torch.Tensor) -> dict:
    """A step-end callback returns a dict of the tensors it replaces; `latents` must keep their shape."""
    if not isinstance(outputs, dict):
        raise TypeError(
            f"callback_on_step_end must return a dict of the tensors it changes (or the `callback_kwargs` it got), "
            f"got {type(outputs).__name__}"
        )
    for name, value in outputs.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"callback_on_step_end returned {name}={type(value).__name__}: tensors only")
    if "latents" in outputs and outputs["latents"].shape != latents.shape:
        raise ValueError(
            f"callback_on_step_end returned latents of shape {tuple(outputs['latents'].shape)}, expected "
            f"{tuple(latents.shape)}"
        )
    return dict(outputs)


# Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.retrieve_timesteps
def retrieve_timesteps(
    scheduler,
    num_inference_steps: int | None = None,
    device: str | torch.device | None = None,
    timesteps: list[int] | None = None,
    sigmas: list[float] | None = None,
    **kwargs,
):
    r"""
    Calls the scheduler's `set_timesteps` method and retrieves timesteps from the scheduler after the call. Handles
    custom timesteps. Any kwargs will be supplied to `scheduler.set_timesteps`.

    Args:
        scheduler (`SchedulerMixin`):
            The scheduler to get timesteps from.
        num_inference_steps (`int`):
            The number of diffusion steps used when generating samples with a pre-trained model. If used, `timesteps`
            must be `None`.
        device (`str` or `torch.device`, *optional*):
            The device to which the timesteps should be moved to. If `None`, the timesteps are not moved.
        timesteps (`list[int]`, *optional*):
            Custom timesteps used to override the timestep spacing strategy of the scheduler. If `timesteps` is passed,
            `num_inference_steps` and `sigmas` must be `None`.
        sigmas (`list[float]`, *optional*):
            Custom sigmas used to override the timestep spacing strategy of the scheduler. If `sigmas` is passed,
            `num_inference_steps` and `timesteps` must be `None`.

    Returns:
        `tuple[torch.Tensor, int]`: A tuple where the first element is the timestep schedule from the scheduler and the
        second element is the number of inference steps.
    """
    if timesteps is not None and sigmas is not None:
        raise ValueError("Only one of `timesteps` or `sigmas` can be passed. Please choose one to set custom values")
    if timesteps is not None:
        accepts_timesteps = "timesteps" in set(inspect.signature(scheduler.set_timesteps).parameters.keys())
        if not accepts_timesteps:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" timestep schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(timesteps=timesteps, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    elif sigmas is not None:
        accept_sigmas = "sigmas" in set(inspect.signature(scheduler.set_timesteps).parameters.keys())
        if not accept_sigmas:
            raise ValueError(
                f"The current scheduler class {scheduler.__class__}'s `set_timesteps` does not support custom"
                f" sigmas schedules. Please check whether you are using the correct scheduler."
            )
        scheduler.set_timesteps(sigmas=sigmas, device=device, **kwargs)
        timesteps = scheduler.timesteps
        num_inference_steps = len(timesteps)
    else:
        scheduler.set_timesteps(num_inference_steps, device=device, **kwargs)
        timesteps = scheduler.timesteps
    return timesteps, num_inference_steps


class DreamLLMPipeline(DiffusionPipeline):
    r"""
    DreamLLM text(+image)-to-image and interleaved generation. The LLM reads the prompt followed by a creation block
    `<dream_start> <im_patch>*Q <dream_end>` (filled with its Q learnable dream queries); its last-layer states
    there, through the condition projector(s), condition a frozen diffusion decoder: the `encoder_hidden_states` of a
    Stable Diffusion UNet (and SDXL's pooled `text_embeds`), or the joint-attention context and pooled projections
    of an SD3 transformer (`decoders_dreamllm.py`).

    Components (each optional: a call needs only the ones its work uses):
        llm ([`DreamLLMForCausalLM`]), processor ([`DreamLLMProcessor`]): the transformers model at the folder root;
            they turn prompts into conditions (`encode_prompt`) and write interleaved documents.
        unet ([`UNet2DConditionModel`]) or transformer ([`SD3Transformer2DModel`]), vae ([`AutoencoderKL`]),
            scheduler ([`SchedulerMixin`]): the decoder, which turns conditions (`prompt_embeds`) into images.

    Sampling defaults: a loaded folder samples with `DPMSolverMultistepScheduler` (DPM-Solver++ 2M) built from the
    folder's scheduler config, which keeps the training noise schedule; 25 steps, guidance 7.5 (the official
    pipeline's default; its demo used 3.5). The official settings are DDPM, 150 steps and guidance 2.0 for COCO FID:

    ```python
    >>> from diffusers import DDPMScheduler, DiffusionPipeline
    >>> pipe = DiffusionPipeline.from_pretrained("path/to/dreamllm", trust_remote_code=True)
    >>> image = pipe("a red fox in the snow").images[0]  # DPM-Solver++, 25 steps, guidance 7.5
    >>> pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)  # official: DDPM, 150 steps, cfg 2.0
    >>> image = pipe("a red fox in the snow", num_inference_steps=150, guidance_scale=2.0).images[0]
    >>> edited = pipe([image, "the same fox, as a watercolour"]).images[0]  # the input image goes through CLIP
    >>> story = pipe.generate_interleaved("A short story with pictures about a fox.", max_images=3, do_sample=True)
    >>> story.segments  # ['Once upon a time ...', <PIL.Image>, '...', <PIL.Image>, ...]
    ```

    Two phases, for low memory (the LLM and the decoder never in memory together):

    ```python
    >>> encoder = DreamLLMPipeline.from_pretrained("path/to/dreamllm", unet=None, vae=None, scheduler=None)
    >>> cond, uncond = encoder.encode_prompt("a red fox", encoder.device, 1, do_classifier_free_guidance=True)
    >>> del encoder
    >>> decoder = DreamLLMPipeline.from_pretrained("path/to/dreamllm", llm=None, processor=None)
    >>> image = decoder(prompt_embeds=cond, negative_prompt_embeds=uncond).images[0]
    ```

    Classifier-free guidance: the unconditional branch is `llm.get_null_condition()` (the creation block after an
    empty prompt), computed in each call; a `negative_prompt` replaces it and is encoded like a prompt. Both
    branches run in one UNet call per step.
    """

    model_cpu_offload_seq = "llm->unet->transformer->vae"
    _optional_components = ["llm", "processor", "unet", "vae", "scheduler", "transformer"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        llm: PreTrainedModel | None,
        processor: ProcessorMixin | None,
        unet: UNet2DConditionModel | None,
        vae: AutoencoderKL | None,
        scheduler: SchedulerMixin | None,
        transformer: SD3Transformer2DModel | None = None,
    ):  # diffusers' loader takes the parameters without a default, and the optional components, as components
        super().__init__()
        self.register_modules(llm=llm, processor=processor, unet=unet, vae=vae, scheduler=scheduler,
                              transformer=transformer)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if getattr(self, "vae", None) else 8
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @property
    def denoiser(self) -> torch.nn.Module | None:
        """The decoder's denoiser: the `unet` (Stable Diffusion 1.x/2.x, SDXL) or the `transformer` (SD3)."""
        return self.unet if getattr(self, "unet", None) is not None else getattr(self, "transformer", None)

    @property
    def decoder(self):
        """The adapter of the denoiser's family (`decoders_dreamllm.decoder_family`), read from its class and config."""
        return decoder_family(type(self.denoiser).__name__, self.denoiser.config)

    def _require(self, work: str, *names: str):
        """A clear error when `work` needs components this pipeline was built without (`denoiser`: the unet or the
        transformer)."""
        missing = [name for name in names if getattr(self, name, None) is None]
        note = " (the denoiser: `transformer` for SD3 folders)" if "denoiser" in missing else ""
        missing = ["unet" if name == "denoiser" else name for name in missing]
        if missing:
            raise ValueError(
                f"{work} needs the pipeline's {', '.join(missing)}{note}, which this pipeline has as None; load it "
                f"with them (or pass them: `DreamLLMPipeline.from_pretrained(folder, {missing[0]}=...)`)"
            )

    # ------------------------------------------------------------------------------------------- loading / saving
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "DreamLLMPipeline":
        r"""
        diffusers' loader (`DiffusionPipeline.from_pretrained`) with this class's code, no `trust_remote_code`
        needed. Two additions: `variant` also selects the llm's weights at the folder root
        (`model.<variant>.safetensors`), which diffusers looks for in component subfolders only; and a Hub repo is
        downloaded whole first (`revision`, `token`, `cache_dir`, `local_files_only`, `force_download` apply), as
        diffusers' Hub download expects a custom component's code in its subfolder, where this layout has none.

        Example:

        ```python
        >>> pipe = DreamLLMPipeline.from_pretrained("path/to/dreamllm", dtype=torch.bfloat16)
        >>> pipe = DreamLLMPipeline.from_pretrained("path/to/dreamllm", variant="fp16", dtype=torch.float16)
        >>> decoder_only = DreamLLMPipeline.from_pretrained("path/to/dreamllm", llm=None, processor=None)
        ```
        """
        folder, variant = Path(pretrained_model_name_or_path), kwargs.get("variant")
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            hub = {name: kwargs.pop(name) for name in HUB_KWARGS if name in kwargs}
            folder = Path(snapshot_download(str(pretrained_model_name_or_path), **hub))
            pretrained_model_name_or_path = folder
        if variant is not None and "llm" not in kwargs and _root_has_variant(folder, variant):
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            dtype = dtype.get("llm", dtype.get("default")) if isinstance(dtype, dict) else dtype
            loading = {"variant": variant, "dtype": dtype, "device_map": kwargs.get("device_map")}
            kwargs["llm"] = DreamLLMForCausalLM.from_pretrained(folder, **{k: v for k, v in loading.items() if v})
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """diffusers' `load_config`, with `_class_name` read as this class: a folder's index names its own copy of
        this file for the generic loader, but `DreamLLMPipeline.from_pretrained` runs this class's code."""
        outputs = super().load_config(*args, **kwargs)
        config = outputs[0] if isinstance(outputs, tuple) else outputs
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = cls.__name__
        return outputs

    def save_pretrained(
        self,
        save_directory: str | Path,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ):
        """Write the one-folder layout: llm and processor at the root (transformers remote code with its `.py`
        files), each decoder component in its subfolder, then `model_index.json` and the pipeline's files. Left-out
        components are `[null, null]` in the index and load back as None. `variant` names the weight files of every
        model (`model.fp16.safetensors`, `unet/diffusion_pytorch_model.fp16.safetensors`, ...); `push_to_hub` (or
        `pipe.push_to_hub(repo_id)`) uploads exactly that folder with diffusers' model card."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        model_kwargs = {"variant": variant}
        if max_shard_size is not None:
            model_kwargs["max_shard_size"] = max_shard_size
        if self.llm is not None:
            # Components loaded by diffusers' dynamic-module loader carry no `_auto_class`: register them so that
            # transformers writes `auto_map` and copies the code files next to the weights.
            type(self.llm.config).register_for_auto_class()
            type(self.llm).register_for_auto_class("AutoModelForCausalLM")
            self.llm.save_pretrained(save_directory, **model_kwargs)  # transformers 5: safetensors only
        if self.processor is not None:
            type(self.processor).register_for_auto_class()
            self.processor.save_pretrained(save_directory)
        for name, component in self.components.items():  # the decoder: each in the subfolder of its name
            if component is None or name in ROOT_COMPONENTS:
                continue
            if isinstance(component, torch.nn.Module):
                component.save_pretrained(save_directory / name, safe_serialization=safe_serialization, **model_kwargs)
            else:
                component.save_pretrained(save_directory / name)
        write_pipeline_index(save_directory)
        index_file = save_directory / "model_index.json"
        index = json.loads(index_file.read_text())
        index.update({name: _index_entry(getattr(self, name)) for name in self.components})
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        if push_to_hub:
            self._upload(save_directory, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        **save_kwargs,
    ):
        """Save the pipeline into a temporary folder (with diffusers' model card, or the repo's own) and upload it
        with `huggingface_hub.upload_folder`.

        Example:

        ```python
        >>> pipe.push_to_hub("me/dreamllm-toy", variant="fp16")
        ```
        """
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, **save_kwargs)
            return self._upload(Path(folder), repo_id, commit_message, private, token, create_pr)

    def _upload(
        self,
        folder: Path,
        repo_id: str | None = None,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
    ):
        import huggingface_hub
        from diffusers.utils.hub_utils import load_or_create_model_card, populate_model_card

        repo = huggingface_hub.create_repo(repo_id or folder.name, private=private, token=token, exist_ok=True)
        repo_id = repo.repo_id
        if not (folder / "README.md").exists():
            populate_model_card(load_or_create_model_card(repo_id, token=token, is_pipeline=True)).save(
                str(folder / "README.md")
            )
        return huggingface_hub.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            commit_message=commit_message or "Upload DreamLLM pipeline",
            token=token,
            create_pr=create_pr,
        )

    # ------------------------------------------------------------------------------------------------ properties
    @property
    def guidance_scale(self) -> float:
        return self._guidance_scale

    @property
    def guidance_rescale(self) -> float:
        return self._guidance_rescale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale > 1

    @property
    def cross_attention_kwargs(self) -> dict | None:
        return self._cross_attention_kwargs

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ------------------------------------------------------------------------------------------------ conditions
    @torch.no_grad()
    def null_condition(self) -> torch.Tensor:
        """The unconditional branch of guidance, `llm.get_null_condition()`: the condition of the creation block
        after an empty prompt, `(1, Q, condition_hidden_size)`. Computed for each call (one forward of Q + 3 tokens,
        small beside the denoising loop), never cached: it depends on the whole llm, so a loaded or switched adapter,
        or a training step, changes it."""
        self._require("The null condition of classifier-free guidance", "llm")
        # On the execution device: under sequential offload the llm's own weights sit on `meta`.
        return self.llm.get_null_condition(device=self._execution_device)

    def _text_ids(self, text: str) -> list[int]:
        """Token ids of prompt text, read literally: a typed `<dream>`, `<im_patch>` or `</s>` stays text, so blocks
        and their conditions come only from the pipeline."""
        return self.processor.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def _prompt_ids(self, parts: list, creation: bool) -> tuple[list[int], list]:
        """`<s>`, each text part's ids and each image's comprehension block, then (with `creation`) one creation
        block: the layout the processor gives `text<image>text<dream>`, with the text never read as placeholders."""
        ids, images = list(self.processor.prefix_ids), []
        for part in parts:
            if isinstance(part, str):
                ids += self._text_ids(part)
            else:
                ids += self.processor.image_block()
                images.append(part)
        if creation:
            ids += self.processor.dream_block()
        return ids, images

    def _check_length(self, length: int, name: str):
        max_positions = self.llm.config.text_config.max_position_embeddings
        if length > max_positions:
            raise ValueError(f"{name} takes {length} tokens, more than the llm's {max_positions} positions")

    def _pixel_values(self, images: list, device: torch.device) -> torch.Tensor | None:
        if not images:
            return None
        return self.processor.image_processor(images, return_tensors="pt")["pixel_values"].to(device)

    def _creation_conditions(self, prompts: list[list], device: torch.device) -> torch.Tensor:
        """Each prompt followed by one creation block, all in one left-padded LLM call: `(len(prompts), Q, C)`,
        row i the condition of prompt i."""
        rows, images = [], []
        for index, parts in enumerate(prompts):
            ids, prompt_images = self._prompt_ids(parts, creation=True)
            self._check_length(len(ids), f"prompt {index}")
            rows.append(ids)
            images += prompt_images
        padded = self.processor.tokenizer.pad({"input_ids": rows}, padding_side="left", return_tensors="pt")
        attention_mask = padded["attention_mask"].to(device)
        # Positions count real tokens only, so a left-padded prompt is encoded as it would be alone.
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        outputs = self.llm(
            input_ids=padded["input_ids"].to(device),
            attention_mask=attention_mask,
            position_ids=position_ids,
            pixel_values=self._pixel_values(images, device),
            use_cache=False,
            logits_to_keep=1,  # only the hidden states matter, not full-vocabulary logits
            return_dict=True,
        )
        conditions = outputs.condition_embeds
        if conditions is None or conditions.shape[0] != len(prompts):
            found = 0 if conditions is None else conditions.shape[0]
            raise ValueError(f"{len(prompts)} prompts gave {found} creation conditions: each needs exactly one")
        return conditions


    @torch.no_grad()
    def encode_prompt(
        self,
        prompt,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        r"""
        Encode prompts (and negative prompts, in the same LLM call) into UNet conditions `(B*n, Q, C)`, row by row in
        prompt order; with guidance and no negative prompt the unconditional branch is the null condition.
        Prompt text is read literally: `<dream>`, `<image>` or block tokens typed in it are text, never blocks.
        Needs the llm and processor only for what is not given as embeddings.

        Example:

        ```python
        >>> cond, uncond = pipe.encode_prompt(["a cat", "a dog"], pipe.device, 1, True)
        >>> image = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond).images
        ```
        """
        _check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        prompts = _prompt_batch(prompt) if prompt_embeds is None else []
        batch_size = len(prompts) if prompt_embeds is None else prompt_embeds.shape[0]
        negatives = []
        if do_classifier_free_guidance and negative_prompt is not None and negative_prompt_embeds is None:
            negatives = _prompt_batch(negative_prompt, "negative_prompt")
            if len(negatives) == 1:
                negatives = negatives * batch_size
            if len(negatives) != batch_size:
                raise ValueError(f"got {len(negatives)} negative prompts for {batch_size} prompts")
        if prompts or negatives:
            self._require("Encoding a prompt", "llm", "processor")
            conditions = self._creation_conditions(prompts + negatives, device)
            if prompts:
                prompt_embeds = conditions[: len(prompts)]
            if negatives:
                negative_prompt_embeds = conditions[len(prompts) :]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if self.llm is None:
                raise ValueError(
                    "Guidance without `negative_prompt_embeds` needs the null condition, which the llm computes; this "
                    "pipeline has llm=None: pass the `negative_prompt_embeds` that `encode_prompt` gave with the llm"
                )
            negative_prompt_embeds = self.null_condition().expand(batch_size, -1, -1)

        # The conditions are the denoiser's input: its dtype where it is here, the llm's where it is not (phase 1).
        dtype = self.denoiser.dtype if self.denoiser is not None else prompt_embeds.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    # ------------------------------------------------------------------------------------------------- denoising
    def default_size(self) -> tuple[int, int]:
        """The denoiser's sample size times the VAE factor: the size the decoder was trained at."""
        sample_size = self.denoiser.config.sample_size
        sample_height, sample_width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        return sample_height * self.vae_scale_factor, sample_width * self.vae_scale_factor

    def check_sampling(self, height: int, width: int, num_inference_steps: int | None, guidance_scale: float,
                       timesteps: list[int] | None = None, sigmas: list[float] | None = None):
        """The image sampling settings, shared by `__call__` and `generate_interleaved`: each named when wrong."""
        max_side = MAX_SIZE_FACTOR * max(self.default_size())
        for name, value in (("height", height), ("width", width)):
            _check_positive_int(value, name, upper=max_side)
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be divisible by {self.vae_scale_factor}, got {height}x{width}")
        multiple = self.vae_scale_factor * (self.denoiser.config.get("patch_size") or 1)  # SD3 patchifies latents
        if height % multiple or width % multiple:
            raise ValueError(f"height and width must be divisible by {multiple} for this {self.decoder.name} decoder "
                             f"(VAE factor x patch size), got {height}x{width}")
        if timesteps is None and sigmas is None:
            _check_positive_int(num_inference_steps, "num_inference_steps",
                                upper=self.scheduler.config.num_train_timesteps)
        for name, schedule in (("timesteps", timesteps), ("sigmas", sigmas)):
            if schedule is not None and len(schedule) == 0:
                raise ValueError(f"`{name}` is empty")
        _check_real(guidance_scale, "guidance_scale")

    def check_inputs(
        self,
        prompt,
        height: int,
        width: int,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ):
        """diffusers' checks (one of prompt / embeddings, size a multiple of the VAE factor, known callback tensors),
        with prompts and embeddings checked for type and shape so that bad input fails at once with its name."""
        if height % self.vae_scale_factor != 0 or width % self.vae_scale_factor != 0:
            raise ValueError(f"`height` and `width` have to be divisible by {self.vae_scale_factor} but are {height} "
                             f"and {width}.")
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}: {unknown}")
        if (prompt is None) == (prompt_embeds is None):
            raise ValueError("pass exactly one of `prompt` or `prompt_embeds`")
        if prompt is not None:
            _prompt_batch(prompt)
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise ValueError("pass at most one of `negative_prompt` or `negative_prompt_embeds`")
        if negative_prompt is not None:
            _prompt_batch(negative_prompt, "negative_prompt")
        condition_size = self.decoder.condition_width  # the context, then the pooled part (decoders_dreamllm.py)
        for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if embeds is not None and (
                not isinstance(embeds, torch.Tensor) or embeds.ndim != 3 or embeds.shape[-1] != condition_size
                or embeds.shape[0] == 0
            ):
                shape = tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__
                raise ValueError(f"`{name}` must be a tensor (batch, num_dream_queries, {condition_size}), got {shape}")
        if prompt_embeds is not None and negative_prompt_embeds is not None:
            if prompt_embeds.shape != negative_prompt_embeds.shape:
                raise ValueError(
                    f"prompt_embeds {tuple(prompt_embeds.shape)} and negative_prompt_embeds "
                    f"{tuple(negative_prompt_embeds.shape)} must have the same shape"
                )

    # Adapted from
    # diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.prepare_latents:
    # given latents must have the batch's shape.
    def prepare_latents(self, batch_size, num_channels_latents, height, width, dtype, device, generator, latents=None):
        shape = (batch_size, num_channels_latents, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(f"got {len(generator)} generators for a batch of {batch_size} images")
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif not isinstance(latents, torch.Tensor) or tuple(latents.shape) != shape:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(
                f"`latents` must have shape {shape} (images, latent channels, height / {self.vae_scale_factor}, "
                f"width / {self.vae_scale_factor}), got {got}"
            )
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * getattr(self.scheduler, "init_noise_sigma", 1.0)  # flow matching starts from plain noise

    # Copied from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion.StableDiffusionPipeline.prepare_extra_step_kwargs
    def prepare_extra_step_kwargs(self, generator, eta):
        # prepare extra kwargs for the scheduler step, since not all schedulers have the same signature
        # eta (η) is only used with the DDIMScheduler, it will be ignored for other schedulers.
        # eta corresponds to η in DDIM paper: https://huggingface.co/papers/2010.02502
        # and should be between [0, 1]

        accepts_eta = "eta" in set(inspect.signature(self.scheduler.step).parameters.keys())
        extra_step_kwargs = {}
        if accepts_eta:
            extra_step_kwargs["eta"] = eta

        # check if the scheduler accepts generator
        accepts_generator = "generator" in set(inspect.signature(self.scheduler.step).parameters.keys())
        if accepts_generator:
            extra_step_kwargs["generator"] = generator
        return extra_step_kwargs

    def predict_noise(self, latent_model_input: torch.Tensor, t: torch.Tensor, conditions: torch.Tensor
                      ) -> torch.Tensor:
        """The one call of the denoiser: on `latent_model_input` at step `t`, conditioned by the dream-query
        `conditions` the way its family takes them (`decoders_dreamllm.py`, shared with the training loss)."""
        image_size = tuple(side * self.vae_scale_factor for side in latent_model_input.shape[-2:])
        return self.decoder.predict(self.denoiser, latent_model_input, t, conditions,
                                    attention_kwargs=self.cross_attention_kwargs, image_size=image_size)

    @torch.no_grad()
    def __call__(
        self,
        prompt=None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        negative_prompt=None,
        num_images_per_prompt: int = 1,
        eta: float = 0.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        cross_attention_kwargs: dict[str, Any] | None = None,
        guidance_rescale: float = 0.0,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
    ) -> ImagePipelineOutput | tuple:
        r"""
        Create images.

        Args:
            prompt (`str`, interleaved `list`, or a `list` of those):
                Raw text (no chat template, as the model was trained for creation), or a list of text and images
                such as `[image, "the same cat, in watercolour"]` (images go through CLIP into the LLM). A batch is
                a list of such prompts, left-padded into one LLM call.
            height, width (`int`, *optional*): defaults to the UNet's sample size times the VAE scale factor.
            num_inference_steps (`int`, defaults to 25), timesteps, sigmas: the sampling schedule.
            guidance_scale (`float`, defaults to 7.5): classifier-free guidance; 1 disables it.
            negative_prompt: replaces the null condition as the unconditional branch; encoded like a prompt.
            num_images_per_prompt, eta, generator, latents: as in `StableDiffusionPipeline`.
            prompt_embeds, negative_prompt_embeds (`torch.Tensor` of shape `(B, Q, C)`): precomputed conditions
                (`encode_prompt`); with both, the llm and processor are not needed.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"` (no vae needed).
            return_dict (`bool`): an [`ImagePipelineOutput`] or a tuple `(images,)`.
            cross_attention_kwargs, guidance_rescale: as in `StableDiffusionPipeline`.
            callback_on_step_end, callback_on_step_end_tensor_inputs: called as `callback(pipe, step, timestep,
                tensors)` after each step; returned tensors (`latents`, `prompt_embeds`, ...) replace the current.

        Example:

        ```python
        >>> images = pipe(["a red circle", "a blue square"], generator=torch.manual_seed(0)).images
        ```
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        self._require("Creating images", "denoiser", "scheduler", *(("vae",) if output_type != "latent" else ()))

        # 0. Default height and width to unet
        default_height, default_width = self.default_size()
        height = default_height if height is None else height
        width = default_width if width is None else width

        # 1. Check inputs. Raise error if not correct
        self.check_sampling(height, width, num_inference_steps, guidance_scale, timesteps, sigmas)
        self.check_inputs(
            prompt,
            height,
            width,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            callback_on_step_end_tensor_inputs,
        )
        _check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        _check_real(guidance_rescale, "guidance_rescale", lower=0.0, upper=1.0)
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"`callback_on_step_end` must be callable, got {type(callback_on_step_end).__name__}")
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

        # 2. Define call parameters
        device = self._execution_device

        # 3. Encode input prompt
        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )
        # For classifier free guidance, we need to do two forward passes.
        # Here we concatenate the unconditional and text embeddings into a single batch
        # to avoid doing two forward passes
        if self.do_classifier_free_guidance:
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])

        # 4. Prepare timesteps
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )

        # 5. Prepare latent variables
        num_channels_latents = self.denoiser.config.in_channels
        latents = self.prepare_latents(
            prompt_embeds.shape[0] // (2 if self.do_classifier_free_guidance else 1),
            num_channels_latents,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )

        # 6. Prepare extra step kwargs.
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)

        # 7. Denoising loop
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue

                # expand the latents if we are doing classifier free guidance
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                if hasattr(self.scheduler, "scale_model_input"):  # flow-matching samplers take the latents as they are
                    latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)

                # predict the noise residual
                noise_pred = self.predict_noise(latent_model_input, t, prompt_embeds)

                # perform guidance
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)

                if self.do_classifier_free_guidance and self.guidance_rescale > 0.0:
                    # Based on 3.4. in https://huggingface.co/papers/2305.08891
                    noise_pred = rescale_noise_cfg(noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale)

                # compute the previous noisy sample x_t -> x_t-1
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = _checked_callback_outputs(
                        callback_on_step_end(self, i, t, callback_kwargs), latents
                    )

                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)

                # call the callback, if provided
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()

        # 8. Decode
        if output_type != "latent":
            latents = latents / self.vae.config.scaling_factor
            shift_factor = getattr(self.vae.config, "shift_factor", None)
            if shift_factor is not None:  # SD3's VAE: latents were (z - shift) * scale
                latents = latents + shift_factor
            image = self.vae.decode(latents, return_dict=False, generator=generator)[0]
            image = self.image_processor.postprocess(image, output_type=output_type)
        else:
            image = latents

        # Offload all models
        self.maybe_free_model_hooks()

        if not return_dict:
            return (image,)

        return ImagePipelineOutput(images=image)

    # ------------------------------------------------------------------------------------ interleaved generation
    def _interleaved_prompt(self, prompt) -> tuple[list[int], list]:
        """Prompt ids and images for raw text / an interleaved list (text read literally), or for chat messages
        (Vicuna template; their text may not hold the tokenizer's special tokens, which would become blocks)."""
        is_chat = isinstance(prompt, (list, tuple)) and len(prompt) > 0 and isinstance(prompt[0], dict)
        if not is_chat:
            (parts,) = _prompt_batch(prompt)
            return self._prompt_ids(parts, creation=False)
        from transformers.image_utils import load_image

        reserved = sorted({token.content for token in self.processor.tokenizer.added_tokens_decoder.values()})
        images = []
        for index, message in enumerate(prompt):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) or "content" not in message:
                raise ValueError(f"message {index} must be a dict with a `role` and a `content`, got {message!r}")
            content = message["content"]
            items = [{"type": "text", "text": content}] if isinstance(content, str) else content
            if not isinstance(items, (list, tuple)):
                raise ValueError(f"message {index}: `content` must be a string or a list of items")
            for item in items:
                kind = item.get("type") if isinstance(item, dict) else None
                if kind == "image":
                    images.append(item["image"] if "image" in item else load_image(item.get("url") or item["path"]))
                elif kind == "text" and isinstance(item.get("text"), str):
                    forged = [token for token in reserved if token in item["text"]]
                    if forged:
                        raise ValueError(f"message {index} text holds the reserved token(s) {forged}: images go in "
                                         "`{'type': 'image'}` items; blocks are written by the pipeline")
                else:
                    raise ValueError(f"message {index}: unsupported content item {item!r} (text and image items only)")
        text = self.processor.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=False)
        inputs = self.processor(text=text, images=images or None, add_eos=False, truncation=False, return_tensors=None)
        return list(inputs["input_ids"][0]), images

    @torch.no_grad()
    def generate_interleaved(
        self,
        prompt,
        max_new_tokens: int = 256,
        max_images: int = 4,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        num_inference_steps: int = DEFAULT_NUM_INFERENCE_STEPS,
        generator: torch.Generator | None = None,
        height: int | None = None,
        width: int | None = None,
        logits_processor: LogitsProcessorList | Callable | None = None,
        stopping_criteria: StoppingCriteriaList | None = None,
        streamer: BaseStreamer | None = None,
    ) -> DreamLLMInterleavedOutput:
        r"""
        Let the LLM write a document of text and images. Text is sampled with the KV cache; when the model writes
        `<dream_start>`, the creation block is read into the same cache, its condition becomes an image through this
        pipeline's `__call__` (`prompt_embeds=`), and the image is read back through CLIP as `<im_start> ...
        <im_end>`; writing goes on from there. The history is never re-encoded: every document token passes through
        the LLM once. The loop itself is `interleaved_dreamllm.write_document`.

        Args:
            prompt: raw text, an interleaved list (`[image, "text", ...]`), or chat messages (`[{"role": "user",
                "content": [{"type": "image", "image": img}, {"type": "text", "text": "..."}]}]`, rendered with the
                processor's chat template and a generation prompt).
            max_new_tokens (`int`): sampled tokens at most (blocks the runtime inserts are not counted).
            max_images (`int`): images at most; then `<dream_start>` can no longer be sampled.
            do_sample, temperature, top_p: greedy by default (also at `temperature` 0); otherwise sampling through
                transformers' `TemperatureLogitsWarper` and `TopPLogitsWarper`.
            guidance_scale, num_inference_steps, height, width: image sampling, as in `__call__`.
            generator: drives token sampling and image noise.
            logits_processor: transformers `LogitsProcessorList` (or one processor), applied before the DreamLLM
                masks (tokens the runtime writes itself, the image budget).
            stopping_criteria: transformers `StoppingCriteriaList`, checked on the document after each token or
                image; a stop gives `finish_reason="stop"`.
            streamer: a transformers streamer (`put`/`end`), e.g. [`DreamLLMStreamer`], which also yields the images.

        Example:

        ```python
        >>> out = pipe.generate_interleaved("A recipe, a picture per step:", max_images=3, do_sample=True, top_p=0.9)
        >>> out.segments, out.num_llm_tokens == out.document_length
        ```
        """
        if streamer is not None and not all(callable(getattr(streamer, name, None)) for name in ("put", "end")):
            raise TypeError(f"`streamer` must have `put` and `end` methods (a transformers streamer), got "
                            f"{type(streamer).__name__}")
        try:
            self._require("Interleaved generation", "llm", "processor", "denoiser", "vae", "scheduler")
            default_height, default_width = self.default_size()
            height = default_height if height is None else height
            width = default_width if width is None else width
            self.check_sampling(height, width, num_inference_steps, guidance_scale)
            _check_positive_int(max_new_tokens, "max_new_tokens", allow_zero=True)
            _check_positive_int(max_images, "max_images", allow_zero=True)
            _check_real(temperature, "temperature", lower=0.0)
            _check_real(top_p, "top_p", lower=0.0, upper=1.0, open_lower=True)
            device = self._execution_device
            prompt_ids, images = self._interleaved_prompt(prompt)
            self._check_length(len(prompt_ids), "the prompt")
            pixel_values = self._pixel_values(images, device)
        except Exception:
            if streamer is not None:  # a refused request ends the stream too: its reader is not left waiting
                streamer.end()
            raise
        do_sample = do_sample and temperature > 0  # temperature 0: the limit of sampling, greedy
        dream_block, image_block = self.processor.dream_block(), self.processor.image_block()

        def draw(condition: torch.Tensor) -> PIL.Image.Image:
            return self(
                prompt_embeds=condition, height=height, width=width, num_inference_steps=num_inference_steps,
                guidance_scale=guidance_scale, generator=generator,
            ).images[0]

        return write_document(
            self.llm,
            prompt_ids,
            pixel_values,
            dream_block,
            image_block,
            draw=draw,
            encode_image=lambda image: self.processor.image_processor(image, return_tensors="pt")["pixel_values"],
            decode_text=lambda ids: self.processor.tokenizer.decode(ids, skip_special_tokens=True),
            logits_processor=interleaved_logits_processor(
                self.llm.config, max_images, len(dream_block) + len(image_block), do_sample, temperature, top_p,
                logits_processor,
            ),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            generator=generator,
            stopping_criteria=stopping_criteria,
            streamer=streamer,
            device=device,
        )


__all__ = ["DreamLLMInterleavedOutput", "DreamLLMPipeline", "DreamLLMStreamer", "write_pipeline_index"]
