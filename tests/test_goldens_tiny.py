"""Layer 3: tiny random checkpoints against Hugging Face transformers' outputs.

The checkpoints and goldens were made by scripts/make_tiny_goldens.py with
transformers (float32, eager attention); see tests/data/tiny/*/PROVENANCE.md.
"""

import numpy as np
import pytest

from conftest import DATA
from gemma_ref import Model

# Gemma 3n's goldens hold every AltUp stream: tests/test_gemma3n.py reads them;
# RecurrentGemma's (residual stream, Google's logits): tests/test_recurrent_gemma.py.
TINY = sorted(p for p in (DATA / "tiny").iterdir()
              if (p / "golden.npz").exists() and not p.name.startswith(("gemma3n", "recurrentgemma")))
TOL = 1e-3  # the bar; the measured worst is reported by test_report_worst_delta


@pytest.fixture(scope="module", params=TINY, ids=lambda p: p.name)
def case(request):
    d = request.param
    return d.name, Model.from_pretrained(d), dict(np.load(d / "golden.npz"))


def test_goldens_exist():
    names = {p.name for p in TINY}
    assert {"gemma1-mqa", "gemma1-gqa", "gemma1-mha-bf16", "gemma2-gqa", "gemma3-mqa",
            "gemma3-gqa", "gemma3-multimodal", "gemma4-ple-shared", "gemma4-moe-kv",
            "gemma4-multimodal"} <= names


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


def test_gemma4_hub_extras_are_skipped(tmp_path):
    """Hub Gemma 4 files keep k/v weights for the KV-sharing layers (transformers skips
    them) and carry vision and audio towers: the k/v extras are skipped, the towers loaded."""
    import shutil

    from safetensors.numpy import load_file, save_file

    src = DATA / "tiny" / "gemma4-multimodal"
    d = tmp_path / "hub"
    shutil.copytree(src, d)
    tensors = load_file(str(src / "model.safetensors"))
    shared = [i for i, s in enumerate(Model.from_pretrained(src).config.layers) if s.kv_source != i]
    assert shared
    pre = f"model.language_model.layers.{shared[0]}.self_attn."
    tensors[pre + "k_proj.weight"] = np.ones((16, 32), np.float32)
    tensors[pre + "k_norm.weight"] = np.ones(16, np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    g = dict(np.load(src / "golden.npz"))
    m = Model.from_pretrained(d)
    assert m.vision is not None and m.audio is not None  # (audio.py; before it, skipped with a note)
    np.testing.assert_array_equal(m.forward(g["input_ids"]), Model.from_pretrained(src).forward(g["input_ids"]))


def test_gemma4_ple_table_stays_mapped_in_its_stored_dtype(tmp_path):
    """The per-layer embedding table is gathered by rows from a memory map, never widened whole."""
    import shutil

    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    src = DATA / "tiny" / "gemma4-ple-shared"
    d = tmp_path / "bf16"
    shutil.copytree(src, d)
    name = "model.embed_tokens_per_layer.weight"
    tensors = load_file(str(src / "model.safetensors"))
    tensors[name] = tensors[name].astype(ml_dtypes.bfloat16)
    save_file(tensors, str(d / "model.safetensors"))
    m = Model.from_pretrained(d)
    table = m.weights.arrays[name]
    assert isinstance(table, np.memmap) and table.dtype == ml_dtypes.bfloat16
    f32 = tmp_path / "f32"
    shutil.copytree(src, f32)
    tensors[name] = tensors[name].astype(np.float32)  # the same values, widened up front
    save_file(tensors, str(f32 / "model.safetensors"))
    ids = np.arange(2, 30)
    np.testing.assert_array_equal(m.forward(ids), Model.from_pretrained(f32).forward(ids))
    original = Model.from_pretrained(src)
    assert np.abs(m.forward(ids) - original.forward(ids)).max() > 0  # bf16 rounding did change it
