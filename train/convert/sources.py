"""Open the tensor files of an official DreamLLM checkpoint lazily and safely.

Torch pickles are read with `weights_only=True` (no arbitrary unpickling) and `mmap=True`, so a 13.5 GB file costs
page cache, not process memory; safetensors files are opened with `safe_open`. Any unreadable file raises a
`ConversionError` naming it.

    >>> store = open_tensor_store(find_main_checkpoint(Path("dreamllm-7b-chat-v1.0")))
    >>> store.shape("model.embed_tokens.weight")
    (32008, 4096)
"""

import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open

logger = logging.getLogger(__name__)

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format, the only one torch can mmap
MAIN_CHECKPOINT_NAMES = (  # in order of preference
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)


class ConversionError(RuntimeError):
    """The input cannot be converted; the message names the file, key or shapes at fault."""


class TensorFile:
    """The tensors of one checkpoint file, read on demand."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def keys(self) -> list[str]:
        raise NotImplementedError

    def shape(self, key: str) -> tuple[int, ...]:
        raise NotImplementedError

    def get(self, key: str) -> torch.Tensor:
        raise NotImplementedError


class TorchPickleFile(TensorFile):
    """A `torch.save` state dict; zip-format files are memory-mapped, tensors are materialised lazily by the OS."""

    def __init__(self, path: Path):
        super().__init__(path)
        with open(self.path, "rb") as handle:
            mmap = handle.read(4) == ZIP_MAGIC
        if not mmap:
            logger.warning("%s is in torch's legacy format, which cannot be memory-mapped: it is read into RAM", path)
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as error:  # truncated zip, bad pickle, disallowed global, ...
            raise ConversionError(
                f"cannot read {self.path}: truncated, corrupt or not a weights-only torch checkpoint ({error})"
            ) from error
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ConversionError(f"{self.path} does not hold a flat state dict of tensors")
        self._state = state

    def keys(self) -> list[str]:
        return list(self._state)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._state[key].shape)

    def get(self, key: str) -> torch.Tensor:
        return self._state[key]


class SafetensorsFile(TensorFile):
    """A safetensors file; its header is parsed up front, tensor data is read per key."""

    def __init__(self, path: Path):
        super().__init__(path)
        try:
            self._handle = safe_open(str(self.path), framework="pt", device="cpu")
            self._keys = list(self._handle.keys())
        except Exception as error:
            raise ConversionError(
                f"cannot read {self.path}: truncated or corrupt safetensors file ({error})"
            ) from error

    def keys(self) -> list[str]:
        return self._keys

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._handle.get_slice(key).get_shape())

    def get(self, key: str) -> torch.Tensor:
        try:
            return self._handle.get_tensor(key)
        except Exception as error:
            raise ConversionError(f"cannot read tensor {key} from {self.path}: {error}") from error


def open_tensor_file(path: Path) -> TensorFile:
    if not Path(path).is_file():
        raise ConversionError(f"checkpoint file {path} does not exist")
    return SafetensorsFile(path) if str(path).endswith(".safetensors") else TorchPickleFile(path)


class TensorStore:
    """Several files (the shards of one checkpoint) seen as one key -> tensor mapping."""

    def __init__(self, files: list[TensorFile]):
        self.files = files
        self._owner: dict[str, TensorFile] = {}
        for tensor_file in files:
            for key in tensor_file.keys():
                if key in self._owner:
                    raise ConversionError(f"tensor {key} is in both {self._owner[key].path} and {tensor_file.path}")
                self._owner[key] = tensor_file

    def keys(self) -> list[str]:
        return list(self._owner)

    def __contains__(self, key: str) -> bool:
        return key in self._owner

    def shape(self, key: str) -> tuple[int, ...]:
        return self._owner[key].shape(key)

    def get(self, key: str) -> torch.Tensor:
        return self._owner[key].get(key)

    def where(self, key: str) -> str:
        """The file name holding `key`, for messages."""
        return self._owner[key].path.name


def open_tensor_store(paths: list[Path]) -> TensorStore:
    return TensorStore([open_tensor_file(path) for path in paths])


def read_json(path: Path) -> dict:
    """A JSON file as a dict, or a `ConversionError` naming the file."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise ConversionError(f"{path} is missing") from error
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConversionError(f"{path} is not valid JSON: {error}") from error


def _shard_inside(folder: Path, index: Path, name: str) -> Path:
    """A shard named by an index: a file of `folder` itself (no absolute path, `..` or link leading out of it)."""
    shard = folder / name
    if Path(name).is_absolute() or not os.path.realpath(shard).startswith(os.path.realpath(folder) + os.sep):
        raise ConversionError(f"{index} names a shard outside {folder}: {name!r}; shards must be files of the input")
    return shard


def find_main_checkpoint(folder: Path) -> list[Path]:
    """The files of the LLM (or full) state dict: an index json's shards, or one `model.safetensors` /
    `pytorch_model.bin`."""
    folder = Path(folder)
    for index_name, single_name in MAIN_CHECKPOINT_NAMES:
        index = folder / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ConversionError(f"{index} has no weight_map")
            shards = [_shard_inside(folder, index, name) for name in sorted(set(map(str, weight_map.values())))]
            missing = [shard.name for shard in shards if not shard.is_file()]
            if missing:
                raise ConversionError(f"{index} lists shards that are missing: {missing}")
            return shards
        if (folder / single_name).is_file():
            return [folder / single_name]
    raise ConversionError(
        f"{folder} has no pytorch_model.bin, model.safetensors or sharded index "
        "(pytorch_model.bin.index.json / model.safetensors.index.json)"
    )


def find_plugin_file(folder: Path, name: str) -> Path | None:
    """`<name>.bin` or `<name>.safetensors`, the per-plugin file the official trainer writes, if present."""
    for suffix in (".safetensors", ".bin"):
        path = Path(folder) / f"{name}{suffix}"
        if path.is_file():
            return path
    return None


__all__ = [
    "ConversionError",
    "TensorFile",
    "TensorStore",
    "open_tensor_store",
    "read_json",
    "find_main_checkpoint",
    "find_plugin_file",
]
