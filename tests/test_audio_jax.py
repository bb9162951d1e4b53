"""Gemma 4's audio tower against a second reference: Google's JAX `gemma` 4.0.1.

tests/data/audio/jax-gemma-4.0.1.npz holds what gemma's Flax modules computed on
tone.wav's transformers features with the tiny checkpoints' weights (made by
scripts/check_audio_jax.py --keep; needs no JAX here):
  tower_A, soft_A: gemma as it is;
  tower_B, soft_B: gemma with transformers' attention mask (a query sees left - 1 keys,
                   itself included, not left) and embedder order (RMSNorm, then the projection).
gemma-ref follows transformers; set to gemma's mask and relative distances it must give
gemma's own numbers. Where the two references differ is in docs/AUDIO.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from gemma_ref import Model, audio
from gemma_ref.model import rms_norm
from gemma_ref.parallel import linear

DATA = Path(__file__).parent / "data" / "audio"
JAX = np.load(DATA / "jax-gemma-4.0.1.npz")
TOL = 1e-4


@pytest.fixture(scope="module", params=["gemma4-audio", "gemma4-audio-b"])
def tone(request):
    """(name, model, features [F, M], mask [F]) of tone.wav, as transformers' processor made them."""
    g = np.load(DATA / request.param / "golden.npz")
    model = Model.from_pretrained(DATA / request.param, progress=False)
    return request.param, model, g["one.features_0"], g["one.features_mask_0"]


def jax(name, what):
    return JAX[f"{name}.tone.wav.{what}"]


def tower(model, feats, mask, **changes):
    c = dataclasses.replace(model.audio.config, **changes)
    x, m = audio.audio_tower(feats, mask, model.weights, c)
    return x[m], c


def test_gemma_ref_set_to_gemmas_attention_is_gemma(tone):
    """Keys at distances 0 .. left - 1 (context_inclusive) and relative distances
    left - 1 .. 0 ('span'): gemma-ref's tower is gemma's; gemma's embedder projects, then norms."""
    name, model, feats, mask = tone
    x, c = tower(model, feats, mask, context_inclusive=True, relative_positions="span")
    assert np.abs(x - jax(name, "tower_A")).max() <= TOL
    soft = rms_norm(linear(x, model.weights["embed_audio.embedding_projection.weight"]), None, c.rms_norm_eps)
    assert np.abs(soft - jax(name, "soft_A")).max() <= TOL


def test_gemma_ref_as_is_is_gemma_with_transformers_mask(tone):
    """gemma-ref as is (transformers' mask, RMSNorm before the projection) is gemma with
    those two changes; on gemma4-audio-b also transformers' relative distances (X/2 .. 0)
    differ from gemma's (left - 1 .. 0), so there gemma-ref needs 'span' to match."""
    name, model, feats, mask = tone
    span = {} if name == "gemma4-audio" else {"relative_positions": "span"}
    x, c = tower(model, feats, mask, **span)
    assert np.abs(x - jax(name, "tower_B")).max() <= TOL
    assert np.abs(audio.embed_audio(x, model.weights, c) - jax(name, "soft_B")).max() <= TOL


def test_the_references_do_differ(tone):
    """The differences docs/AUDIO.md reports are real: gemma-ref as is is far from gemma as is."""
    name, model, feats, mask = tone
    x, c = tower(model, feats, mask)
    assert np.abs(x - jax(name, "tower_A")).max() > 0.1
    assert np.abs(audio.embed_audio(x, model.weights, c) - jax(name, "soft_A")).max() > 0.1
