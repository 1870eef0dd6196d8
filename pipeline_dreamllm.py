"""DreamLLM as a diffusers pipeline: prompts (text, optionally with input images) become images through the LLM's
dream-query conditions, and the LLM writes free-form interleaved documents of text and images in one cached pass.

The same folder is a transformers remote-code model (its root) and a diffusers pipeline (`model_index.json`, this
file, `unet/`, `vae/`, `scheduler/`); `write_pipeline_index` adds the diffusers half.
"""

import importlib
import inspect
import json
import math
import numbers
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import diffusers
import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
# Stable Diffusion's two helpers, imported from diffusers modules that hold the same functions ("Copied from" the SD
# pipeline) without importing the SD pipeline module, whose `CLIPImageProcessor` import warns where torchvision is absent.
from diffusers.guiders.guider_utils import rescale_noise_cfg
from diffusers.modular_pipelines.ltx.before_denoise import retrieve_timesteps
from diffusers.pipelines.pipeline_utils import SUPPORTED_DEVICE_MAP
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import PreTrainedModel, ProcessorMixin

try:  # loaded from a DreamLLM folder by diffusers: the model code sits beside this file.
    # diffusers copies (or downloads) exactly the files this module imports relatively, one level deep, so the
    # configuration module is listed too although only the modeling module uses it.
    from .configuration_dreamllm import DreamLLMConfig  # noqa: F401
    from .modeling_dreamllm import DreamLLMForCausalLM
    from .processing_dreamllm import DreamLLMProcessor
except ImportError:  # imported as a top-level module (tests, scripts, train.assemble)
    # importlib rather than `from ... import`, which diffusers' import scan would report as missing packages
    DreamLLMForCausalLM = importlib.import_module("modeling_dreamllm").DreamLLMForCausalLM
    _processing = importlib.import_module("processing_dreamllm")
    DreamLLMProcessor = _processing.DreamLLMProcessor

# Sampling defaults: DPM-Solver++(2M) reaches the quality of 100+ ancestral DDPM steps in 20-30 steps.
DEFAULT_SAMPLER = "DPMSolverMultistepScheduler"
DEFAULT_NUM_INFERENCE_STEPS = 25
DEFAULT_GUIDANCE_SCALE = 7.5
ROOT_COMPONENTS = ("llm", "processor")
DECODER_COMPONENTS = ("unet", "vae", "scheduler")
HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "force_download")
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# Height and width are bounded (at most this many times the decoder's trained side) so that a typo such as 100000
# fails at once instead of allocating latents and attention maps without limit.
MAX_SIZE_FACTOR = 8
IMAGE_TYPES = (PIL.Image.Image, np.ndarray, torch.Tensor)


def write_pipeline_index(folder: str | Path, scheduler_class: str = DEFAULT_SAMPLER) -> Path:
    """Make a DreamLLM folder a diffusers pipeline too: write `model_index.json` and copy this file beside it.

    `llm` and `processor` are `[null, null]`: they live at the folder root (the transformers half), which a
    model_index entry cannot point at; `DreamLLMPipeline` loads them itself. `scheduler` names the class to *sample*
    with; it is built from `scheduler/scheduler_config.json`, which keeps the noise schedule the decoder was trained
    with.

    Example:

    ```python
    >>> write_pipeline_index("dreamllm-7b")  # now also `DiffusionPipeline.from_pretrained("dreamllm-7b", ...)`
    ```
    """
    folder = Path(folder)
    module_file = Path(__file__)
    index = {"_class_name": [module_file.stem, DreamLLMPipeline.__name__], "_diffusers_version": diffusers.__version__}
    index.update({name: [None, None] for name in ROOT_COMPONENTS})
    for name in ("unet", "vae"):
        index[name] = ["diffusers", json.loads((folder / name / "config.json").read_text())["_class_name"]]
    index["scheduler"] = ["diffusers", scheduler_class]
    index_file = folder / "model_index.json"
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    target = folder / module_file.name
    if not target.exists() or not target.samefile(module_file):
        shutil.copyfile(module_file, target)
    return index_file


@dataclass
class DreamLLMInterleavedOutput(BaseOutput):
    """Output of [`DreamLLMPipeline.generate_interleaved`].

    Args:
        segments (`list[str | PIL.Image.Image]`): what the model wrote after the prompt, in order.
        token_ids (`torch.LongTensor` of shape `(document_length,)`): the whole document as the LLM read it: prompt,
            sampled tokens and every creation / comprehension block (a final `</s>` is not read, so not included).
        num_prompt_tokens (`int`): tokens of the prompt.
        num_llm_tokens (`int`): tokens passed through the LLM for this document; equals `document_length` because
            the history is never re-encoded (the null condition of guidance is cached on the pipeline, not counted).
        document_length (`int`): `len(token_ids)`.
        finish_reason (`str`): `"eos"` (the model wrote `</s>`) or `"length"` (`max_new_tokens` sampled).
    """

    segments: list
    token_ids: torch.LongTensor
    num_prompt_tokens: int
    num_llm_tokens: int
    document_length: int
    finish_reason: str


class _CachedDocument:
    """A document being written: each token goes through the LLM exactly once, on top of one growing KV cache."""

    def __init__(self, llm: PreTrainedModel, device: torch.device):
        self.llm, self.device = llm, device
        self.cache = None
        self.token_ids: list[int] = []
        self.num_llm_tokens = 0

    def read(self, ids: list[int], **model_inputs):
        """Feed `ids` (whole blocks only) and return the model output at the last of them."""
        outputs = self.llm(
            input_ids=torch.tensor([ids], device=self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            return_dict=True,  # attribute access below, whatever the config's return_dict
            **model_inputs,
        )
        self.cache = outputs.cache
        self.token_ids += ids
        self.num_llm_tokens += len(ids)
        return outputs


def _prompt_batch(prompt, name: str = "prompt") -> list[list]:
    """`"a cat"` is one prompt, `[image, "the same cat, painted"]` one interleaved prompt (it holds an image), and a
    list of those a batch; each prompt comes back as a list of `str` / image parts. Anything else is an error naming
    the input."""
    if isinstance(prompt, str) or isinstance(prompt, IMAGE_TYPES):
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


def _sample_next_token(
    logits: torch.Tensor, do_sample: bool, temperature: float, top_p: float, generator: torch.Generator | None
) -> int:
    """Greedy (also at `temperature` 0), or sampling at `temperature` from the smallest set of tokens whose mass
    reaches `top_p`."""
    if not do_sample or temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        sorted_probs[sorted_probs.cumsum(0) - sorted_probs > top_p] = 0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


def _local_folder(pretrained_model_name_or_path: str | Path, **hub_kwargs) -> Path:
    """A local folder as is; a Hub repo id downloaded whole (the two libraries' files share one repo)."""
    path = Path(pretrained_model_name_or_path)
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(pretrained_model_name_or_path), **hub_kwargs))


def _has_variant(folder: Path, variant: str) -> bool:
    """Whether `folder` holds weights of `variant`, as diffusers decides it: `name.<variant>[-shard].ext` files (and
    transformers' `model.safetensors.index.<variant>.json`)."""
    if not folder.is_dir():
        return False
    for path in folder.iterdir():
        parts = path.name.split(".")
        if len(parts) > 2 and (parts[1].startswith(variant) or path.name.endswith(f".index.{variant}.json")):
            return True
    return False


def _components_with_variant(folder: Path, variant: str | None) -> set[str]:
    """The components (`llm` at the root, the decoder's subfolders) that have `variant` weights; like diffusers, a
    variant that no component has is an error, and components without it load their default weights."""
    if variant is None:
        return set()
    found = {name for name in ("unet", "vae") if _has_variant(folder / name, variant)}
    if any(path.is_file() and path.name.startswith("model.") for path in folder.iterdir()) and _has_variant(
        folder, variant
    ):
        found.add("llm")
    if not found:
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
            f"available in {folder}."
        )
    return found


def _check_device_map(device_map):
    """`device_map` as diffusers' pipeline loader accepts it."""
    if device_map is None:
        return
    if not isinstance(device_map, str):
        raise ValueError(f"`device_map` must be a string, got {type(device_map).__name__}")
    if device_map not in SUPPORTED_DEVICE_MAP:
        raise NotImplementedError(f"{device_map} not supported. Supported strategies are: "
                                  f"{', '.join(sorted(set(SUPPORTED_DEVICE_MAP)))}")


def _generic_loader_call() -> dict | None:
    """The local variables of the `DiffusionPipeline.from_pretrained` call that is constructing this pipeline, if any.

    diffusers passes `None` for a `[null, null]` model_index component and hands the pipeline none of its loading
    arguments; the llm and processor are such components (they live at the folder root, which no model_index entry
    can name). Loading them with the caller's folder, variant, dtype and device map therefore reads that call's own
    arguments from its frame; `tests/test_pipeline.py` checks that they arrive.
    """
    target = inspect.unwrap(DiffusionPipeline.from_pretrained.__func__).__code__
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code is target:
                return dict(frame.f_locals)
            frame = frame.f_back
        return None
    finally:
        del frame


def _load_root_components(
    folder: Path,
    llm: PreTrainedModel | None,
    processor: ProcessorMixin | None,
    dtype: torch.dtype | None,
    variant: str | None = None,
    device_map: str | dict | None = None,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Load the llm and processor from the folder root with this module's own classes (no remote code)."""
    if llm is None:
        loading = {"dtype": dtype, "variant": variant}
        if device_map is not None:
            loading["device_map"] = device_map
        llm = DreamLLMForCausalLM.from_pretrained(folder, **loading)
    if processor is None:
        # Passing the config spares the tokenizer loader from resolving the folder's remote code.
        processor = DreamLLMProcessor.from_pretrained(folder, config=llm.config)
    return llm, processor


class DreamLLMPipeline(DiffusionPipeline):
    r"""
    DreamLLM text(+image)-to-image and interleaved generation. The LLM reads the prompt followed by a creation block
    `<dream_start> <im_patch>*Q <dream_end>` (filled with its Q learnable dream queries); its last-layer states
    there, through the condition projector, are the `encoder_hidden_states` of a frozen Stable Diffusion UNet.

    Components:
        llm ([`DreamLLMForCausalLM`]), processor ([`DreamLLMProcessor`]): the transformers model at the folder root.
        unet ([`UNet2DConditionModel`]), vae ([`AutoencoderKL`]), scheduler ([`SchedulerMixin`]): the decoder.

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

    Classifier-free guidance: the unconditional branch is `llm.get_null_condition()` (the creation block after an
    empty prompt), computed once and cached; a `negative_prompt` replaces it and is encoded like a prompt. Both
    branches run in one UNet call per step.
    """

    model_cpu_offload_seq = "llm->unet->vae"
    # Every component is required. diffusers accepts `[null, null]` model_index entries only for components it calls
    # optional, so the two that live at the folder root are listed here for its loader's sake; the constructor loads
    # them from the folder when that loader passes None, and refuses None anywhere else.
    _optional_components = list(ROOT_COMPONENTS)
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]

    def __init__(
        self,
        llm: PreTrainedModel,
        processor: ProcessorMixin,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: SchedulerMixin,
    ):
        super().__init__()
        components = {"llm": llm, "processor": processor, "unet": unet, "vae": vae, "scheduler": scheduler}
        missing = [name for name, value in components.items() if value is None]
        folder = None
        if missing and set(missing) <= set(ROOT_COMPONENTS):
            loader = _generic_loader_call()
            if loader is not None:  # `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`
                folder = self._load_for_generic_loader(loader, components)
                missing = []
        if missing:
            raise ValueError(
                f"DreamLLMPipeline needs every component; {', '.join(missing)} missing. Load a DreamLLM folder with "
                "`DreamLLMPipeline.from_pretrained(folder)` (or `DiffusionPipeline.from_pretrained(folder, "
                "trust_remote_code=True)`), or pass llm, processor, unet, vae and scheduler."
            )
        self.register_modules(**components)
        # Saved at the folder root, never in `llm/` or `processor/` subfolders (see `write_pipeline_index`).
        self.register_to_config(**{name: (None, None) for name in ROOT_COMPONENTS})
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._null_condition_cache: tuple[tuple, torch.Tensor] | None = None
        self._training_schedule: tuple[SchedulerMixin | None, str] = (None, "")
        if folder is not None:
            self._keep_training_schedule(folder)

    # ------------------------------------------------------------------------------------------- loading / saving
    @staticmethod
    def _load_for_generic_loader(loader: dict, components: dict) -> Path:
        """Fill in the llm and processor of `components` from the folder diffusers' generic loader is reading, with
        its variant, dtype and device map (the llm follows the UNet's dtype and device when those do not name it)."""
        # A local folder as given; a Hub repo whole (diffusers downloads only the model_index components' files,
        # not the root weights of the llm).
        folder = _local_folder(
            loader["pretrained_model_name_or_path"], **{k: loader[k] for k in HUB_KWARGS if loader.get(k) is not None}
        )
        unet = components["unet"]
        device_map = loader.get("final_device_map")
        if isinstance(device_map, dict):  # "balanced": the llm joins the UNet's device
            device_map = {"": str(unet.device)}
        variant = loader.get("variant")
        llm_variant = variant if "llm" in _components_with_variant(folder, variant) else None
        dtype = _component_dtype(loader.get("dtype"), "llm") or unet.dtype
        components["llm"], components["processor"] = _load_root_components(
            folder, components["llm"], components["processor"], dtype, llm_variant, device_map
        )
        return folder

    def _keep_training_schedule(self, folder: Path):
        """Remember the folder's scheduler config (the training noise schedule) so that `save_pretrained` writes it
        back unchanged while the pipeline still samples with the scheduler built from it at load time."""
        self._training_schedule = (self.scheduler, (folder / "scheduler" / "scheduler_config.json").read_text())

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs) -> "DreamLLMPipeline":
        r"""
        Load a DreamLLM folder or Hub repo with this class's own code (no `trust_remote_code` needed): the llm and
        processor from the root, `unet`/`vae`/`scheduler` from their subfolders with the classes named in
        `model_index.json` (the scheduler thus becomes the sampler, see the class docstring).

        Args:
            dtype (`torch.dtype` or `dict`, *optional*): as in diffusers, e.g. `{"llm": torch.bfloat16, "default":
                torch.float16}`; the llm follows the UNet when it has no entry.
            variant (`str`, *optional*): load `*.<variant>.safetensors` weights (e.g. `"fp16"`) where a component
                has them, as diffusers does; a variant that no component has raises `ValueError`.
            device_map (`str`, *optional*): `"cpu"` or the accelerator (`"cuda"`): every component is loaded there.
            llm, processor, unet, vae, scheduler: components to use instead of loading them.
            revision, token, cache_dir, local_files_only, force_download: for a Hub repo.

        Example:

        ```python
        >>> pipe = DreamLLMPipeline.from_pretrained("path/to/dreamllm", dtype=torch.bfloat16)
        >>> pipe = DreamLLMPipeline.from_pretrained("path/to/dreamllm", variant="fp16", dtype=torch.float16)
        ```
        """
        folder = _local_folder(pretrained_model_name_or_path, **{k: kwargs.pop(k) for k in HUB_KWARGS if k in kwargs})
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        dtype = dtype if dtype is not None else torch_dtype
        variant = kwargs.pop("variant", None)
        device_map = kwargs.pop("device_map", None)
        _check_device_map(device_map)
        if device_map == "balanced":
            raise NotImplementedError(
                "DreamLLMPipeline.from_pretrained places every component on one device: pass device_map='cpu' or the "
                "accelerator, or use `enable_model_cpu_offload()`"
            )
        kwargs.pop("trust_remote_code", None)  # nothing is imported from the folder
        kwargs.pop("low_cpu_mem_usage", None)  # transformers and diffusers load without initialising weights anyway
        index_file = folder / "model_index.json"
        if not index_file.is_file():
            raise ValueError(f"{folder} is not a DreamLLM pipeline folder: it has no model_index.json")
        index = json.loads(index_file.read_text())
        with_variant = _components_with_variant(folder, variant)
        components = {name: kwargs.pop(name) for name in (*ROOT_COMPONENTS, *DECODER_COMPONENTS) if name in kwargs}
        if kwargs:
            raise TypeError(f"DreamLLMPipeline.from_pretrained got unexpected arguments {sorted(kwargs)}")
        scheduler_loaded = "scheduler" not in components
        for name in DECODER_COMPONENTS:
            if components.get(name) is None:
                components[name] = _load_decoder_component(
                    folder, name, index[name], _component_dtype(dtype, name),
                    variant=variant if name in with_variant else None, device_map=device_map,
                )
        components["llm"], components["processor"] = _load_root_components(
            folder,
            components.get("llm"),
            components.get("processor"),
            dtype=_component_dtype(dtype, "llm") or components["unet"].dtype,
            variant=variant if "llm" in with_variant else None,
            device_map=device_map,
        )
        pipe = cls(**components)
        if scheduler_loaded:
            pipe._keep_training_schedule(folder)
        pipe.register_to_config(_name_or_path=str(pretrained_model_name_or_path))
        if device_map is not None:
            pipe.hf_device_map = device_map
        return pipe

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
        files), `unet/`, `vae/`, `scheduler/`, then `model_index.json` and this file. `variant` names the weight
        files of every model (`model.fp16.safetensors`, `unet/diffusion_pytorch_model.fp16.safetensors`, ...).
        `push_to_hub` (here or through `pipe.push_to_hub(repo_id)`) uploads exactly that folder. While the pipeline
        samples with the scheduler it was loaded with, `scheduler/` keeps the loaded folder's (training) config and
        `model_index.json` names the sampler class; a scheduler swapped in since is saved as is."""
        save_directory = Path(save_directory)
        super().save_pretrained(
            save_directory, safe_serialization=safe_serialization, variant=variant, max_shard_size=max_shard_size
        )
        loaded_sampler, training_schedule = self._training_schedule
        if self.scheduler is loaded_sampler:  # still the load-time sampler: the folder keeps its training config
            (save_directory / "scheduler" / "scheduler_config.json").write_text(training_schedule)
        # Components loaded by diffusers' dynamic-module loader carry no `_auto_class`: register them so that
        # transformers writes `auto_map` and copies the code files next to the weights.
        type(self.llm.config).register_for_auto_class()
        type(self.llm).register_for_auto_class("AutoModelForCausalLM")
        type(self.processor).register_for_auto_class()
        llm_kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
        self.llm.save_pretrained(save_directory, variant=variant, **llm_kwargs)  # transformers 5: safetensors only
        self.processor.save_pretrained(save_directory)
        write_pipeline_index(save_directory, scheduler_class=type(self.scheduler).__name__)
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

    def _start_call(self, guidance_scale: float, guidance_rescale: float, cross_attention_kwargs: dict | None):
        self._guidance_scale = guidance_scale
        self._guidance_rescale = guidance_rescale
        self._cross_attention_kwargs = cross_attention_kwargs
        self._interrupt = False

    # ------------------------------------------------------------------------------------------------ conditions
    @torch.no_grad()
    def null_condition(self) -> torch.Tensor:
        """The unconditional branch of guidance, as `llm.get_null_condition()`: the condition of the creation block
        after an empty prompt, `(1, Q, condition_hidden_size)`. Computed once and cached; recomputed when the llm
        or its dream queries change (another object, or an in-place update)."""
        queries = self.llm.model.dream_queries.weight
        key = (id(self.llm), id(queries), queries._version, queries.dtype)
        if self._null_condition_cache is None or self._null_condition_cache[0] != key:
            # The ids on the execution device: under sequential offload the llm's own weights sit on `meta`.
            ids = self.llm.model.null_condition_ids(device=self._execution_device)
            condition = self.llm(input_ids=ids, use_cache=False, logits_to_keep=1, return_dict=True).condition_embeds
            self._null_condition_cache = (key, condition)
        return self._null_condition_cache[1]

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
        prompt order; without a negative prompt the unconditional branch is the cached null condition. Prompt text
        is read literally: `<dream>`, `<image>` or block tokens typed in it are text, never blocks.

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
            conditions = self._creation_conditions(prompts + negatives, device)
            if prompts:
                prompt_embeds = conditions[: len(prompts)]
            if negatives:
                negative_prompt_embeds = conditions[len(prompts) :]
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt_embeds = self.null_condition().expand(batch_size, -1, -1)

        dtype = self.unet.dtype
        prompt_embeds = prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.to(device=device, dtype=dtype)
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds

    # ------------------------------------------------------------------------------------------------- denoising
    def _max_side(self) -> int:
        height, width = self._default_size(None, None)
        return MAX_SIZE_FACTOR * max(height, width)

    def check_inputs(
        self,
        prompt,
        height: int,
        width: int,
        negative_prompt=None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        num_inference_steps: int | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        num_images_per_prompt: int = 1,
        output_type: str = "pil",
        guidance_scale: float = DEFAULT_GUIDANCE_SCALE,
        guidance_rescale: float = 0.0,
    ):
        """diffusers' checks (one of prompt / embeddings, size a multiple of the VAE factor, known callback tensors)
        and more: every argument's type and range, so that bad input fails at once with the argument's name."""
        max_side = self._max_side()
        for name, value in (("height", height), ("width", width)):
            _check_positive_int(value, name, upper=max_side)
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"height and width must be divisible by {self.vae_scale_factor}, got {height}x{width}")
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
        condition_size = self.unet.config.cross_attention_dim
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
        if timesteps is None and sigmas is None:
            _check_positive_int(num_inference_steps, "num_inference_steps",
                                upper=self.scheduler.config.num_train_timesteps)
        for name, schedule in (("timesteps", timesteps), ("sigmas", sigmas)):
            if schedule is not None and len(schedule) == 0:
                raise ValueError(f"`{name}` is empty")
        _check_positive_int(num_images_per_prompt, "num_images_per_prompt")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}")
        _check_real(guidance_scale, "guidance_scale")
        _check_real(guidance_rescale, "guidance_rescale", lower=0.0, upper=1.0)

    def _default_size(self, height: int | None, width: int | None) -> tuple[int, int]:
        """The UNet's sample size times the VAE factor where `height` / `width` is None (0 stays 0: an error)."""
        sample_size = self.unet.config.sample_size
        sample_height, sample_width = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
        height = sample_height * self.vae_scale_factor if height is None else height
        width = sample_width * self.vae_scale_factor if width is None else width
        return height, width

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
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator, eta: float) -> dict:
        # Not every scheduler's `step` takes `eta` (DDIM only) or a generator (the stochastic ones).
        accepted = set(inspect.signature(self.scheduler.step).parameters)
        extra = {"eta": eta} if "eta" in accepted else {}
        if "generator" in accepted:
            extra["generator"] = generator
        return extra

    def _denoise(
        self,
        prompt_embeds: torch.Tensor,
        negative_prompt_embeds: torch.Tensor | None,
        height: int,
        width: int,
        num_inference_steps: int,
        generator=None,
        latents: torch.Tensor | None = None,
        timesteps: list[int] | None = None,
        sigmas: list[float] | None = None,
        eta: float = 0.0,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ) -> torch.Tensor:
        """The Stable Diffusion sampling loop, shared by `__call__` and `generate_interleaved`; returns latents."""
        device = self._execution_device
        if self.do_classifier_free_guidance:
            # One UNet call per step for both branches.
            prompt_embeds = torch.cat([negative_prompt_embeds, prompt_embeds])
        timesteps, num_inference_steps = retrieve_timesteps(
            self.scheduler, num_inference_steps, device, timesteps, sigmas
        )
        latents = self.prepare_latents(
            prompt_embeds.shape[0] // (2 if self.do_classifier_free_guidance else 1),
            self.unet.config.in_channels,
            height,
            width,
            prompt_embeds.dtype,
            device,
            generator,
            latents,
        )
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=num_inference_steps) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                latent_model_input = torch.cat([latents] * 2) if self.do_classifier_free_guidance else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                noise_pred = self.unet(
                    latent_model_input,
                    t,
                    encoder_hidden_states=prompt_embeds,
                    cross_attention_kwargs=self.cross_attention_kwargs,
                    return_dict=False,
                )[0]
                if self.do_classifier_free_guidance:
                    noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                    noise_pred = noise_pred_uncond + self.guidance_scale * (noise_pred_text - noise_pred_uncond)
                    if self.guidance_rescale > 0.0:
                        noise_pred = rescale_noise_cfg(
                            noise_pred, noise_pred_text, guidance_rescale=self.guidance_rescale
                        )
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs, return_dict=False)[0]

                if callback_on_step_end is not None:
                    callback_kwargs = {}
                    for k in callback_on_step_end_tensor_inputs:  # a loop: a comprehension cannot see locals()
                        callback_kwargs[k] = locals()[k]
                    callback_outputs = _checked_callback_outputs(
                        callback_on_step_end(self, i, t, callback_kwargs), latents
                    )
                    latents = callback_outputs.pop("latents", latents)
                    prompt_embeds = callback_outputs.pop("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = callback_outputs.pop("negative_prompt_embeds", negative_prompt_embeds)
                if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                    progress_bar.update()
        return latents

    def _decode(self, latents: torch.Tensor, output_type: str, generator=None):
        if output_type == "latent":
            return latents
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
        return self.image_processor.postprocess(image, output_type=output_type)

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
            prompt_embeds, negative_prompt_embeds (`torch.Tensor` of shape `(B, Q, C)`): precomputed conditions.
            output_type (`str`, defaults to `"pil"`): `"pil"`, `"np"`, `"pt"` or `"latent"`.
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
        height, width = self._default_size(height, width)
        self.check_inputs(
            prompt,
            height,
            width,
            negative_prompt,
            prompt_embeds,
            negative_prompt_embeds,
            callback_on_step_end_tensor_inputs,
            num_inference_steps=num_inference_steps,
            timesteps=timesteps,
            sigmas=sigmas,
            num_images_per_prompt=num_images_per_prompt,
            output_type=output_type,
            guidance_scale=guidance_scale,
            guidance_rescale=guidance_rescale,
        )
        if callback_on_step_end is not None and not callable(callback_on_step_end):
            raise TypeError(f"`callback_on_step_end` must be callable, got {type(callback_on_step_end).__name__}")
        self._start_call(guidance_scale, guidance_rescale, cross_attention_kwargs)
        device = self._execution_device

        prompt_embeds, negative_prompt_embeds = self.encode_prompt(
            prompt,
            device,
            num_images_per_prompt,
            self.do_classifier_free_guidance,
            negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
        )
        latents = self._denoise(
            prompt_embeds,
            negative_prompt_embeds,
            height,
            width,
            num_inference_steps,
            generator=generator,
            latents=latents,
            timesteps=timesteps,
            sigmas=sigmas,
            eta=eta,
            callback_on_step_end=callback_on_step_end,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
        )
        image = self._decode(latents, output_type, generator)
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

    def _never_sampled_ids(self) -> list[int]:
        """Tokens the runtime writes itself (block slots, closers, placeholders) or that are not text."""
        config = self.llm.config
        ids = [
            config.image_patch_token_id,
            config.image_start_token_id,
            config.image_end_token_id,
            config.dream_end_token_id,
            config.image_token_id,
            config.dream_token_id,
            config.text_config.pad_token_id,
        ]
        return [token for token in ids if token is not None]

    def _create_image(self, document: _CachedDocument, generator, **sampling) -> tuple[PIL.Image.Image, torch.Tensor]:
        """Read a creation block into the cache, draw its image, read that image back as a comprehension block;
        returns the image and the logits after `<im_end>`."""
        condition = document.read(self.processor.dream_block()).condition_embeds.to(self.unet.dtype)
        uncond = self.null_condition().to(condition) if self.do_classifier_free_guidance else None
        latents = self._denoise(condition, uncond, generator=generator, **sampling)
        image = self._decode(latents, "pil", generator)[0]
        pixel_values = self.processor.image_processor(image, return_tensors="pt")["pixel_values"]
        outputs = document.read(self.processor.image_block(), pixel_values=pixel_values.to(document.device))
        return image, outputs.logits[0, -1]

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
        callback: Callable[[str | PIL.Image.Image], None] | None = None,
        logits_processor: Callable[[torch.LongTensor, torch.FloatTensor], torch.FloatTensor] | None = None,
    ) -> DreamLLMInterleavedOutput:
        r"""
        Let the LLM write a document of text and images. Text is sampled with the KV cache; when the model writes
        `<dream_start>`, the creation block is read into the same cache, its condition drives the diffusion decoder
        (with guidance), and the new image is read back through CLIP as `<im_start> ... <im_end>`; writing goes on
        from there. The history is never re-encoded: every document token passes through the LLM once.

        Args:
            prompt: raw text, an interleaved list (`[image, "text", ...]`), or chat messages (`[{"role": "user",
                "content": [{"type": "image", "image": img}, {"type": "text", "text": "..."}]}]`, rendered with the
                processor's chat template and a generation prompt).
            max_new_tokens (`int`): sampled tokens at most (blocks the runtime inserts are not counted).
            max_images (`int`): images at most; then `<dream_start>` can no longer be sampled.
            do_sample, temperature, top_p: greedy by default; otherwise nucleus sampling.
            guidance_scale, num_inference_steps, height, width: image sampling, as in `__call__`.
            generator: drives token sampling and image noise.
            callback: called with each segment (`str` or `PIL.Image.Image`) as soon as it is complete.
            logits_processor: `fn(input_ids (1, L), scores (1, V)) -> scores`, e.g. a transformers
                `LogitsProcessorList`; applied before the masks above.

        Example:

        ```python
        >>> out = pipe.generate_interleaved("A recipe with a picture per step:", max_images=3, do_sample=True,
        ...                                 top_p=0.9, callback=print)
        >>> out.segments, out.num_llm_tokens == out.document_length
        ```
        """
        height, width = self._default_size(height, width)
        self.check_inputs(
            "", height, width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale
        )
        _check_positive_int(max_new_tokens, "max_new_tokens", allow_zero=True)
        _check_positive_int(max_images, "max_images", allow_zero=True)
        _check_real(temperature, "temperature", lower=0.0)
        _check_real(top_p, "top_p", lower=0.0, upper=1.0, open_lower=True)
        if callback is not None and not callable(callback):
            raise TypeError(f"`callback` must be callable, got {type(callback).__name__}")
        self._start_call(guidance_scale, 0.0, None)
        sampling = {"height": height, "width": width, "num_inference_steps": num_inference_steps}
        config = self.llm.config
        eos_token_id = config.text_config.eos_token_id
        device = self._execution_device
        max_positions = config.text_config.max_position_embeddings
        image_tokens = len(self.processor.dream_block()) + len(self.processor.image_block())

        prompt_ids, images = self._interleaved_prompt(prompt)
        self._check_length(len(prompt_ids), "the prompt")
        document = _CachedDocument(self.llm, device)
        outputs = document.read(prompt_ids, pixel_values=self._pixel_values(images, device))
        num_prompt_tokens, logits = document.num_llm_tokens, outputs.logits[0, -1]
        never_sampled = self._never_sampled_ids()

        segments, text_ids, num_images, finish_reason = [], [], 0, "length"

        def emit(segment):
            segments.append(segment)
            if callback is not None:
                callback(segment)

        for _ in range(max_new_tokens):
            scores = logits.float()
            if logits_processor is not None:
                scores = logits_processor(torch.tensor([document.token_ids], device=device), scores[None])[0]
            scores[never_sampled] = float("-inf")
            room = max_positions - len(document.token_ids)
            if room < 1:  # the llm's context is full
                break
            if num_images >= max_images or room < image_tokens:
                scores[config.dream_start_token_id] = float("-inf")
            token = _sample_next_token(scores, do_sample, temperature, top_p, generator)
            if token == eos_token_id:
                finish_reason = "eos"
                break
            if token != config.dream_start_token_id:
                text_ids.append(token)
                logits = document.read([token]).logits[0, -1]
                continue
            if text_ids:
                emit(self.processor.tokenizer.decode(text_ids, skip_special_tokens=True))
                text_ids = []
            image, logits = self._create_image(document, generator, **sampling)
            num_images += 1
            emit(image)
        if text_ids:
            emit(self.processor.tokenizer.decode(text_ids, skip_special_tokens=True))
        self.maybe_free_model_hooks()
        return DreamLLMInterleavedOutput(
            segments=segments,
            token_ids=torch.tensor(document.token_ids),
            num_prompt_tokens=num_prompt_tokens,
            num_llm_tokens=document.num_llm_tokens,
            document_length=len(document.token_ids),
            finish_reason=finish_reason,
        )


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


def _component_dtype(dtype: torch.dtype | dict | None, name: str) -> torch.dtype | None:
    if isinstance(dtype, dict):
        return dtype.get(name, dtype.get("default"))
    return dtype


def _load_decoder_component(
    folder: Path,
    name: str,
    entry: list,
    dtype: torch.dtype | None,
    variant: str | None = None,
    device_map: str | None = None,
):
    """Load `unet`/`vae`/`scheduler` from its subfolder with the diffusers class named in model_index.json."""
    library, class_name = entry
    component_class = getattr(diffusers, class_name, None) if library == "diffusers" else None
    if component_class is None:
        raise ValueError(f"model_index.json entry {name}={entry} is not a diffusers class")
    kwargs = {}
    if issubclass(component_class, torch.nn.Module):
        kwargs = {"dtype": dtype, "variant": variant, "device_map": device_map}
        kwargs = {key: value for key, value in kwargs.items() if value is not None}
    return component_class.from_pretrained(folder, subfolder=name, **kwargs)


__all__ = ["DreamLLMPipeline", "DreamLLMInterleavedOutput", "write_pipeline_index"]
