"""Decoder language models: the wrapper castlib works with, and loading one.

language_model.py   `LanguageModel` (model, tokenizer, decoder blocks), `find_blocks`,
                    `wrap_model`
loading.py          `load_model`: an embedded model, a Hugging Face id or a local folder
embedded.py         the embedded models' table (`EMBEDDED_MODELS`)
gguf.py             an embedded model's GGUF, assembled from its packages and checked
cache.py            the dequantised cache of the embedded models (``$CASTLIB_CACHE``)
"""

from .cache import cache_dir, embedded_model_path
from .embedded import (
    EMBEDDED_MODEL,
    EMBEDDED_MODELS,
    EmbeddedModel,
    ModelPackagesMissing,
    PartPackages,
    embedded_models,
    suggest_model,
)
from .gguf import check_gguf
from .language_model import BLOCK_PATHS, LanguageModel, find_blocks, input_device, wrap_model
from .loading import load_model, resolve_device, resolve_dtype

__all__ = [
    # language_model
    "LanguageModel",
    "find_blocks",
    "wrap_model",
    "input_device",
    "BLOCK_PATHS",
    # loading
    "load_model",
    "resolve_device",
    "resolve_dtype",
    # embedded, gguf, cache
    "EMBEDDED_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "PartPackages",
    "ModelPackagesMissing",
    "embedded_models",
    "suggest_model",
    "check_gguf",
    "embedded_model_path",
    "cache_dir",
]
