"""Audio in for Gemma 3n: its feature extractor, Conformer and 188-token clips, against
goldens from transformers (tests/data/audio/gemma3n-*, scripts/make_audio_goldens_gemma3n.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gemma_ref import GemmaRefError, Model, audio
from gemma_ref.cli import main

import test_audio
from test_audio import CLIPS, clip_of

DATA = Path(__file__).parent / "data" / "audio"
VARIANTS = ["gemma3n-audio", "gemma3n-audio-b"]
TOL = 1e-4
CASES = {  # scripts/make_audio_goldens_gemma3n.py's
    "text": ("Once upon a time there was", []),
    "one": ("Transcribe <audio_soft_token> please.", ["tone.wav"]),
    "two": ("<audio_soft_token> and <audio_soft_token>: which is louder?", ["short.wav", "silence.wav"]),
    "stereo": ("Hear <audio_soft_token>", ["stereo44k.wav"]),
    "long": ("<audio_soft_token> In short:", ["long"]),
}


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    d = DATA / request.param
    return Model.from_pretrained(d, progress=False), np.load(d / "golden.npz")


def cases_of(g, need_files=True):
    return test_audio.cases_of(g, need_files, CASES)


def processor_features(g, case):
    n = len(g[f"{case}.samples_per_clip"])
    return {"input_features": np.stack([g[f"{case}.features_{k}"] for k in range(n)]),
            "input_features_mask": np.stack([g[f"{case}.features_mask_{k}"] for k in range(n)])}


def test_config_reads_gemma3n_names(variant):
    model, _ = variant
    c = model.audio.config
    assert (c.model_type, c.key_scale, c.context_inclusive, c.reduction_factor, c.soft_tokens) == \
        ("gemma3n_audio", False, True, 4, 188)
    assert (c.audio_token_id, c.boa_token_id, c.eoa_token_index, c.vocab_offset, c.pad_token) == (519, 512, 518, 518, 521)
    assert model.audio.features.semicausal is False and model.audio.features.log_of_max


def test_cumulative_group_norm_by_hand():
    x = np.array([[[1.0]], [[3.0]]], np.float32)  # T = 2, one value a step
    # t = 0: mean 1, var 0; t = 1: mean 2, var ((1 - 1)^2 + (3 - 2)^2) / 2 = 0.5
    out = audio.cumulative_group_norm(x, np.full(1, 2.0, np.float32), 1e-3)
    assert out[0, 0, 0] == 0.0 and np.isclose(out[1, 0, 0], 2 * (3 - 2) / np.sqrt(0.5 + 1e-3))


def test_features_are_the_processors(variant):
    model, g = variant
    for case in cases_of(g):
        names = CASES[case][1]
        if not names:
            continue
        for k, (feats, mask) in enumerate(model.audio.batch_features([clip_of(n) for n in names])):
            assert np.array_equal(mask, g[f"{case}.features_mask_{k}"])
            assert np.abs(feats - g[f"{case}.features_{k}"]).max() <= 1e-5, (case, k)


def test_tower_and_188_soft_tokens(variant):
    model, g = variant
    for case in cases_of(g, need_files=False):
        if not CASES[case][1]:
            continue
        trace = {}
        soft = model.embed_audio(processor_features(g, case), trace=trace)
        assert all(len(s) == 188 for s in soft)
        assert np.abs(np.concatenate(soft) - g[f"{case}.soft"]).max() <= TOL, case
        for k in range(len(soft)):
            tower = trace["audio_tower"][k][:len(g[f"{case}.tower_{k}"])]
            assert np.abs(tower - g[f"{case}.tower_{k}"]).max() <= TOL


def test_prompt_ids_logits_and_greedy(variant):
    model, g = variant
    for case in cases_of(g):
        prompt, names = CASES[case]
        clips = [clip_of(n) for n in names]
        ids, _, _ = model.prompt_inputs(prompt, audio=clips)
        assert ids == g[f"{case}.input_ids"].tolist(), case
        if clips:  # Gemma 4's marker works too
            assert model.prompt_inputs(prompt.replace("<audio_soft_token>", "<|audio|>"), audio=clips)[0] == ids
        want = g[f"{case}.logits"][:, :model.n_vocab]
        logits = model.forward(np.array(ids), audio=clips)
        assert np.abs(logits[-len(want):] - want).max() <= TOL, case
        assert model.generate(ids, audio=clips, max_new_tokens=12, stop=[]) == g[f"{case}.greedy_ids"].tolist()


def test_stereo_from_the_processors_features(variant):
    model, g = variant
    logits = model.forward(g["stereo.input_ids"], audio=processor_features(g, "stereo"))
    want = g["stereo.logits"][:, :model.n_vocab]  # its last rows
    assert np.abs(logits[-len(want):] - want).max() <= TOL


def test_cli_and_bad_markers(capsys):
    d = DATA / "gemma3n-audio"
    g = np.load(d / "golden.npz")
    assert main(["generate", "--model", str(d), "--audio", str(CLIPS / "tone.wav"),
                 "Transcribe <audio_soft_token> please.", "--max-new-tokens", "12"]) == 0
    want = Model.from_pretrained(d, progress=False).tokenizer.decode(g["one.greedy_ids"].tolist())
    assert capsys.readouterr().out == "Transcribe <audio_soft_token> please." + want + "\n"
    assert main(["generate", "--model", str(d), "--audio", str(CLIPS / "tone.wav"), "x <audio_soft_token> "
                 "<audio_soft_token>", "--max-new-tokens", "1"]) == 1
    assert "2 <audio_soft_token> marker(s) for 1" in capsys.readouterr().err
    with pytest.raises(GemmaRefError, match="no audio clips were given"):
        Model.from_pretrained(d, progress=False).generate("hear <audio_soft_token>", max_new_tokens=1)
