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
- `describe(config_file) -> dict` for `gemma-ref info` without loading weights: keys
  parameters (int), config (dict of the keys worth printing), chat_template (str),
  special (list of lines saying what is particular to it).
A BY_TEST test gets the checkpoint directory, or None when only config.json is known
(`info` on a Hub repo).
"""

from __future__ import annotations

import importlib

# config.json model_type -> "module:Class" (relative to gemma_ref)
BY_MODEL_TYPE: dict[str, str] = {
    "recurrent_gemma": "recurrent_gemma:RecurrentGemma",  # Griffin: RG-LRU + local attention
}

# Checkpoints that share a model_type with a generation model but are another kind,
# told apart by a file or a config key: (test(raw config, checkpoint dir), "module:Class")
BY_TEST: list = []


def family_of(raw: dict, path) -> str | None:
    """"module:Class" of the family that runs this checkpoint, or None for api.Model."""
    for test, target in BY_TEST:
        if test(raw, path):
            return target
    return BY_MODEL_TYPE.get(raw.get("model_type"))


def load_class(target: str):
    module, name = target.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)
