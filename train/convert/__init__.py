"""Conversion of the official DreamLLM release into a DreamLLM folder (`python -m train.convert`): reading the
released files (`sources`), mapping their keys (`keys`), the release's own configs (`configs`, `release`), writing
shards (`writer`) and the model card (`card`); `original` holds the command."""

from .original import convert_original

__all__ = ["convert_original"]
