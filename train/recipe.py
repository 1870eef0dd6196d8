"""Recipe files: one YAML per training stage holding its settings and its data mixture.

    recipe = load_recipe("train/recipes/dreamllm-7b/igpt.yaml")
    recipe.settings["learning_rate"]     # 2e-05: any `python -m train` option (DreamLLMArguments / SFTConfig)
    recipe.mixture[0].name, recipe.mixture[0].size   # ('mmc4_core', 7000000)
    recipe.data_specs()                  # ['mmc4-core:7', 'blip-laion:10']: `--data PATH:WEIGHT`, under data_root
    recipe.samples_per_epoch             # 17000000

    python -m train --recipe train/recipes/dreamllm-7b/igpt.yaml --data_root /data --print_config

A recipe is a `--config` YAML (every key is a `python -m train` option) plus `mixture:`, a list of datasets, each
`{name, format, path, size, weight}`: `path` is relative to `data_root` (or absolute), `format` names what the path
holds (`FORMATS`), `size` is the number of samples it gives one epoch (as the official `size_list`), `weight` its
relative drawing weight (default: its size). The mixture becomes `--data PATH:WEIGHT` options and
`--samples_per_epoch` (the sum of the sizes); the command line overrides either.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from train.errors import InputError

# Recipe format name -> the kind `train.data.sources.detect_kind` reads from such a path.
FORMATS = {
    "img2dataset": "webdataset",  # webdataset .tar shards of KEY.jpg + KEY.txt + KEY.json (img2dataset's output)
    "mmc4": "json",  # MMC4 .jsonl documents (text_list, image_info) + their images/ folder
    "mmc4-instruct": "json",  # instruction + interleaved answer (instruction, text_list, image_info) + images
    "llava": "json",  # LLaVA conversation .json (image, conversations) + image folders beside it
    "pairs": "pairs",  # a folder of NAME.jpg|png + NAME.txt
    "hf": "hf",  # a datasets save_to_disk folder or .parquet files with an image and a caption column
}
MIXTURE_FIELDS = ("name", "format", "path", "size", "weight", "note")


@dataclass(frozen=True)
class MixtureEntry:
    """One dataset of a stage's mixture."""

    name: str
    format: str
    path: str
    size: int
    weight: float
    note: str = ""

    def data_spec(self) -> str:
        return f"{self.path}:{self.weight:g}"


@dataclass(frozen=True)
class Recipe:
    path: str
    settings: dict
    mixture: tuple[MixtureEntry, ...]

    def data_specs(self) -> list[str]:
        return [entry.data_spec() for entry in self.mixture]

    @property
    def samples_per_epoch(self) -> int:
        return sum(entry.size for entry in self.mixture)

    def defaults(self) -> dict:
        """The parser defaults this recipe sets: its settings, plus `data` and `samples_per_epoch` from the
        mixture (unless the settings give them)."""
        defaults = dict(self.settings)
        if self.mixture:
            defaults.setdefault("data", self.data_specs())
            defaults.setdefault("samples_per_epoch", self.samples_per_epoch)
        return defaults


def _entry(recipe_path: str, number: int, raw) -> MixtureEntry:
    where = f"{recipe_path}: mixture entry {number + 1}"
    if not isinstance(raw, dict):
        raise InputError(f"{where} must be a mapping with {MIXTURE_FIELDS[:4]}, got {raw!r}")
    unknown = sorted(set(raw) - set(MIXTURE_FIELDS))
    missing = [name for name in MIXTURE_FIELDS[:4] if name not in raw]
    if unknown or missing:
        raise InputError(f"{where}: unknown fields {unknown}, missing fields {missing}")
    if raw["format"] not in FORMATS:
        raise InputError(f"{where} ({raw['name']}): format {raw['format']!r} is not one of {sorted(FORMATS)}")
    size = raw["size"]
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise InputError(f"{where} ({raw['name']}): size must be a positive integer, got {size!r}")
    weight = raw.get("weight", size)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
        raise InputError(f"{where} ({raw['name']}): weight must be a positive number, got {weight!r}")
    note = str(raw.get("note", ""))
    return MixtureEntry(str(raw["name"]), raw["format"], str(raw["path"]), size, float(weight), note)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe file (see the module docstring); an `InputError` names the file and the field."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        raise InputError(f"--recipe {path}: not a readable YAML file ({error})") from error
    if not isinstance(content, dict):
        raise InputError(f"{path}: a recipe must be a YAML mapping")
    mixture = content.pop("mixture", None) or []
    if not isinstance(mixture, list):
        raise InputError(f"{path}: mixture must be a list of datasets")
    if "config" in content or "recipe" in content:
        raise InputError(f"{path}: a recipe cannot name another config or recipe")
    return Recipe(path, content, tuple(_entry(path, number, raw) for number, raw in enumerate(mixture)))


def rooted(spec: str, data_root: str | None) -> str:
    """A `--data` spec with a relative path read under `data_root`."""
    if not data_root or Path(spec).is_absolute():
        return spec
    return str(Path(data_root) / spec)


def check_formats(recipe: Recipe, data_root: str | None) -> None:
    """Each mixture path holds what its `format` says (read from the contents, as the data readers do)."""
    from train.data.sources import detect_kind

    for entry in recipe.mixture:
        path = rooted(entry.path, data_root)
        kind, _ = detect_kind(path)
        if kind != FORMATS[entry.format]:
            raise InputError(
                f"{recipe.path}: mixture entry {entry.name} is declared {entry.format} ({FORMATS[entry.format]}) but "
                f"{path} reads as {kind}"
            )


__all__ = ["FORMATS", "MixtureEntry", "Recipe", "check_formats", "load_recipe", "rooted"]
