"""Scoring: log-probabilities, strided perplexity, multiple-choice scores, and their CLI."""

import json
import math

import numpy as np
import pytest

from gemma_ref import GemmaRefError, Model
from gemma_ref import scoring
from gemma_ref.cli import main
from test_reference import write_tiny

TEXT = ("The quick brown fox jumps over the lazy dog. " * 4 + "Pack my box with five dozen liquor jugs. "
        "How vexingly quick daft zebras jump!")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("score") / "tiny", seed=3)


@pytest.fixture(scope="module")
def model(ckpt):
    return Model.from_pretrained(ckpt)


def reference_logprobs(model, ids):
    """log softmax of one full forward, in float64: what logprobs must equal."""
    logits = model.forward(np.asarray(ids)).astype(np.float64)  # [T, V]
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return logits[np.arange(len(ids) - 1), ids[1:]] - lse[:-1]


def test_log_softmax_at_by_hand():
    logits = np.array([[0.0, 0.0, 0.0, 0.0], [1000.0, 1000.0, -1000.0, -1000.0]], np.float32)
    out = scoring.log_softmax_at(logits, np.array([1, 0]))
    np.testing.assert_allclose(out, [math.log(0.25), math.log(0.5)], rtol=1e-15)  # no overflow
    assert out.dtype == np.float64


def test_logprobs_equal_the_full_forward_across_chunks(model, monkeypatch):
    ids = np.r_[2, np.random.default_rng(0).integers(4, 512, 40)]
    expected = reference_logprobs(model, ids)
    monkeypatch.setattr(scoring, "CHUNK", 7)  # several chunks, and a prefill of context
    got = model.logprobs(ids)
    assert got.shape == (40,) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=1e-4)
    lp, top = scoring.token_logprobs(model, ids, start=25)
    np.testing.assert_allclose(lp, expected[24:], atol=1e-4)
    logits = model.forward(ids)
    assert top.tolist() == (logits[24:-1].argmax(-1) == ids[25:]).tolist()
    assert model.logprobs([2]).shape == (0,)


@pytest.mark.parametrize("bad, message", [([], "empty"), ([[2, 3]], "1-D"), ([2, 10**6], "in \\[0, 512\\)")])
def test_logprobs_rejects_bad_ids(model, bad, message):
    with pytest.raises(GemmaRefError, match=message):
        model.logprobs(bad)


def test_windows_by_hand():
    # 10 tokens, windows of 4 (<bos> included), stride 2: each of tokens 1..9 scored once.
    assert scoring.windows(10, 4, 2) == [(0, 4, 1), (2, 5, 4), (4, 7, 5), (6, 9, 7), (8, 10, 9)]
    assert scoring.windows(10, 4, 2, bos=False) == [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
    assert scoring.windows(5, 100, 50) == [(0, 5, 1)]
    for n, L, s, bos in [(50, 8, 7, True), (50, 8, 1, False), (51, 16, 5, True)]:
        scored = [t for _, end, first in scoring.windows(n, L, s, bos) for t in range(first, end)]
        assert scored == list(range(1, n))
        assert all(end - begin + (bos and begin > 0) <= L for begin, end, _ in scoring.windows(n, L, s, bos))
    for L, s in [(8, 8), (8, 0), (1, 1)]:
        with pytest.raises(GemmaRefError, match="stride|max_length"):
            scoring.windows(50, L, s)


def test_perplexity_one_window_is_exp_mean_nll(model):
    ids = model.tokenizer.encode(TEXT)[:model.config.max_position_embeddings]  # one window
    r = scoring.perplexity(model, ids, max_length=len(ids), stride=1)
    nll = -reference_logprobs(model, np.array(ids))
    assert r["windows"] == 1 and r["tokens_scored"] == len(ids) - 1
    np.testing.assert_allclose(r["perplexity"], math.exp(nll.mean()), rtol=1e-5)


@pytest.mark.parametrize("bos", [True, False])
def test_strided_perplexity_scores_each_token_once_with_its_window(model, bos):
    ids = np.array(model.tokenizer.encode(TEXT))
    r = scoring.perplexity(model, ids, max_length=16, stride=6, bos=bos, n_bytes=len(TEXT))
    nll = 0.0
    for begin, end, first in scoring.windows(len(ids), 16, 6, bos):
        window = np.r_[[2] if bos and begin else [], ids[begin:end]].astype(np.int64)
        shift = len(window) - (end - begin) - begin
        nll -= reference_logprobs(model, window)[first + shift - 1:].sum()
    assert r["windows"] > 3 and r["tokens_scored"] == len(ids) - 1
    np.testing.assert_allclose(r["nll_sum"], nll, rtol=1e-5)
    np.testing.assert_allclose(r["bits_per_byte"], nll / math.log(2) / len(TEXT), rtol=1e-5)


def test_split_pair_moves_trailing_space_like_lm_eval(model):
    tok = model.tokenizer
    ctx, cont = scoring.split_pair(tok, "The fox ", "jumps")
    assert ctx == tok.encode("The fox") and ctx + cont == tok.encode("The fox jumps")


def test_score_sums_continuation_logprobs(model):
    ctx = "The quick brown fox"
    choices = [" jumps over the lazy dog.", " banana", " how vexingly"]
    res = model.score(ctx, choices)
    assert [r["continuation"] for r in res] == choices
    for r, c in zip(res, choices):
        c_ids, cont = scoring.split_pair(model.tokenizer, ctx, c)
        lp = reference_logprobs(model, np.array(c_ids + cont))[len(c_ids) - 1:]
        np.testing.assert_allclose(r["logprob"], lp.sum(), atol=1e-4)
        assert r["n_tokens"] == len(cont) and r["n_chars"] == len(c) and r["n_bytes"] == len(c.encode())
        np.testing.assert_allclose(r["logprob_per_token"], r["logprob"] / len(cont))
        np.testing.assert_allclose(r["logprob_per_char"], r["logprob"] / len(c))


def test_score_with_ids_and_is_greedy(model):
    ctx = [2, 40, 41, 42]
    greedy = model.generate(ctx, max_new_tokens=3, stop=[])
    other = [(greedy[0] + 1) % 512] + greedy[1:]
    res = model.score(ctx, [greedy, other])
    assert res[0]["is_greedy"] and not res[1]["is_greedy"]
    assert res[0]["logprob"] > res[1]["logprob"]
    np.testing.assert_allclose(res[0]["logprob"], model.logprobs(ctx + greedy)[-3:].sum())


@pytest.mark.parametrize("args, message", [
    (("ctx", []), "non-empty"), (("ctx", "one string"), "non-empty"),
    (("ctx", [[5, 6]]), "must be text"), (([2, 3], [[]]), "no tokens"), (([], [[5]]), "empty context"),
])
def test_score_rejects_bad_input(model, args, message):
    with pytest.raises(GemmaRefError, match=message):
        model.score(*args)


# --- CLI ----------------------------------------------------------------------------------


def test_cli_perplexity(ckpt, model, tmp_path, capsys):
    f = tmp_path / "text.txt"
    f.write_text(TEXT)
    code = main(["perplexity", "--model", str(ckpt), str(f), "--max-length", "16", "--stride", "6", "--json"])
    r = json.loads(capsys.readouterr().out)
    expected = scoring.perplexity(model, model.tokenizer.encode(TEXT), 16, 6)
    assert code == 0 and r["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-9)
    assert main(["perplexity", "--model", str(ckpt), str(f)]) == 0
    assert capsys.readouterr().out.startswith("perplexity ")


@pytest.mark.parametrize("argv, message", [
    (["missing.txt"], "no such file"), (["empty.txt"], "empty file"),
    (["text.txt", "--max-length", "8", "--stride", "8"], "stride must be in"),
])
def test_cli_perplexity_bad_input(argv, message, ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "text.txt").write_text(TEXT)
    code = main(["perplexity", "--model", str(ckpt), *argv])
    err = capsys.readouterr().err
    assert code == 1 and message in err and len(err.strip().splitlines()) == 1
