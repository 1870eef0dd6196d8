"""Training data for DreamLLM: sources (`--data`), formats, encoding with the processor, collation."""

from .collator import DreamLLMDataCollator
from .dataset import build_train_dataset
from .encoding import COUNT_KEYS, SampleEncoder
from .labels import encode_conversation, encode_documents
from .samples import BadSample, SampleBuilder, SampleSpec
from .sources import DataSource, detect_kind

__all__ = [
    "BadSample",
    "COUNT_KEYS",
    "DataSource",
    "DreamLLMDataCollator",
    "SampleBuilder",
    "SampleEncoder",
    "SampleSpec",
    "build_train_dataset",
    "detect_kind",
    "encode_conversation",
    "encode_documents",
]
