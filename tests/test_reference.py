"""Golden dumps and `compare`: the format, the hidden-state convention, and proof that
compare finds real bugs at the right layer (one perturbed weight, a wrong RoPE theta,
a sliding window off by one), through the library and through the CLI."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from gemma_ref import GemmaRefError, Model
from gemma_ref import reference as R
from gemma_ref.cli import main
from gemma_ref.config import GemmaConfig
from gemma_ref.loader import expected_shapes

DATA = Path(__file__).parent / "data"
S, F = "sliding_attention", "full_attention"
WINDOW = 8
# Gemma 3 layout in miniature: the first full-attention layer is layer 2.
CONFIG = dict(model_type="gemma3_text", vocab_size=512, hidden_size=64, intermediate_size=96,
              num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              query_pre_attn_scalar=16, sliding_window=WINDOW, rope_theta=1e6,
              rope_local_base_freq=1e4, layer_types=[S, S, F, S, S, F], max_position_embeddings=128)
FIRST_FULL = CONFIG["layer_types"].index(F)
PROMPTS = ["Hello world", "The quick brown fox jumps over the lazy dog again and again"]


def write_tiny(d: Path, config=CONFIG, seed=0) -> Path:
    """A random Gemma 3 checkpoint in Hugging Face layout, written by hand."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in expected_shapes(GemmaConfig.from_dict(config)).items():
        std = 0.3 if name.endswith("norm.weight") else 1.0 if "embed" in name else 0.15
        tensors[name] = (rng.standard_normal(shape) * std).astype(np.float32)
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config))
    shutil.copy(DATA / "tokenizer" / "tiny.model", d / "tokenizer.model")
    return d


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("ref") / "tiny")


@pytest.fixture(scope="module")
def model(ckpt):
    return Model.from_pretrained(ckpt)


@pytest.fixture(scope="module")
def golden(model):
    """The correct model's dump, with traces; 20 tokens, longer than the window."""
    ids = np.r_[2, np.random.default_rng(7).integers(4, 512, 19)]
    return R.Golden([R.dump_prompt(model, ids, trace=True)], R.provenance(model), "golden")


def first(report):
    p = report["prompts"][0]
    return p["first_divergence"], p["first_trace_divergence"]


# --- the hidden-state convention and the file -------------------------------------------


def test_hidden_states_follow_transformers_convention(model):
    ids = np.array([[2, 17, 99, 5]])
    trace = {}
    model.forward(ids, trace=trace)
    hs = R.hidden_states(trace, 6)  # [L+1, B, T, D]
    assert hs.shape == (7, 1, 4, 64)
    E = model.weights["model.embed_tokens.weight"]
    np.testing.assert_allclose(hs[0, 0], E[ids[0]] * np.sqrt(64, dtype=np.float32), rtol=1e-6)
    np.testing.assert_array_equal(hs[3], trace["model.layers.2"])  # entry j = output of layer j-1
    last = trace["model.layers.5"]  # the final entry is after the final norm, not the raw output
    w = model.weights["model.norm.weight"]
    normed = last / np.sqrt((last ** 2).mean(-1, keepdims=True) + 1e-6) * (1 + w)
    np.testing.assert_allclose(hs[6], normed, rtol=1e-5)


def test_dump_save_load_roundtrip(model, ckpt, tmp_path):
    g = R.dump(model, PROMPTS + [[2, 10, 11, 12]], k=0, max_new_tokens=5, trace=True)
    R.save(g, tmp_path / "g.npz")
    back = R.load(tmp_path / "g.npz")
    assert len(back.prompts) == 3 and back.prompts[0].text == "Hello world"
    assert back.prompts[2].text is None
    for a, b in zip(g.prompts, back.prompts):
        for name in ("input_ids", "hidden_states", "logits", "greedy_ids"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert list(a.trace) == list(b.trace)  # computation order survives
    d = back.prompts[1]
    T = len(d.input_ids)
    assert d.hidden_states.shape == (7, T, 64) and d.logits.shape == (T, 512)
    assert d.greedy_ids.tolist() == model.generate(d.input_ids.tolist(), max_new_tokens=5, stop=[])
    pv = back.provenance
    assert pv["engine"] == "gemma-ref" and pv["dtype"] == "float32" and pv["numpy"] == np.__version__
    sha = hashlib.sha256((ckpt / "model.safetensors").read_bytes()).hexdigest()
    assert pv["files"]["model.safetensors"] == sha
    with np.load(tmp_path / "g.npz") as z:  # the documented keys, nothing pickled
        assert str(z["format"]) == R.FORMAT and int(z["num_prompts"]) == 3
        assert "prompt_0/trace/model.layers.2.self_attn.q_rope" in z.files


def test_topk_dump_keeps_the_largest_logits(model):
    d = R.dump_prompt(model, [2, 30, 40, 50], k=5, max_new_tokens=0)
    full = model.forward(np.array([2, 30, 40, 50]))
    assert d.logits is None and d.greedy_ids is None
    np.testing.assert_array_equal(d.topk_ids[:, 0], full.argmax(-1))
    np.testing.assert_array_equal(d.topk_logits, -np.sort(-full, axis=-1)[:, :5])


# --- compare ------------------------------------------------------------------------------


def test_identical_dumps_compare_exactly(golden):
    r = R.compare(golden, golden)
    p = r["prompts"][0]
    assert r["ok"] and all(e["max_abs"] == 0 for e in p["hidden_states"] + p["trace"])
    assert p["argmax"]["agree"] == 20 and p["greedy"]["first_mismatch"] is None
    assert p["topk_overlap"]["min"] == 1.0
    json.dumps(r)  # JSON-ready


def test_float32_is_within_tolerance_of_float64(ckpt, golden):
    m64 = Model.from_pretrained(ckpt, dtype="float64")
    c = R.candidate_from_model(m64, golden, trace=True)
    assert c.prompts[0].hidden_states.dtype == np.float64
    r = R.compare(c, golden)  # float64 is the ground truth
    assert r["ok"]
    assert max(e["max_rel"] for e in r["prompts"][0]["hidden_states"]) < 1e-5


def test_perturbed_weight_is_found_at_its_layer(model, golden):
    for k in (1, 4):
        w = dict(model.weights.arrays)
        name = f"model.layers.{k}.mlp.down_proj.weight"
        w[name] = w[name].copy()
        w[name][3, 5] += 0.5
        bad = Model(model.config, w, model.tokenizer)
        r = R.compare(golden, R.candidate_from_model(bad, golden, trace=True))
        where, trace = first(r)
        assert not r["ok"] and where["layer"] == k and where["name"] == f"model.layers.{k}"
        assert trace["name"] == f"model.layers.{k}.mlp"  # the first intermediate it changes


def test_wrong_rope_theta_is_found_at_the_first_global_layer(model, golden):
    """The local base on global layers: position 0 is not rotated, so position 1 differs first."""
    bad = Model(dataclasses.replace(model.config, rope_theta=1e4), model.weights.arrays, model.tokenizer)
    r = R.compare(golden, R.candidate_from_model(bad, golden, trace=True))
    where, trace = first(r)
    assert where["layer"] == FIRST_FULL and where["position"] == 1
    assert trace["name"] == f"model.layers.{FIRST_FULL}.self_attn.q_rope" and trace["position"] == 1


def test_window_off_by_one_is_found_at_the_first_position_past_the_window(model, golden):
    bad = Model(dataclasses.replace(model.config, sliding_window=WINDOW + 1), model.weights.arrays,
                model.tokenizer)
    r = R.compare(golden, R.candidate_from_model(bad, golden, trace=True))
    where, trace = first(r)
    assert where["layer"] == 0 and where["position"] == WINDOW
    assert trace["name"] == "model.layers.0.self_attn.attn" and trace["position"] == WINDOW


def test_topk_golden_against_full_and_topk_candidates(model, golden):
    g = golden.prompts[0]
    topk = dataclasses.replace(g, logits=None, topk_ids=R.top_k(g.logits, 8)[0],
                               topk_logits=R.top_k(g.logits, 8)[1], trace={})
    small = R.Golden([topk], {}, "topk")
    for other in (golden, small):
        r = R.compare(small, other, k=5)
        p = r["prompts"][0]
        assert r["ok"] and p["hidden_states"][-1]["name"] == "logits (top-k)"
        assert p["topk_overlap"] == {"k": 5, "mean": 1.0, "min": 1.0}
    shifted = dataclasses.replace(topk, topk_logits=topk.topk_logits + 0.5)
    r = R.compare(small, R.Golden([shifted], {}, "shifted"))
    assert not r["ok"] and r["prompts"][0]["first_divergence"]["name"] == "logits (top-k)"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["logits", "hidden_states", "all logits"])
def test_nan_or_inf_where_the_golden_is_finite_fails(golden, bad, where):
    """A broken engine never passes: before, all-NaN logits passed ("max abs 0.00e+00")."""
    g = golden.prompts[0]
    if where == "all logits":
        other = dataclasses.replace(g, logits=np.full_like(g.logits, bad))
    else:
        a = getattr(g, where).copy()
        a[..., 2, 7] = bad  # one element, at position 2
        other = dataclasses.replace(g, **{where: a})
    r = R.compare(golden, R.Golden([other], {}, "broken"))
    p = r["prompts"][0]
    assert not r["ok"] and p["first_divergence"]["position"] == (0 if where == "all logits" else 2)
    assert p["first_divergence"]["rel"] == np.inf
    assert "FAIL" in R.format_report(r)


def test_the_same_infinity_on_both_sides_agrees(golden):
    g = golden.prompts[0]
    logits = g.logits.copy()
    logits[1, 3] = -np.inf  # e.g. a masked token, in both engines
    same = R.Golden([dataclasses.replace(g, logits=logits)], {}, "x")
    assert R.compare(same, same)["ok"]
    assert not R.compare(same, golden)["ok"]  # the golden's -inf against a finite value


@pytest.mark.parametrize("rtol", [float("nan"), float("inf"), 0.0, -1e-3, "1e-3", True])
def test_tolerance_must_be_finite_and_positive(golden, rtol):
    with pytest.raises(GemmaRefError, match="finite number > 0"):
        R.compare(golden, golden, rtol)


def test_cli_compare_fails_a_nan_candidate(golden_file, tmp_path, capsys):
    with np.load(golden_file) as z:
        members = {k: z[k] for k in z.files}
    members["prompt_1/logits"] = np.full_like(members["prompt_1/logits"], np.nan)
    np.savez(tmp_path / "nan.npz", **members)
    assert main(["compare", str(golden_file), str(tmp_path / "nan.npz")]) == 1
    out = capsys.readouterr().out
    assert "logits (full)" in out and "inf" in out and out.rstrip().endswith("FAIL: 1 of 3 prompts beyond tolerance")


def test_greedy_disagreement_is_reported(golden):
    g = golden.prompts[0]
    other = dataclasses.replace(g, greedy_ids=np.r_[g.greedy_ids[:3], (g.greedy_ids[3:] + 1) % 512])
    p = R.compare(golden, R.Golden([other], {}, "x"))["prompts"][0]
    assert p["greedy"] == {"agree": 3, "total": 16, "first_mismatch": 3}


def test_mismatched_inputs_are_refused(golden):
    g = golden.prompts[0]
    with pytest.raises(GemmaRefError, match="different input_ids"):
        R.compare(golden, R.Golden([dataclasses.replace(g, input_ids=g.input_ids[:-1])], {}, "x"))
    with pytest.raises(GemmaRefError, match="numbers of prompts"):
        R.compare(golden, R.Golden([g, g], {}, "x"))


def test_transformers_golden_passes_compare(tmp_path, capsys):
    """A golden made by transformers (tests/data/tiny), rewritten into the dump format."""
    d = DATA / "tiny" / "gemma3-mqa"
    if not (d / "golden.npz").exists():
        pytest.skip("tests/data/tiny/gemma3-mqa not present")
    z = np.load(d / "golden.npz")
    np.savez(tmp_path / "hf.npz", **{"prompt_0/input_ids": z["input_ids"][0],
                                     "prompt_0/logits": z["logits"][0],
                                     "prompt_0/hidden_states": z["hidden_states"]})
    code = main(["compare", str(tmp_path / "hf.npz"), "--model", str(d), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 0 and r["ok"] and len(r["prompts"][0]["hidden_states"]) == 8


# --- the CLI ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def golden_file(ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "golden.npz"
    prompts = out.parent / "prompts.jsonl"
    prompts.write_text('"The quick brown fox jumps over the lazy dog again and again"\n'
                       '{"input_ids": [2, 40, 41, 42]}\n')
    assert main(["dump", "--model", str(ckpt), "-p", "Hello world", "--prompts", str(prompts),
                 "--out", str(out), "-n", "4", "--trace"]) == 0
    return out


def perturbed(ckpt, d: Path, k: int) -> Path:
    shutil.copytree(ckpt, d)
    t = dict(load_file(str(d / "model.safetensors")))
    t[f"model.layers.{k}.self_attn.v_proj.weight"][0, 0] += 1.0
    save_file(t, str(d / "model.safetensors"))
    return d


def test_cli_dump_then_compare_passes(golden_file, ckpt, capsys):
    assert len(R.load(golden_file).prompts) == 3
    code = main(["compare", str(golden_file), "--model", str(ckpt)])
    out = capsys.readouterr().out
    assert code == 0 and "PASS: 3 prompts within tolerance" in out
    assert "model.norm(model.layers.5)" in out and "greedy continuation: 4/4" in out


def test_cli_compare_fails_beyond_tolerance(golden_file, ckpt, tmp_path, capsys):
    bad = perturbed(ckpt, tmp_path / "bad", k=3)
    code = main(["compare", str(golden_file), "--model", str(bad)])
    out = capsys.readouterr().out
    assert code == 1 and "FAIL: 3 of 3 prompts" in out
    assert "first divergence: model.layers.3 at position 0" in out
    assert "first beyond tolerance: model.layers.3.self_attn.v_proj" in out
    code = main(["compare", str(golden_file), "--model", str(bad), "--json"])
    r = json.loads(capsys.readouterr().out)
    assert code == 1 and not r["ok"]
    assert [p["first_divergence"]["layer"] for p in r["prompts"]] == [3, 3, 3]
    assert len(r["prompts"][1]["hidden_states"][0]["abs"]) == r["prompts"][1]["tokens"]


def test_cli_compare_two_files_and_tolerance(golden_file, ckpt, tmp_path, capsys):
    other, prompts = tmp_path / "f64.npz", golden_file.parent / "prompts.jsonl"
    dump = ["dump", "--model", str(ckpt), "--dtype", "float64", "-o", str(other), "-n", "4"]
    assert main(dump + ["--prompts", str(prompts)]) == 0  # without "Hello world"
    capsys.readouterr()
    assert main(["compare", str(golden_file), str(other)]) == 2
    assert "different numbers of prompts" in capsys.readouterr().err
    assert main(dump + ["-p", "Hello, world", "--prompts", str(prompts)]) == 0
    capsys.readouterr()
    assert main(["compare", str(golden_file), str(other)]) == 2
    assert "prompt 0: the two dumps have different input_ids" in capsys.readouterr().err
    assert main(dump + ["-p", "Hello world", "--prompts", str(prompts)]) == 0
    assert main(["compare", str(other), str(golden_file)]) == 0  # float32 against float64
    assert main(["compare", str(other), str(golden_file), "--rtol", "1e-12"]) == 1


@pytest.mark.parametrize("case", ["missing", "not npz", "no keys", "neither", "both"])
def test_cli_compare_bad_input_is_one_line_and_exit_2(case, golden_file, ckpt, tmp_path, capsys):
    (tmp_path / "junk.npz").write_text("not a zip")
    np.savez(tmp_path / "other.npz", logits=np.zeros((2, 3)))
    argv, message = {
        "missing": ([str(tmp_path / "nope.npz"), "--model", str(ckpt)], "no such file"),
        "not npz": ([str(tmp_path / "junk.npz"), str(golden_file)], "not a .npz"),
        "no keys": ([str(tmp_path / "other.npz"), str(golden_file)], "not a golden file"),
        "neither": ([str(golden_file)], "either a second .npz or --model"),
        "both": ([str(golden_file), str(golden_file), "--model", str(ckpt)], "not both"),
    }[case]
    code = main(["compare", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert err.startswith("gemma-ref: error: ")


@pytest.mark.parametrize("argv, message", [
    (["--out", "x.npz"], "no prompts"),
    (["--prompts", "missing.jsonl", "--out", "x.npz"], "no such prompts file"),
])
def test_cli_dump_bad_input(argv, message, ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(["dump", "--model", str(ckpt), *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1


def test_read_prompts_rejects_bad_lines(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('"ok"\n{"prompt": 3}\n')
    with pytest.raises(GemmaRefError, match="p.jsonl:2"):
        R.read_prompts(f)
    f.write_text("not json\n")
    with pytest.raises(GemmaRefError, match="not a JSON line"):
        R.read_prompts(f)


def test_committed_270m_goldens_in_compare_format_are_the_transformers_goldens_rearranged():
    """tests/data/gemma3-270m/compare.npz is what scripts/golden_270m_for_compare.py makes
    from transformers' golden.npz / golden.json, and compare reads it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "golden_270m_for_compare", DATA.parent.parent / "scripts" / "golden_270m_for_compare.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    made = script.convert(DATA / "gemma3-270m")
    with np.load(DATA / "gemma3-270m" / "compare.npz") as z:
        assert set(z.files) == set(made)
        for k in z.files:
            np.testing.assert_array_equal(z[k], made[k], err_msg=k)
    g = R.load(DATA / "gemma3-270m" / "compare.npz")
    assert len(g.prompts) == 8 and g.provenance["engine"] == "transformers"
    assert g.prompts[0].hidden_states.shape == (19, 6, 640) and g.prompts[0].positions.tolist() == [5]
