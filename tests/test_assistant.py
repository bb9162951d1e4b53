"""Gemma 4 assistants (MTP drafters) and speculative decoding (gemma_ref/assistant.py).

Goldens: tests/data/tiny/gemma4-assistant*/ (scripts/make_assistant_goldens.py, transformers
5.25.0): each drafter's logits for the drafts transformers makes right after a prefill of
its tiny target, and the target's greedy output (which transformers' assisted generate
reproduced). Speculative decoding is checked to give exactly the greedy tokens with
drafts that are always wrong (the random drafters) and with drafts forced right or
partly right (so both the accept and the reject paths run).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from gemma_ref import Model
from gemma_ref.assistant import Assistant, centroid_logits
from gemma_ref.cli import main
from gemma_ref.errors import GemmaRefError
from gemma_ref.kv_cache import new_cache
from gemma_ref.model import forward

TINY = Path(__file__).parent / "data" / "tiny"
PAIRS = {"gemma4-assistant": "gemma4-ple-shared", "gemma4-assistant-centroids": "gemma4-moe-kv"}


@pytest.fixture(scope="module")
def loaded():
    return {a: (Model.from_pretrained(TINY / a, progress=False), Model.from_pretrained(TINY / t, progress=False))
            for a, t in PAIRS.items()}


def prefill(target, prompt):
    """The target's cache after `prompt`, its greedy next token, its last hidden state."""
    cache = new_cache(target.config, 1, 64)
    logits, hidden = forward(target.weights, target.config, np.array([prompt]), None, cache,
                             last_only=True, return_hidden=True)
    return cache, int(np.argmax(logits[0, -1])), hidden[:, -1:]


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("j", [0, 1])
def test_drafts_match_transformers(loaded, name, j):
    """The 4 drafts after the prefill: logits within 1e-4 of transformers, same tokens
    (prompt 1 is longer than the drafter's sliding window + 1: the window bites)."""
    assistant, target = loaded[name]
    g = np.load(TINY / name / "drafts.npz")
    prompt = [int(t) for t in g[f"prompt_{j}"]]
    cache, first, h = prefill(target, prompt)
    assert first == int(g[f"first_{j}"])
    ids, logits = assistant.drafts(target, cache, first, h, len(prompt), 4)
    assert ids == g[f"draft_tokens_{j}"].tolist()
    np.testing.assert_allclose(np.stack(logits), g[f"draft_logits_{j}"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("j", [0, 1])
@pytest.mark.parametrize("k", [1, 3, 20])
def test_speculative_equals_transformers_greedy(loaded, name, j, k):
    """Random drafters are (almost) always wrong: the reject path, every round."""
    assistant, target = loaded[name]
    g = np.load(TINY / name / "drafts.npz")
    prompt, greedy = g[f"prompt_{j}"].tolist(), g[f"greedy_{j}"].tolist()
    stats = {}
    out = target.generate(prompt, assistant=assistant, draft_tokens=k, max_new_tokens=len(greedy),
                          stop=[], stats=stats)
    assert out == greedy
    assert stats["drafted"] > 0 and stats["new_tokens"] == len(greedy)
    assert stats["decode_steps"] == len(greedy) - 1 - stats["accepted"]  # one target pass per round


class Checked(Assistant):
    """Drafts as the assistant does, and checks every round's drafts against drafts made
    from a fresh cache: a prefill of the prompt and the tokens decided so far. So the
    rolled-back cache (forget_from, the rings' spare slots) shows the drafter what a
    cache that never held a rejected draft would."""

    def __init__(self, base, sequence, rounds):
        self.__dict__.update(base.__dict__)
        self.sequence, self.rounds = sequence, rounds

    def drafts(self, target, cache, token, h, P, n):
        ids, logits = super().drafts(target, cache, token, h, P, n)
        assert self.sequence[P] == token
        fresh, first, h_fresh = prefill(target, self.sequence[:P])
        assert first == token
        ref_ids, ref_logits = super().drafts(target, fresh, token, h_fresh, P, n)
        assert ids == ref_ids
        np.testing.assert_allclose(np.stack(logits), np.stack(ref_logits), atol=1e-4, rtol=0)
        self.rounds.append(P)
        return ids, logits


@pytest.mark.parametrize("name", PAIRS)
def test_later_rounds_draft_from_the_rolled_back_cache(loaded, name):
    assistant, target = loaded[name]
    g = np.load(TINY / name / "drafts.npz")
    prompt, greedy = g["prompt_1"].tolist(), g["greedy_1"].tolist()
    rounds = []
    out = target.generate(prompt, assistant=Checked(assistant, prompt + greedy, rounds), draft_tokens=3,
                          max_new_tokens=len(greedy), stop=[])
    # Every draft rejected: a round per token (the last, with no room left, drafts nothing).
    assert out == greedy and len(rounds) == len(greedy) - 2
    assert rounds[-1] + 1 > len(prompt) + target.config.sliding_window + 3 + 1  # past a ring's slots


class Forced(Assistant):
    """Drafts the target's own greedy continuation, corrupted where `wrong(n)` says:
    an assistant whose output is forced, to exercise acceptance."""

    def __init__(self, base, greedy, prompt_len, wrong):
        self.__dict__.update(base.__dict__)
        self.greedy, self.prompt_len, self.wrong = greedy, prompt_len, wrong

    def drafts(self, target, cache, token, h, P, n):
        at = P + 1 - self.prompt_len  # index in greedy of the first draft
        assert self.greedy[at - 1] == token  # the newest token is the target's own
        ids = [t if not self.wrong(at + i) else (t + 1) % 512 for i, t in enumerate(self.greedy[at:at + n])]
        ids += [5] * (n - len(ids))  # past the known continuation
        return ids, [None] * n


@pytest.mark.parametrize("wrong,all_right", [
    (lambda n: False, True),  # every draft right: all accepted
    (lambda n: n % 3 == 0, False),  # every third wrong: some rounds end early
])
@pytest.mark.parametrize("k", [2, 5])
def test_speculative_forced_drafts(loaded, wrong, all_right, k):
    assistant, target = loaded["gemma4-assistant"]
    g = np.load(TINY / "gemma4-assistant" / "drafts.npz")
    prompt, greedy = g["prompt_1"].tolist(), g["greedy_1"].tolist()
    forced = Forced(assistant, greedy, len(prompt), wrong)
    stats = {}
    out = target.generate(prompt, assistant=forced, draft_tokens=k, max_new_tokens=len(greedy), stop=[],
                          stats=stats)
    assert out == greedy
    if all_right:  # 23 tokens after the prefill's, k + 1 per target pass (k drafts + its own)
        assert stats["decode_steps"] == -(-23 // (k + 1)) and stats["accepted"] == 23 - stats["decode_steps"]
    else:
        assert 0 < stats["accepted"] < 23


def test_speculative_stops_inside_accepted_drafts(loaded):
    """A stop token among accepted drafts ends generation there, as plain greedy does."""
    assistant, target = loaded["gemma4-assistant"]
    g = np.load(TINY / "gemma4-assistant" / "drafts.npz")
    prompt, greedy = g["prompt_0"].tolist(), g["greedy_0"].tolist()
    stop = next(t for t in greedy[3:] if greedy.index(t) >= 3)
    plain = target.generate(prompt, max_new_tokens=24, stop=[stop])
    forced = Forced(assistant, greedy, len(prompt), lambda n: False)
    assert target.generate(prompt, assistant=forced, draft_tokens=6, max_new_tokens=24, stop=[stop]) == plain
    assert len(plain) == greedy.index(stop)


def test_speculative_text_and_batch(loaded):
    """Text prompts and a batch (one prompt at a time) give plain greedy's text."""
    assistant, target = loaded["gemma4-assistant"]
    prompts = ["hello world", "the cat sat on", "a"]
    for n in (0, 1, 2, 7, 16):
        assert (target.generate(prompts, assistant=assistant, max_new_tokens=n)
                == target.generate(prompts, max_new_tokens=n))


def test_centroid_logits_by_hand():
    """4 tokens in 2 clusters ({2, 0} and {1, 3}); the top cluster gets true logits,
    the rest min(those) - 1."""
    E = np.array([[1.0, 0], [0, 1], [2, 0], [0, 3]])
    centroids = np.array([[1.0, 0], [0, 1]])
    x = np.array([[[0.5, 0.25]]])  # centroid scores 0.5, 0.25 -> cluster 0: tokens 2, 0
    out = centroid_logits(x, E, centroids, np.array([2, 0, 1, 3]), 1)
    np.testing.assert_allclose(out[0, 0], [0.5, -0.5, 1.0, -0.5])


T = str(TINY / "gemma4-ple-shared")
A = str(TINY / "gemma4-assistant")


@pytest.mark.parametrize("argv,message", [
    (["generate", "--model", A, "hi"], "a Gemma 4 assistant drafts for its target model"),
    (["generate", "--model", T, "--assistant", T, "hi"], "assistant must be a Gemma 4 assistant"),
    (["generate", "--model", str(TINY / "gemma3-gqa"), "--assistant", A, "hi"],
     "the target must be a Gemma 4 model, not gemma3_text"),
    (["generate", "--model", str(TINY / "gemma4-moe-kv"), "--assistant", A, "hi"],
     r"does not fit the target .*sliding_attention layers with head_dim 16 x 2 kv heads"),
    (["generate", "--model", T, "--assistant", A, "-t", "0.7", "hi"], "greedy only"),
    (["generate", "--model", T, "--draft-tokens", "3", "hi"], "--draft-tokens goes with --assistant"),
    (["generate", "--model", T, "--assistant", A, "--draft-tokens", "0", "hi"], "must be >= 1"),
    (["generate", "--model", T, "--assistant", str(TINY / "nope"), "hi"], "nope"),
])
def test_cli_bad_input(capsys, argv, message):
    import re

    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("gemma-ref: error: ") and re.search(message, err), err


def test_cli_generate_and_info(capsys):
    assert main(["generate", "--model", T, "-n", "9", "hello"]) == 0
    plain = capsys.readouterr().out
    assert main(["generate", "--model", T, "--assistant", A, "--draft-tokens", "2", "-n", "9", "hello"]) == 0
    out = capsys.readouterr()
    assert out.out == plain and "drafts accepted 0/" in out.err
    assert main(["info", "--model", str(TINY / "gemma4-assistant-centroids")]) == 0
    info = capsys.readouterr().out
    assert "Gemma 4 MTP drafter" in info and "3 of 16 clusters (32 tokens each)" in info
    assert "parameters  30,218" in info  # 16x24 centroids + 512x24 embedding + 2 layers + projections
    assert main(["models"]) == 0
    assert re.search(r"\n  4-e2b-it-assistant +draft +huggingface.co/google/gemma-4-E2B-it-assistant\n",
                     capsys.readouterr().out)


def test_api_bad_input(loaded):
    assistant, target = loaded["gemma4-assistant"]
    with pytest.raises(GemmaRefError, match="assistant must be a Gemma 4 assistant"):
        target.generate("hi", assistant="4-e2b-it-assistant")
    with pytest.raises(GemmaRefError, match="draft_tokens goes with assistant"):
        target.generate("hi", draft_tokens=3)
    with pytest.raises(GemmaRefError, match="a Gemma 4 assistant drafts for its target"):
        assistant.generate("hi")


def _copy(tmp_path, name="gemma4-assistant-centroids"):
    import shutil

    d = tmp_path / name
    shutil.copytree(TINY / name, d)
    return d


def _rewrite(d, change):
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(d / "model.safetensors"))
    change(tensors)
    save_file(tensors, str(d / "model.safetensors"))


@pytest.mark.parametrize("change,message", [
    (lambda t: t.pop("pre_projection.weight"), "missing tensor pre_projection.weight"),
    (lambda t: t.update({"post_projection.weight": np.zeros((48, 25), np.float32)}),
     r"post_projection.weight has shape \(48, 25\), config.json implies \(48, 24\)"),
    (lambda t: t.update({"masked_embedding.token_ordering": np.zeros(512, np.int64)}),
     "token_ordering must be a permutation of the 512 token ids"),
    (lambda t: t.update({"lm_head.bias": np.zeros(512, np.float32)}), "unexpected tensor lm_head.bias"),
])
def test_load_bad_checkpoint(tmp_path, change, message):
    d = _copy(tmp_path)
    _rewrite(d, change)
    with pytest.raises(GemmaRefError, match=message):
        Model.from_pretrained(d, progress=False)


def test_unified_assistant_is_refused_by_name(tmp_path):
    import json

    d = _copy(tmp_path)
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, "model_type": "gemma4_unified_assistant"}))
    with pytest.raises(GemmaRefError, match="gemma4_unified_assistant .* is not supported: its target, Gemma 4 "
                                            "12B Unified"):
        Model.from_pretrained(d, progress=False)


@pytest.mark.parametrize("key,value,message", [
    ("num_kv_shared_layers", 1, "every layer of an assistant shares the target's keys and values"),
    ("hidden_size_per_layer_input", 8, "hidden_size_per_layer_input must be 0 in an assistant"),
    ("enable_moe_block", True, "enable_moe_block must be false"),
])
def test_load_bad_config(tmp_path, key, value, message):
    import json

    d = _copy(tmp_path)
    config = json.loads((d / "config.json").read_text())
    config["text_config"][key] = value
    (d / "config.json").write_text(json.dumps(config))
    with pytest.raises(GemmaRefError, match=message):
        Model.from_pretrained(d, progress=False)
