"""Gemma 3n: its small functions on hand-computed numbers, and tiny checkpoints against
transformers (tests/data/tiny/gemma3n-*, made by scripts/make_tiny_goldens_gemma3n.py)."""

import math
import re

import numpy as np
import pytest

from conftest import DATA
from gemma_ref.model import (altup_correct, altup_merge, altup_predict, altup_router, altup_streams,
                             gaussian_top_k, laurel, magnitude_matched)

# --- the functions, by hand -------------------------------------------------------


def test_gaussian_top_k_cuts_at_mean_plus_z_std():
    g = np.array([[1.0, 2.0, 3.0, 4.0]])
    # sparsity 0.5: z = 0, the cutoff is the mean 2.5
    np.testing.assert_allclose(gaussian_top_k(g, 0.5), [[0, 0, 0.5, 1.5]], atol=1e-12)
    # sparsity Phi(1) = 0.8413...: z = 1, cutoff = 2.5 + population std sqrt(1.25)
    cut = 2.5 + math.sqrt(1.25)
    np.testing.assert_allclose(gaussian_top_k(g, 0.8413447460685429), [[0, 0, 0, 4 - cut]], atol=1e-9)
    # per row, and in the input's dtype
    out = gaussian_top_k(np.array([[1, 2, 3, 4], [10, 10, 10, 50]], np.float32), 0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[1], [0, 0, 0, 30])


def test_altup_predict_mixes_streams_by_a_per_token_matrix():
    xs = np.array([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])  # [S=2, B=1, T=1, D=2]
    modalities = np.array([[[1.0, 0.0]]])  # [B, T, S]: only the first column of w counts
    w = np.array([[0.1, 9], [0.2, 9], [0.3, 9], [0.4, 9]])  # [S*S, S] -> c = [[.1, .2], [.3, .4]]
    p = altup_predict(xs, modalities, w)
    # prediction_0 = x0 + .1 x0 + .2 x1 = [1.1, 0.4];  prediction_1 = x1 + .3 x0 + .4 x1 = [0.3, 2.8]
    np.testing.assert_allclose(p[:, 0, 0], [[1.1, 0.4], [0.3, 2.8]])


def test_altup_correct_adds_the_scaled_innovation_to_every_stream():
    preds = np.array([[[[1.0, 1.0]]], [[[5.0, -5.0]]]])  # [S=2, 1, 1, D=2]
    activated = np.array([[[2.0, 3.0]]])  # the block's output for the active stream 0
    modalities = np.array([[[1.0, 1.0]]])
    w = np.array([[0.5, 0.0], [0.0, -1.0]])  # c = [0.5, -1] -> scales 1.5 and 0
    out = altup_correct(preds, activated, modalities, w, active=0)
    # innovation = activated - preds[0] = [1, 2]
    np.testing.assert_allclose(out[:, 0, 0], [[2.5, 4.0], [5.0, -5.0]])


def test_altup_router_is_tanh_of_the_normed_stream_over_d():
    x = np.array([[[3.0, 4.0]]])  # rms 3.5355: normed [0.8485, 1.1314]
    r = altup_router(x, np.ones(2), np.array([[1.0, 1.0], [2.0, 0.0]]), eps=0.0)
    normed = np.array([3.0, 4.0]) / math.sqrt(12.5) / 2  # ... times 1/D
    np.testing.assert_allclose(r[0, 0], np.tanh([normed.sum(), 2 * normed[0]]))


def test_laurel_is_a_normed_low_rank_residual():
    h = np.array([[[3.0, 4.0]]])
    out = laurel(h, np.array([[1.0, 0.0]]), np.array([[1.0], [0.0]]), np.array([2.0, 2.0]), eps=0.0)
    # low = [3, 0]; rms 3/sqrt(2); normed [sqrt 2, 0] * w 2
    np.testing.assert_allclose(out[0, 0], [3 + 2 * math.sqrt(2), 4.0])


def test_streams_are_magnitude_matched_projections_and_merge_back():
    x = np.array([[[3.0, 4.0], [1.0, -1.0]]])  # [B=1, T=2, D=2]
    xs = altup_streams(x, [2 * np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0]])])  # S = 3
    np.testing.assert_allclose(xs[0], x)
    np.testing.assert_allclose(xs[1], x)  # 2x rescaled to x's magnitude
    np.testing.assert_allclose(xs[2], x[..., ::-1])  # swapped, same magnitude
    # merge: stream 1 unprojected by -I, stream 2 swapped back: mean(x, -x, x) = x / 3
    np.testing.assert_allclose(altup_merge(xs, [-np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0]])]), x / 3)
    # a zero projection stays zero (the magnitude is clamped, not divided by 0)
    assert np.all(magnitude_matched(np.zeros((1, 2)), np.ones((1, 1))) == 0)


# --- tiny checkpoints against transformers -------------------------------------------

TINY_3N = sorted(p for p in (DATA / "tiny").glob("gemma3n-*") if (p / "golden.npz").exists())
TOL = 1e-4  # max |dlogit| vs transformers; a float64 forward of the same weights agrees to 2e-5


@pytest.fixture(scope="module", params=TINY_3N, ids=lambda p: p.name)
def case(request):
    from gemma_ref import Model

    d = request.param
    return d, Model.from_pretrained(d), dict(np.load(d / "golden.npz"))


def test_both_goldens_exist():
    assert {p.name for p in TINY_3N} == {"gemma3n-2streams", "gemma3n-4streams"}


def test_logits_match_transformers(case):
    d, model, g = case
    logits = model.forward(g["input_ids"])  # [2, T, V]
    ref = g["logits"][..., :model.n_vocab]
    delta = np.abs(logits - ref).max()
    print(f"{d.name}: max |dlogit| = {delta:.2e}")
    assert delta <= TOL


def test_float64_forward_is_as_close_as_transformers_own(case):
    """The goldens were drawn so that transformers' float64 and float32 agree to 2e-5:
    ours in float64 must agree with them as well, or the test measures rounding."""
    from gemma_ref import Model

    d, _, g = case
    logits = Model.from_pretrained(d, dtype="float64").forward(g["input_ids"])
    assert np.abs(logits - g["logits"][..., :logits.shape[-1]]).max() <= 2e-5


def test_hidden_states_match_transformers_on_every_stream(case):
    """transformers' hidden_states for Gemma 3n hold every AltUp stream: entry 0 the
    streams made from the embedding, entry i the output streams of layer i-1 (the last
    entry too: not replaced by the final norm)."""
    d, model, g = case
    trace = {}
    model.forward(g["input_ids"][:1], trace=trace)
    L = model.config.num_hidden_layers
    ours = [trace["model.altup_projections"]] + [trace[f"model.layers.{i}"] for i in range(L)]
    assert len(ours) == len(g["hidden_states"])
    for i, (a, b) in enumerate(zip(ours, g["hidden_states"])):  # a [S, 1, T, D], b [S, T, D]
        assert np.abs(a[:, 0] - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), f"hidden state {i}"
    merged_normed = trace["model.norm"][0]
    assert np.abs(merged_normed - g["last_hidden_state"]).max() <= 1e-4 * np.abs(g["last_hidden_state"]).max()


def test_greedy_continuation_matches_transformers(case):
    d, model, g = case
    ours = model.generate(g["prompt_ids"].tolist(), max_new_tokens=len(g["greedy_ids"]), stop=[])
    assert ours == g["greedy_ids"].tolist()


def test_cached_steps_match_transformers_cached_steps(case):
    """Prompt, then one token at a time through the cache (past the window, through the
    layers that reuse other layers' K/V): each step's logits vs transformers' own cached steps."""
    from gemma_ref import Model
    from gemma_ref.model import forward

    d, model, g = case
    ids = np.concatenate([g["prompt_ids"], g["greedy_ids"]])[None]
    P = len(g["prompt_ids"])

    def cached_steps(m):  # [N, V]: the prompt in one call, then one token per call
        cache = m.new_cache(1, ids.shape[1])
        steps = [forward(m.weights, m.config, ids[:, :P], cache=cache, last_only=True)]
        steps += [forward(m.weights, m.config, ids[:, t:t + 1], cache=cache, last_only=True)
                  for t in range(P, ids.shape[1] - 1)]
        return np.concatenate(steps, axis=1)[0]

    ours = cached_steps(model)  # the whole table's rows (transformers' logits have them all)
    assert np.abs(ours - g["greedy_raw_logits"]).max() <= TOL
    # In float64, where rounding is out of the way: cached steps == the full forward.
    m64 = Model.from_pretrained(d, dtype="float64")
    full = m64.forward(ids[0])[P - 1:-1]  # [N, n_vocab]
    assert np.abs(cached_steps(m64)[:, :full.shape[1]] - full).max() <= 1e-10


# --- the layouts of the real checkpoints ---------------------------------------------


def test_multimodal_hub_layout_loads_the_language_model(tmp_path, capsys):
    """google/gemma-3n-E2B's layout: config {"model_type": "gemma3n", "text_config": ...},
    text weights under model.language_model.*, audio and vision towers beside them, and
    k/v weights kept for the layers that reuse another layer's K/V (unused, as in
    transformers). Same logits as the text-only layout; one note about what is skipped."""
    import json
    import shutil

    from safetensors.numpy import load_file, save_file

    from gemma_ref import Model

    src = DATA / "tiny" / "gemma3n-2streams"
    text = json.loads((src / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "gemma3n", "text_config": text, "vision_config": {"model_type": "gemma3n_vision"},
         # no audio_config: its audio tensors are skipped (with one, the tower is loaded and
         # checked: tests/test_audio_gemma3n.py)
         "audio_config": None, "eos_token_id": [1, 106]}))
    shutil.copy(src / "tokenizer.model", tmp_path)
    tensors = {"model.language_model." + k[len("model."):]: v
               for k, v in load_file(str(src / "model.safetensors")).items()}
    D, H, K = text["hidden_size"], text["head_dim"], text["num_key_value_heads"]
    for i in (4, 5):  # the KV-sharing layers
        p = f"model.language_model.layers.{i}.self_attn."
        tensors.update({p + "k_proj.weight": np.ones((K * H, D), np.float32),
                        p + "v_proj.weight": np.ones((K * H, D), np.float32),
                        p + "k_norm.weight": np.ones(H, np.float32)})
    for name in ("model.vision_tower.timm_model.conv_stem.conv.weight", "model.embed_vision.embedding.weight",
                 "model.audio_tower.subsample_conv_projection.input_proj_linear.weight",
                 "model.embed_audio.embedding_projection.weight"):
        tensors[name] = np.zeros((2, 2), np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))

    capsys.readouterr()
    model = Model.from_pretrained(tmp_path, progress=False)
    notes = [line for line in capsys.readouterr().err.splitlines() if "ignoring" in line]
    assert len(notes) == 1 and "4 vision/audio tensors" in notes[0]
    assert model.config.model_type == "gemma3n_text" and model.config.altup_num_inputs == 2
    ids = np.load(src / "golden.npz")["input_ids"]
    np.testing.assert_array_equal(model.forward(ids), Model.from_pretrained(src).forward(ids))


def test_presets_and_aliases():
    from gemma_ref import hub
    from gemma_ref.config import PRESETS

    e2b, e4b = PRESETS["3n-e2b"], PRESETS["3n-e4b"]
    assert [s.kv_source for s in e2b.layers[20:]] == [18] * 4 + [19] + [18] * 4 + [19]
    assert [s.activation_sparsity for s in e4b.layers] == [0.95] * 10 + [0.0] * 25
    assert e2b.query_scale == 1.0 and e2b.norm_offset == 0.0 and e2b.value_norm
    for alias, repo in [("3n-e2b", "google/gemma-3n-E2B"), ("3n-e4b-it", "google/gemma-3n-E4B-it")]:
        assert hub.ALIASES[alias] == repo
    assert hub.is_instruction_tuned("3n-e2b-it") and not hub.is_instruction_tuned("3n-e2b")


def test_info_shows_altup_ple_and_sharing(capsys):
    from gemma_ref.cli import main

    assert main(["info", "--model", str(DATA / "tiny" / "gemma3n-4streams")]) == 0
    out = capsys.readouterr().out
    for expected in ("AltUp             4 streams, blocks run on stream 2",
                     "shared K/V        layers 4-6 attend with the K/V of layer(s) 1, 3",
                     "per-layer embed.  256 x 7 x 16", "LAuReL            rank 6",
                     "sparse gate       Gaussian top-k on layers 0, 1, 3, 4, target 0.95, 0.7, 0.5, 0.9",
                     "MLP widths        48, 64, 80, 96, 64, 48, 32 (layer 0 to 6)", "parameters  203,808 (204 k)",
                     "KB  model.safetensors",
                     "  altup_num_inputs             4\n"):  # targets and widths in layer order
        assert expected in out


def test_dump_hidden_states_put_the_streams_side_by_side(case):
    """`gemma-ref dump` / `compare` (and scripts/dump_transformers.py) store Gemma 3n's
    hidden states as [L+1, T, S*D]: transformers' [L+1, S, T, D], streams side by side."""
    from gemma_ref.reference import dump_prompt

    d, model, g = case
    ours = dump_prompt(model, g["input_ids"][0], max_new_tokens=0, trace=True)
    L1, S, T, D = g["hidden_states"].shape
    ref = g["hidden_states"].transpose(0, 2, 1, 3).reshape(L1, T, S * D)
    assert ours.hidden_states.shape == ref.shape
    assert np.abs(ours.hidden_states - ref).max() <= 1e-4 * np.abs(ref).max()
    assert ours.trace["model.layers.0"].shape == (T, S, D)  # position first, like every entry


@pytest.mark.parametrize("key, value, says", [
    ("intermediate_size", [64, 64], "intermediate_size must be a positive integer or a list of 6"),
    ("activation_sparsity_pattern", [0.95] * 5, "activation_sparsity_pattern must be a list of 6"),
    ("activation_sparsity_pattern", [1.0] * 6, "numbers in [0, 1)"),
    ("altup_active_idx", 2, "altup_active_idx (2) must be in [0, altup_num_inputs = 2)"),
    ("num_kv_shared_layers", 6, "num_kv_shared_layers (6) must be in [0, num_hidden_layers = 6)"),
])
def test_config_mistakes_name_the_key(key, value, says):
    import json

    from gemma_ref.config import GemmaConfig
    from gemma_ref.errors import GemmaRefError

    d = json.loads((DATA / "tiny" / "gemma3n-2streams" / "config.json").read_text())
    with pytest.raises(GemmaRefError, match=re.escape(says)):
        GemmaConfig.from_dict({**d, key: value})


def test_config_defaults_are_transformers():
    """Keys a Gemma 3n config.json may leave out take transformers' defaults."""
    from gemma_ref.config import GemmaConfig

    c = GemmaConfig.from_dict(dict(model_type="gemma3n_text", vocab_size=512, hidden_size=32,
                                   intermediate_size=64, num_hidden_layers=20, num_attention_heads=2,
                                   num_key_value_heads=1, head_dim=16, sliding_window=8))
    assert (c.altup_num_inputs, c.altup_active_idx, c.altup_correct_scale, c.laurel_rank) == (4, 0, True, 64)
    assert c.activation_sparsity_pattern == (0.95,) * 10 + (0.0,) * 10
    assert c.num_kv_shared_layers == 15 and c.hidden_size_per_layer_input == 256
    assert c.final_logit_softcapping == 30.0 and c.query_scale == 1.0
    assert c.layer_types[:5] == ("sliding_attention",) * 4 + ("full_attention",)
    assert (c.rope_theta, c.rope_local_base_freq) == (1_000_000.0, 10_000.0)


def test_compare_names_the_stream_entries(case):
    from gemma_ref import reference

    d, model, g = case
    dump = reference.dump(model, [g["input_ids"][0].tolist()], max_new_tokens=2)
    r = reference.compare(dump, dump)
    names = [e["name"] for e in r["prompts"][0]["hidden_states"]]
    L = model.config.num_hidden_layers
    assert r["ok"] and names[:2] == ["model.altup_projections", "model.layers.0"]
    assert names[L] == f"model.layers.{L - 1}"  # the raw last layer: no final norm in it
