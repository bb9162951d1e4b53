"""Gemma-family members that are not the one decoder-only forward pass of model.py.

`Model.from_pretrained` reads a checkpoint's config.json and asks `family_of` which
class runs it. The decoder-only generation models (Gemma 1-4, 3n) are `api.Model`
itself; every other architecture (an embedding model, a recurrent model, an
encoder-decoder, ...) lives in its own module with its own Model class, and is named
here by one line: the module is imported only when such a checkpoint is loaded.

A family class provides
- `from_checkpoint(path, *, source, dtype, max_memory, progress)` -> the loaded model,
  with whatever of Model's surface fits it (generate, stream, forward, embed, ...);
  what it cannot do is a GemmaRefError that says so;
- `cannot`: {CLI command: why} for the commands it cannot serve (the CLI says why, after
  the load);
- `kind` ("embedding", "classifier", "drafter"; "generation" if it generates text) and the
  methods of Model it cannot serve refused in one sentence: inherit `Refusals`;
- `describe(config_file) -> dict` for `gemma-ref info` (also with --load): keys
  parameters (int), config (dict of the keys worth printing), chat_template (str),
  special (list of lines saying what is particular to it).
A BY_TEST test gets the checkpoint directory, or None when only config.json is known
(`info` on a Hub repo).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from .errors import GemmaRefError

# config.json model_type -> "module:Class" (relative to gemma_ref)
BY_MODEL_TYPE: dict[str, str] = {
    "paligemma": "paligemma:PaliGemma",  # PaliGemma 1 and 2: SigLIP + projector + Gemma 1/2, prefix-LM
    "shieldgemma2": "shieldgemma2:ShieldGemma2",  # Gemma 3 image-text read as an image classifier
    "t5gemma": "t5gemma:T5GemmaModel",  # encoder-decoders (T5Gemma, T5Gemma 2)
    "t5gemma2": "t5gemma:T5GemmaModel",
    "gemma4_assistant": "assistant:Assistant",  # Gemma 4 MTP drafters (speculative decoding)
    "gemma4_unified_assistant": "assistant:Assistant",  # the 12B's: refused there, by name
    "recurrent_gemma": "recurrent_gemma:RecurrentGemma",  # Griffin: RG-LRU + local attention
}

# Checkpoints that share a model_type with a generation model but are another kind,
# told apart by a file or a config key: (test(raw config, checkpoint dir), "module:Class")
BY_TEST: list = [
    # EmbeddingGemma: a sentence-transformers checkpoint (modules.json), or a bidirectional Gemma 3
    (lambda raw, path: (path is not None and (Path(path) / "modules.json").exists())
     or (raw.get("model_type") == "gemma3_text" and raw.get("use_bidirectional_attention") is True),
     "embedding:EmbeddingModel"),
]


# What a model of each kind is, and the method it is used with: what a refusal says
WHAT = {
    "generation": "a text-generation model (generate, chat)",
    "embedding": "an embedding model: embed(texts) gives its sentence vectors (`gemma-ref embed`)",
    "classifier": ("an image safety classifier (ShieldGemma 2): classify_image(images, policies=...) gives "
                   "P(yes), P(no) (`gemma-ref classify`)"),
    "drafter": ("a Gemma 4 assistant: it drafts for its target model only, as "
                "target.generate(..., assistant=this) (`gemma-ref generate --assistant`)"),
}

# Which models each of Model's methods is for (named when another kind refuses it)
FOR = {"embed": "embedding models (embeddinggemma-300m)",
       "classify_image": "ShieldGemma 2 (shieldgemma-2-4b-it)",
       "embed_images": "image-text models (Gemma 3 4B+, Gemma 4, PaliGemma)",
       "embed_audio": "models with an audio tower (Gemma 4 E2B/E4B, Gemma 3n)"}


class Refusals:
    """The methods of Model's surface a model class may lack, each refusing in one sentence:
    what the method is for, and what this model (its `kind`) is. api.Model and the family
    classes inherit it; what a class can do, it defines (overriding these)."""

    kind = "generation"

    def _refuse(self, method: str):
        raise GemmaRefError(f"{getattr(self, 'source', '') or 'this model'}: {method} is for {FOR[method]}; "
                            f"this is {WHAT[self.kind]}")

    def embed(self, *args, **kwargs):
        self._refuse("embed")

    def classify_image(self, *args, **kwargs):
        self._refuse("classify_image")

    def embed_images(self, *args, **kwargs):
        self._refuse("embed_images")

    def embed_audio(self, *args, **kwargs):
        self._refuse("embed_audio")


def family_of(raw: dict, path) -> str | None:
    """"module:Class" of the family that runs this checkpoint, or None for api.Model."""
    for test, target in BY_TEST:
        if test(raw, path):
            return target
    return BY_MODEL_TYPE.get(raw.get("model_type"))


def load_class(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


def speculative(assistant):
    """`assistant`, checked to be a loaded Gemma 4 assistant (assistant.py), the one kind of
    model that generate(..., assistant=...) takes; else a GemmaRefError."""
    from .assistant import Assistant

    if not isinstance(assistant, Assistant):
        what = getattr(getattr(assistant, "config", None), "model_type", type(assistant).__name__)
        raise GemmaRefError(f"assistant must be a Gemma 4 assistant (an MTP drafter, model_type "
                            f"gemma4_assistant) loaded with Model.from_pretrained, not {what}")
    return assistant
