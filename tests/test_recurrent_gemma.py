"""RecurrentGemma (Griffin): its equations by hand, tiny checkpoints against transformers and
Google's recurrentgemma 1.0.1 (tests/data/tiny/recurrentgemma-*, made by
scripts/make_tiny_goldens_recurrent_gemma.py), the invariants, the fixed-size state, the CLI."""

import json
import math
import re
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import DATA
from gemma_ref import Model
from gemma_ref.cli import main
from gemma_ref.errors import GemmaRefError
from gemma_ref.recurrent_gemma import (PRESETS, RecurrentGemmaConfig, block_diagonal, causal_conv1d,
                                       embed, forward, partial_rope, rg_lru, state_nbytes)
from gemma_ref.weights import Weights

TINY = sorted(p for p in (DATA / "tiny").glob("recurrentgemma-*") if (p / "golden.npz").exists())
TOL = 1e-4  # max |dlogit| vs transformers (and Google); a float64 forward agrees to 1e-5


# --- the equations, by hand -----------------------------------------------------------------


def test_causal_conv1d_weighs_the_last_taps_and_carries_its_past():
    w = np.array([[[1.0, 10.0, 100.0]]])  # [C=1, 1, W=3]: tap 2 weighs the token itself
    x = np.array([[[1.0], [2.0], [3.0]]])  # [B=1, T=3, C=1]
    out, past = causal_conv1d(x, np.zeros((1, 2, 1)), w, np.array([0.5]))
    # t=0: 100*1; t=1: 10*1 + 100*2; t=2: 1*1 + 10*2 + 100*3
    np.testing.assert_allclose(out[0, :, 0], [100.5, 210.5, 321.5])
    np.testing.assert_allclose(past[0, :, 0], [2.0, 3.0])
    out2, _ = causal_conv1d(np.array([[[4.0]]]), past, w, np.array([0.5]))  # the next token alone
    assert out2[0, 0, 0] == 2 + 30 + 400 + 0.5


def test_block_diagonal_maps_each_head_on_its_own():
    x = np.array([[[1.0, 2.0, 3.0, 4.0]]])  # two heads of width 2
    w = np.array([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])  # identity, swap
    np.testing.assert_allclose(block_diagonal(x, w, np.array([[0.0, 0.0], [10.0, 20.0]]))[0, 0],
                               [1, 2, 14, 23])


def rg_lru_weights(lam, gate_bias_a, gate_bias_x):
    C = len(lam)
    return Weights({"recurrent_param": np.array(lam), "recurrent_gate_weight": np.zeros((1, C, C)),
                    "recurrent_gate_bias": np.full((1, C), gate_bias_a),
                    "input_gate_weight": np.zeros((1, C, C)), "input_gate_bias": np.full((1, C), gate_bias_x)},
                   np.float64)


def test_rg_lru_by_hand():
    """Gates sigmoid(0) = 1/2: a = exp(-8 * 1/2 * softplus(lam)) = exp(-4 ln 2) = 1/16 for
    lam = 0; input = x/2. Position 0 starts the sequence: h0 = x0/2 (no sqrt(1 - a^2))."""
    W = rg_lru_weights([0.0], 0.0, 0.0)
    a = 1 / 16
    x = np.array([[[2.0], [4.0], [6.0]]])
    out, h = rg_lru(x, np.array([[0, 1, 2]]), np.zeros((1, 1)), W, "")
    s = math.sqrt(1 - a * a)
    h0 = 1.0
    h1 = a * h0 + s * 2.0
    h2 = a * h1 + s * 3.0
    np.testing.assert_allclose(out[0, :, 0], [h0, h1, h2])
    assert h[0, 0] == out[0, 2, 0]
    # Padding (position -1) leaves the state at 0, whatever it was; position 0 forgets the past
    out, h = rg_lru(x[:, :2], np.array([[-1, 0]]), np.full((1, 1), 99.0), W, "")
    np.testing.assert_allclose(out[0, :, 0], [0.0, 2.0])


def test_embedding_scale_is_sqrt_d_rounded_to_bfloat16():
    W = Weights({"model.embed_tokens.weight": np.ones((3, 4))}, np.float64)
    assert embed(W, np.array([[1]]), 2560, np.float64)[0, 0, 0] == 50.5  # sqrt(2560) = 50.596
    assert embed(W, np.array([[1]]), 4096, np.float64)[0, 0, 0] == 64.0


def test_partial_rope_turns_the_first_part_of_each_head_only():
    x = np.arange(8.0).reshape(1, 1, 1, 8)  # one head, H = 8, R = 4
    cos, sin = np.zeros((1, 1, 2)), np.ones((1, 1, 2))  # a quarter turn
    out = partial_rope(x, cos, sin, 4)
    np.testing.assert_allclose(out[0, 0, 0], [-2, -3, 0, 1, 4, 5, 6, 7])


def test_presets_count_the_released_models():
    assert round(PRESETS["2b"].num_parameters / 1e9, 2) == 2.68
    assert round(PRESETS["9b"].num_parameters / 1e9, 2) == 8.58
    # the state: 18 recurrent layers x (h + 3 conv inputs) x 2560 + 8 rings of 2048 keys and values x 256
    c = PRESETS["2b"]
    assert c.layer_types.count("recurrent") == 18 and c.layer_types.count("attention") == 8
    expected = 18 * (2560 + 3 * 2560) * 4 + 8 * (2 * 2048 * 256 * 4 + 2048 * 8)
    assert state_nbytes(c) == expected


# google/recurrentgemma-2b's config.json (transformers 4.40's spelling: rope keys at the top)
HUB_2B = {"architectures": ["RecurrentGemmaForCausalLM"], "attention_bias": False, "attention_window_size": 2048,
          "block_types": ["recurrent", "recurrent", "attention"], "bos_token_id": 2, "conv1d_width": 4,
          "embeddings_scale_by_sqrt_dim": True, "eos_token_id": 1, "final_w_init_variance_scale": 2 / 26,
          "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "hidden_size": 2560,
          "intermediate_size": 15360, "logits_soft_cap": 30.0, "lru_width": 2560, "model_type": "recurrent_gemma",
          "num_attention_heads": 10, "num_hidden_layers": 26, "num_key_value_heads": 1, "pad_token_id": 0,
          "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "torch_dtype": "float32",
          "transformers_version": "4.40.0.dev0", "vocab_size": 256000, "w_init_variance_scale": 0.01}


def test_the_hub_spelling_reads_as_the_preset():
    assert RecurrentGemmaConfig.from_dict(HUB_2B) == PRESETS["2b"]
    newer = {k: v for k, v in HUB_2B.items() if k not in ("rope_theta", "partial_rotary_factor")}
    newer["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    assert RecurrentGemmaConfig.from_dict(newer) == PRESETS["2b"]


# --- tiny checkpoints against transformers and Google's package ------------------------------


@pytest.fixture(scope="module", params=TINY, ids=lambda p: p.name)
def case(request):
    d = request.param
    return d, Model.from_pretrained(d, progress=False), dict(np.load(d / "golden.npz"))


def test_both_goldens_exist():
    assert {p.name for p in TINY} == {"recurrentgemma-mqa", "recurrentgemma-gqa"}


def test_logits_match_transformers_and_google(case):
    d, model, g = case
    logits = model.forward(g["input_ids"])  # [2, T, V]
    delta = np.abs(logits - g["logits"]).max()
    print(f"{d.name}: max |dlogit| vs transformers = {delta:.2e}")
    assert delta <= TOL
    if "google_logits" in g:  # recurrentgemma.torch.Griffin, the same weights
        delta = np.abs(logits - g["google_logits"]).max()
        print(f"{d.name}: max |dlogit| vs Google's recurrentgemma = {delta:.2e}")
        assert delta <= TOL


def test_float64_forward_is_as_close_as_transformers_own(case):
    d, _, g = case
    logits = Model.from_pretrained(d, dtype="float64", progress=False).forward(g["input_ids"])
    assert np.abs(logits - g["logits"]).max() <= 2e-5


def test_residual_stream_matches_transformers(case):
    d, model, g = case
    trace = {}
    model.forward(g["input_ids"][:1], trace=trace)
    L = model.config.num_hidden_layers
    ours = [trace["model.embed_tokens"]] + [trace[f"model.layers.{i}"] for i in range(L)]
    for i, (a, b) in enumerate(zip(ours, g["residual_stream"])):
        assert np.abs(a[0] - b).max() <= 1e-4 * max(1.0, np.abs(b).max()), f"residual stream {i}"


def test_greedy_continuation_matches_transformers(case):
    d, model, g = case
    assert model.generate(g["prompt_ids"].tolist(), max_new_tokens=len(g["greedy_ids"]), stop=[]) \
        == g["greedy_ids"].tolist()


def test_cached_steps_match_both_references_cached_steps(case):
    """The prompt in one call, then one token at a time through the state (past the window):
    each step's logits vs transformers' cached steps (and Google's, on its own cache)."""
    d, model, g = case
    ids = np.concatenate([g["prompt_ids"], g["greedy_ids"]])[None]
    P = len(g["prompt_ids"])
    state = model.new_cache(1)
    steps = [forward(model.weights, model.config, ids[:, :P], cache=state, last_only=True)]
    steps += [forward(model.weights, model.config, ids[:, t:t + 1], cache=state, last_only=True)
              for t in range(P, ids.shape[1] - 1)]
    ours = np.concatenate(steps, axis=1)[0]  # [N, V]
    assert np.abs(ours - g["greedy_raw_logits"]).max() <= TOL
    if "google_cached_steps" in g:
        assert np.abs(ours - g["google_cached_steps"]).max() <= TOL


# --- invariants --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models():
    return {p.name: Model.from_pretrained(p, progress=False) for p in TINY}


def ids_for(m, seed=0, B=2, T=30):
    return np.random.default_rng(seed).integers(0, m.n_vocab, (B, T))


def through_state(m, ids, state, chunk, **kw):
    return [forward(m.weights, m.config, ids[:, s:s + chunk], cache=state, n_vocab=m.n_vocab, **kw)
            for s in range(0, ids.shape[1], chunk)]


@pytest.mark.parametrize("name", ["recurrentgemma-mqa", "recurrentgemma-gqa"])
@pytest.mark.parametrize("chunk", [1, 3, 7, 16])
def test_chunked_and_stepwise_equal_the_full_forward(models, name, chunk):
    """chunk 1 = decoding token by token; the others: a prompt prefilled in chunks (the conv
    and the RG-LRU continue from the state, the ring holds the window's keys)."""
    m = models[name]
    ids = ids_for(m, seed=chunk)
    full = m.forward(ids)
    parts = through_state(m, ids, m.new_cache(2), chunk)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["recurrentgemma-mqa", "recurrentgemma-gqa"])
def test_batch_of_two_equals_two_singles(models, name):
    m = models[name]
    ids = ids_for(m, seed=5)
    both = m.forward(ids)
    for b in range(2):
        np.testing.assert_allclose(both[b], m.forward(ids[b]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["recurrentgemma-mqa", "recurrentgemma-gqa"])
def test_ragged_batch_generation_equals_singles(models, name):
    """Left padding (position -1) feeds neither the conv nor the recurrence: each row of a
    ragged batch gives exactly its single-prompt result (transformers' convolution has no
    padding mask; we do not follow it there: docs/RECURRENTGEMMA.md)."""
    m = models[name]
    rng = np.random.default_rng(3)
    prompts = [rng.integers(4, m.n_vocab, n).tolist() for n in (5, 12, 9)]
    batch = m.generate(prompts, max_new_tokens=20, stop=[])
    for p, out in zip(prompts, batch):
        assert out == m.generate(p, max_new_tokens=20, stop=[])


def test_pipelined_prefill_gives_the_same_generation(models, monkeypatch):
    """A long prompt is prefilled in chunks side by side (parallel.pipelined); each chunk's
    layer i waits for the previous chunk's (layer_turn): the same tokens as in order."""
    from gemma_ref import api, parallel

    m = models["recurrentgemma-mqa"]
    prompt = ids_for(m, seed=9, B=1, T=300)[0].tolist()
    in_order = m.generate(prompt, max_new_tokens=8, stop=[])
    monkeypatch.setattr(parallel, "_threads", 2)
    monkeypatch.setattr(parallel, "_adaptive", False)
    monkeypatch.setattr(parallel, "MIN_PIPELINED", 16)
    monkeypatch.setattr(api, "PREFILL_CHUNK", 64)
    calls = []
    real = parallel.pipelined
    monkeypatch.setattr(api, "pipelined", lambda fn, chunks, n: calls.append(len(chunks)) or real(fn, chunks, n))
    assert m.generate(prompt, max_new_tokens=8, stop=[]) == in_order
    assert calls and calls[0] > 1


def test_the_state_does_not_grow_with_the_context(models):
    """After 10 tokens and after 1000 (the window is 8) the state holds the same bytes, and
    the 1000th token's logits through it equal the full forward's."""
    m = models["recurrentgemma-mqa"]
    ids = ids_for(m, seed=7, B=1, T=1000)
    state = m.new_cache(1)
    through_state(m, ids[:, :10], state, 10)
    after_10 = [(a.shape, a.dtype) for c in state for a in vars(c).values() if isinstance(a, np.ndarray)]
    nbytes_10 = sum(c.nbytes for c in state)
    last = through_state(m, ids[:, 10:], state, 330)[-1][:, -1]
    after_1000 = [(a.shape, a.dtype) for c in state for a in vars(c).values() if isinstance(a, np.ndarray)]
    assert after_1000 == after_10 and sum(c.nbytes for c in state) == nbytes_10 == state_nbytes(m.config)
    np.testing.assert_allclose(last, m.forward(ids)[:, -1], atol=1e-4, rtol=0)


def test_logprobs_are_the_full_forwards(models):
    """Scoring (scoring.py) runs through the same state, in chunks."""
    m = models["recurrentgemma-gqa"]
    ids = ids_for(m, seed=11, B=1, T=300)[0]
    logits = m.forward(ids).astype(np.float64)
    expected = [logits[t - 1, ids[t]] - np.log(np.exp(logits[t - 1]).sum()) for t in range(1, 300)]
    np.testing.assert_allclose(m.logprobs(ids), expected, atol=1e-4)


def test_eval_scores_continuations_on_copies_of_the_state(models):
    """lm-eval's adapter: the context once, the continuations together (right-padded) on
    copies of its state, as each alone."""
    pytest.importorskip("lm_eval")
    from gemma_ref.lmeval import GemmaRefLM

    m = models["recurrentgemma-mqa"]
    lm = GemmaRefLM(model=m)
    ctx = m.tokenizer.encode("The quick brown fox jumps over the lazy dog. Once upon")  # > window 8
    conts = [m.tokenizer.encode(t, add_bos=False) for t in (" a time", " the sea and far away", " x")]
    for (a, ga), c in zip(lm._score_shared_context(ctx, conts), conts):
        b, gb = lm._score_alone(ctx, c)
        assert abs(a - b) < 1e-4 and ga == gb
        assert abs(a - m.logprobs(ctx + c)[len(ctx) - 1:].sum()) < 1e-4


def test_window_and_recurrence_both_matter(models):
    """Tokens far outside the window still change the logits (through the recurrence)."""
    m = models["recurrentgemma-mqa"]
    ids = ids_for(m, seed=8, B=1, T=40)
    other = ids.copy()
    other[0, 1] = (other[0, 1] + 1) % m.n_vocab
    assert np.abs(m.forward(ids)[0, -1] - m.forward(other)[0, -1]).max() > 1e-3


# --- the CLI, aliases, bad input -----------------------------------------------------------------


def test_info_describes_the_checkpoint(capsys):
    assert main(["info", "--model", str(DATA / "tiny" / "recurrentgemma-mqa")]) == 0
    out = capsys.readouterr().out
    assert "Griffin: 4 recurrent blocks" in out and "1 local attention blocks (window 8" in out
    assert "whatever its length" in out and "lru_width" in out
    n = RecurrentGemmaConfig.from_json(DATA / "tiny" / "recurrentgemma-mqa" / "config.json").num_parameters
    assert f"{n:,}" in out
    assert n == sum(a.size for a in load_file(str(DATA / "tiny" / "recurrentgemma-mqa" / "model.safetensors")).values())


def test_models_lists_the_aliases(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for alias in ("recurrentgemma-2b", "recurrentgemma-2b-it", "recurrentgemma-9b", "recurrentgemma-9b-it"):
        assert re.search(rf"{alias}\s+(base|chat)\s+huggingface.co/google/{alias}\b", out)


def test_generate_through_the_cli(capsys):
    d = DATA / "tiny" / "recurrentgemma-gqa"
    assert main(["generate", "--model", str(d), "--max-new-tokens", "5", "Once upon a time"]) == 0
    out = capsys.readouterr().out
    model = Model.from_pretrained(d, progress=False)
    assert model.generate("Once upon a time", max_new_tokens=5) in out


def broken_copy(tmp_path, edit_config=None, edit_tensors=None):
    src = DATA / "tiny" / "recurrentgemma-mqa"
    d = tmp_path / "broken"
    shutil.copytree(src, d)
    if edit_config:
        cfg = json.loads((d / "config.json").read_text())
        edit_config(cfg)
        (d / "config.json").write_text(json.dumps(cfg))
    if edit_tensors:
        t = load_file(str(d / "model.safetensors"))
        edit_tensors(t)
        save_file(t, str(d / "model.safetensors"))
    return d


@pytest.mark.parametrize("edit_config, edit_tensors, says", [
    (lambda c: c.update(block_types=["recurrent", "mamba"]), None, "block_types"),
    (lambda c: c.update(lru_width=30), None, r"lru_width \(30\) must be a multiple"),
    (lambda c: c.update(hidden_activation="relu"), None, "tanh GELU"),
    (None, lambda t: t.pop("model.layers.0.temporal_block.rg_lru.recurrent_param"),
     "missing tensor model.layers.0.temporal_block.rg_lru.recurrent_param"),
    (None, lambda t: t.update({"model.layers.2.temporal_block.conv_1d.weight": np.zeros((64, 1, 4), np.float32)}),
     "unexpected tensor model.layers.2.temporal_block.conv_1d.weight"),
    (None, lambda t: t.update({"model.layers.1.temporal_block.conv_1d.weight": np.zeros((64, 1, 3), np.float32)}),
     r"conv_1d.weight has shape \(64, 1, 3\), config.json implies \(64, 1, 4\)"),
], ids=["block-type", "lru-width", "activation", "missing", "unexpected", "shape"])
def test_a_bad_checkpoint_is_one_error_line(tmp_path, capsys, edit_config, edit_tensors, says):
    d = broken_copy(tmp_path, edit_config, edit_tensors)
    assert main(["generate", "--model", str(d), "--max-new-tokens", "2", "hi"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gemma-ref: error: ") and re.search(says, err[0]), err


def test_what_it_cannot_do_says_so(models):
    m = models["recurrentgemma-mqa"]
    with pytest.raises(GemmaRefError, match="takes no images"):
        m.generate("hi", images=[np.zeros((8, 8, 3), np.uint8)])
    with pytest.raises(GemmaRefError, match=r"token id out of range"):
        m.forward([1, 600])
