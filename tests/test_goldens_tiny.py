"""Layer 3: tiny random checkpoints against Hugging Face transformers' outputs.

The checkpoints and goldens were made by scripts/make_tiny_goldens.py with
transformers (float32, eager attention); see tests/data/tiny/*/PROVENANCE.md.
"""

import numpy as np
import pytest

from conftest import DATA
from gemma_ref import Model

# Gemma 3n's goldens hold every AltUp stream: tests/test_gemma3n.py reads them.
TINY = sorted(p for p in (DATA / "tiny").iterdir()
              if (p / "golden.npz").exists() and not p.name.startswith("gemma3n"))
TOL = 1e-3  # the bar; the measured worst is reported by test_report_worst_delta


@pytest.fixture(scope="module", params=TINY, ids=lambda p: p.name)
def case(request):
    d = request.param
    return d.name, Model.from_pretrained(d), dict(np.load(d / "golden.npz"))


def test_goldens_exist():
    names = {p.name for p in TINY}
    assert {"gemma1-mqa", "gemma1-gqa", "gemma1-mha-bf16", "gemma2-gqa", "gemma3-mqa",
            "gemma3-gqa", "gemma3-multimodal"} <= names


def test_logits_match_transformers(case):
    name, model, g = case
    logits = model.forward(g["input_ids"])  # [2, T, V]
    ref = g["logits"][..., :model.n_vocab]  # multimodal: padding rows sliced off
    assert logits.shape == ref.shape
    delta = np.abs(logits - ref).max()
    print(f"{name}: max |dlogit| = {delta:.2e} over {ref.size} logits")
    assert delta <= TOL


def test_hidden_states_match_transformers(case):
    """Per layer, so a failure says where: HF hidden_states[0] = scaled embeddings,
    [i] = output of layer i-1, [L] = after the final norm."""
    name, model, g = case
    trace = {}
    model.forward(g["input_ids"][:1], trace=trace)
    L = model.config.num_hidden_layers
    ours = [trace["model.embed_tokens"]] + [trace[f"model.layers.{i}"] for i in range(L - 1)] + [trace["model.norm"]]
    for i, (a, b) in enumerate(zip(ours, g["hidden_states"])):
        scale = max(1.0, np.abs(b).max())
        assert np.abs(a[0] - b).max() <= 1e-4 * scale, f"{name}: hidden state {i} diverges"


def test_greedy_continuation_matches_transformers(case):
    """Cached generation running well past the sliding window, token for token."""
    name, model, g = case
    ours = model.generate(g["prompt_ids"].tolist(), max_new_tokens=len(g["greedy_ids"]), stop=[])
    assert ours == g["greedy_ids"].tolist()
