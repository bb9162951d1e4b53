"""gemma-ref: a pure-NumPy reference inference engine for Google's Gemma models.

    >>> from gemma_ref import Model
    >>> model = Model.from_pretrained()              # Gemma 3 270M, offline (demo extra)
    >>> model.generate("The capital of France is", max_new_tokens=8)
"""

from .api import Model
from .config import PRESETS, GemmaConfig
from .errors import GemmaRefError
from .kv_cache import new_cache
from .model import forward
from .sampling import SamplingParams, sample
from .tokenizer import Tokenizer, chat_prompt

__version__ = "0.1.0"
__all__ = ["Model", "GemmaConfig", "PRESETS", "GemmaRefError", "forward", "new_cache",
           "SamplingParams", "sample", "Tokenizer", "chat_prompt", "__version__"]
