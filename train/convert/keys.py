"""Map the tensor names of an official DreamLLM checkpoint to this project's, and check them against the model.

Official layout (see `omni/models/dreamllm`): the LLM state dict (`model.*`, `lm_head.*`) in `pytorch_model.bin`, and
one file per plugin (`dream_embedding.bin`, `clip_vision_embedding.bin`, `stable_diffusion_head.bin`). FSDP
full-state dumps also hold the plugin tensors inside `pytorch_model.bin`, under `model.<plugin>.` or `<plugin>.`.
Ours: one transformers state dict (`model.language_model.*`, `model.vision_tower.*`, ...) plus the diffusers UNet
and VAE state dicts.

    >>> plan = plan_conversion(main_store, {"dream_embedding": dream_store, ...})
    >>> plan.tensors["model"]["model.dream_queries.weight"].origin
    'dream_embedding.bin: dream_queries'
"""

from dataclasses import dataclass, field

import torch

from train.convert.sources import ConversionError, TensorStore

MODEL, UNET, VAE = "model", "unet", "vae"  # the three state dicts written
DROPPED_SUFFIXES = (  # buffers recomputed at load time
    ".rotary_emb.inv_freq",  # LLaMA 4.35 RoPE, persistent there
    ".embeddings.position_ids",  # CLIP, persistent in older transformers
)
MAX_NAMES_SHOWN = 20


@dataclass(frozen=True)
class Rule:
    """Official name `prefix + rest` becomes `target + rest` in state dict `component`. A prefix that does not end
    with "." names one exact tensor."""

    prefix: str
    component: str
    target: str

    def apply(self, name: str) -> str | None:
        if self.prefix.endswith("."):
            return self.target + name[len(self.prefix) :] if name.startswith(self.prefix) else None
        return self.target if name == self.prefix else None

    def invert(self, component: str, key: str) -> str | None:
        if component != self.component:
            return None
        if self.prefix.endswith("."):
            return self.prefix + key[len(self.target) :] if key.startswith(self.target) else None
        return self.prefix if key == self.target else None


@dataclass(frozen=True)
class Plugin:
    """An official plugin: saved alone as `<name>.bin`, or inside a full dump under `dump_prefix`."""

    name: str
    dump_prefix: str
    rules: tuple[Rule, ...]


LLM_RULES = (
    Rule("model.", MODEL, "model.language_model."),
    Rule("lm_head.", MODEL, "lm_head."),
)
PLUGINS = (
    Plugin("dream_embedding", "model.dream_embedding.", (Rule("dream_queries", MODEL, "model.dream_queries.weight"),)),
    Plugin(
        "clip_vision_embedding",
        "model.clip_vision_embedding.",
        (
            # transformers 4.x CLIPVisionModel wraps everything in `vision_model.`; 5.x does not.
            Rule("clip_vision_model.vision_model.", MODEL, "model.vision_tower."),
            Rule("projector.projector.", MODEL, "model.vision_projector."),
        ),
    ),
    Plugin(
        "stable_diffusion_head",
        "stable_diffusion_head.",
        (
            Rule("unet.", UNET, ""),
            Rule("vae.", VAE, ""),
            Rule("projector.projector.", MODEL, "model.condition_projector."),
        ),
    ),
)
# Official (1, Q, D) parameters stored by us as (Q, D) embedding tables.
SQUEEZED_KEYS = {(MODEL, "model.dream_queries.weight")}


@dataclass(frozen=True)
class PlannedTensor:
    """One output tensor and where it comes from."""

    component: str
    key: str
    store: TensorStore
    source_key: str

    @property
    def squeeze(self) -> bool:
        return (self.component, self.key) in SQUEEZED_KEYS

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self.store.shape(self.source_key)
        return shape[1:] if self.squeeze and len(shape) > 1 and shape[0] == 1 else shape

    @property
    def origin(self) -> str:
        return f"{self.store.where(self.source_key)}: {self.source_key}"

    def load(self, dtype: torch.dtype) -> torch.Tensor:
        tensor = self.store.get(self.source_key)
        if self.squeeze and tensor.dim() > 1 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.is_floating_point():
            tensor = tensor.to(dtype)
        return tensor.contiguous()


@dataclass
class ConversionPlan:
    tensors: dict[str, dict[str, PlannedTensor]] = field(default_factory=lambda: {MODEL: {}, UNET: {}, VAE: {}})
    dropped: list[str] = field(default_factory=list)  # known buffers, not weights
    superseded: list[str] = field(default_factory=list)  # plugin tensors of a full dump when the plugin file exists
    unknown: list[str] = field(default_factory=list)  # names no rule maps

    def add(self, component: str, key: str, store: TensorStore, source_key: str):
        existing = self.tensors[component].get(key)
        if existing is not None:
            origin = f"{store.where(source_key)}: {source_key}"
            raise ConversionError(f"{component} tensor {key} would come from both {existing.origin} and {origin}")
        self.tensors[component][key] = PlannedTensor(component, key, store, source_key)

    def get(self, component: str, key: str) -> PlannedTensor:
        planned = self.tensors[component].get(key)
        if planned is None:
            raise ConversionError(
                f"missing required tensor {key} (official: {' or '.join(official_names(component, key))})"
            )
        return planned


def _map(plan: ConversionPlan, store: TensorStore, key: str, rules: tuple[Rule, ...], name: str):
    for rule in rules:
        target = rule.apply(name)
        if target is not None:
            plan.add(rule.component, target, store, key)
            return
    plan.unknown.append(f"{store.where(key)}: {key}")


def plan_conversion(main: TensorStore, plugin_stores: dict[str, TensorStore | None]) -> ConversionPlan:
    """Decide where every input tensor goes. Plugin files win over the plugin tensors of a full dump, as in the
    official loader (it overwrites the plugin from `<name>.bin`)."""
    plan = ConversionPlan()
    for key in main.keys():
        if key.endswith(DROPPED_SUFFIXES):
            plan.dropped.append(key)
            continue
        plugin = next((p for p in PLUGINS if key.startswith(p.dump_prefix)), None)
        if plugin is None:
            _map(plan, main, key, LLM_RULES, key)
        elif plugin_stores.get(plugin.name) is not None:
            plan.superseded.append(key)
        else:
            _map(plan, main, key, plugin.rules, key[len(plugin.dump_prefix) :])
    for plugin in PLUGINS:
        store = plugin_stores.get(plugin.name)
        for key in store.keys() if store is not None else ():
            if key.endswith(DROPPED_SUFFIXES):
                plan.dropped.append(f"{store.where(key)}: {key}")
            else:
                _map(plan, store, key, plugin.rules, key)
    return plan


def official_names(component: str, key: str) -> list[str]:
    """Where an output tensor would be found in an official checkpoint, for error messages."""
    names = [f"pytorch_model.bin: {name}" for rule in LLM_RULES if (name := rule.invert(component, key))]
    for plugin in PLUGINS:
        for rule in plugin.rules:
            name = rule.invert(component, key)
            if name:
                names += [f"{plugin.name}.bin: {name}", f"pytorch_model.bin: {plugin.dump_prefix}{name}"]
    return names or ["<no official name>"]


def _names(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_NAMES_SHOWN])
    return shown + (f", ... and {len(items) - MAX_NAMES_SHOWN} more" if len(items) > MAX_NAMES_SHOWN else "")


def check_plan(plan: ConversionPlan, expected: dict[str, dict[str, tuple[int, ...]]]) -> None:
    """Raise one `ConversionError` listing every missing tensor, shape mismatch and tensor the model has no place
    for, per state dict (`expected`: component -> key -> shape of the freshly built model)."""
    problems = []
    for component, shapes in expected.items():
        planned = plan.tensors[component]
        missing = [key for key in shapes if key not in planned]
        if missing:
            details = [f"{key} (official: {' or '.join(official_names(component, key)[:2])})" for key in missing]
            problems.append(f"{component}: {len(missing)} missing required tensors: {_names(details)}")
        mismatched = [
            f"{key} from {p.origin}: checkpoint {tuple(p.shape)} vs model {tuple(shapes[key])}"
            for key, p in planned.items()
            if key in shapes and tuple(p.shape) != tuple(shapes[key])
        ]
        if mismatched:
            problems.append(f"{component}: shape mismatch for {_names(mismatched)}")
        extra = [f"{p.origin} -> {key}" for key, p in planned.items() if key not in shapes]
        if extra:
            problems.append(f"{component}: tensors the model has no parameter for (config mismatch?): {_names(extra)}")
    if problems:
        raise ConversionError("the checkpoint does not fit the model:\n  " + "\n  ".join(problems))


__all__ = [
    "MODEL",
    "UNET",
    "VAE",
    "PLUGINS",
    "PlannedTensor",
    "ConversionPlan",
    "plan_conversion",
    "check_plan",
    "official_names",
]
