"""Gemma 4 12B Unified audio: raw 40 ms frames -> weightless RMSNorm -> Linear, through the
audio seam (audio.Audio with AudioConfig.samples_per_token), against transformers' goldens
(tests/data/family/gemma4-unified/audio_golden.npz, scripts/make_unified_audio_goldens.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from gemma_ref import Model
from gemma_ref.cli import main
from gemma_ref.errors import GemmaRefError

DATA = Path(__file__).parent / "data"
UNIFIED = DATA / "family" / "gemma4-unified"
CLIPS = DATA / "audio" / "clips"
IMAGES = DATA / "vision" / "images"
TOL = 1e-4
# scripts/make_unified_audio_goldens.CASES: prompt, clips, images
CASES = {
    "audio_one": ("Hear <|audio|> and say it.", ["short.wav"], []),
    "audio_two": ("<|audio|> then\n<|audio|>: which is louder?", ["tone.wav", "stereo44k.wav"], []),
    "audio_image": ("Look at <|image|> and hear <|audio|>.", ["short.wav"], ["rgb_wide"]),
}
try:
    import soxr  # noqa: F401  (the audio extra, which CI has not: resampling the 44.1 kHz clip)
    HAS_SOXR = True
except ImportError:
    HAS_SOXR = False


@pytest.fixture(scope="module")
def unified():
    return Model.from_pretrained(UNIFIED, progress=False), dict(np.load(UNIFIED / "audio_golden.npz"))


def clips_of(g, case):
    """The case's clips: files; without soxr the 44.1 kHz one as the 16 kHz samples
    transformers resampled it to (the golden's frames, unpadded)."""
    out = []
    for k, name in enumerate(CASES[case][1]):
        if name == "stereo44k.wav" and not HAS_SOXR:
            n = int(g[f"{case}.samples"][k])
            out.append((g[f"{case}.input_features"][k].ravel()[:n], 16_000))
        else:
            out.append(str(CLIPS / name))
    return out


def images_of(case):
    return [PIL.Image.open(IMAGES / f"{n}.png") for n in CASES[case][2]]


def test_config_has_no_tower(unified):
    model, _ = unified
    c = model.audio.config
    assert (c.samples_per_token, c.num_hidden_layers, c.text_hidden_size) == (640, 0, 32)
    assert (c.audio_token_id, c.boa_token_id, c.eoa_token_index) == (515, 516, 517)
    assert set(c.expected_shapes()) == {"embed_audio.embedding_projection.weight"}
    assert model.audio.features.feature_size == 640 and model.audio.marker == "<|audio|>"


@pytest.mark.parametrize("case", CASES)
def test_prompt_features_logits_and_greedy(unified, case):
    model, g = unified
    prompt, _, _ = CASES[case]
    clips, images = clips_of(g, case), images_of(case)
    ids, feats, sound = model.prompt_inputs(prompt, images, clips)
    assert ids == g[f"{case}.input_ids"].tolist()  # boa, ceil(samples / 640) x <|audio|>, eoa per clip
    assert [len(f) for f in sound] == g[f"{case}.input_features_mask"].sum(axis=1).tolist()
    delta_f = np.abs(np.concatenate(sound) - g[f"{case}.audio_features"]).max()
    logits = model.forward(np.array([ids]), images=images or None, audio=clips)[0]
    delta = np.abs(logits - g[f"{case}.logits"][:, :model.n_vocab]).max()
    print(f"gemma4-unified {case}: audio features max |d| {delta_f:.2e}, logits max |d| {delta:.2e}")
    assert delta_f <= TOL and delta <= TOL
    want = g[f"{case}.greedy_ids"].tolist()
    assert model.generate(ids, images=images, audio=clips, max_new_tokens=len(want), stop=[]) == want
    text = model.generate(prompt, images=images, audio=clips, max_new_tokens=len(want), stop=[])
    assert text == model.tokenizer.decode(want)


def test_processor_features_and_padded_batch(unified):
    """The processor's batch ([clips, longest, 640], padded frames False) gives each clip's
    real frames only; the clips' samples framed here are the processor's frames."""
    model, g = unified
    feats = model.embed_audio({"input_features": g["audio_two.input_features"],
                               "input_features_mask": g["audio_two.input_features_mask"]})
    assert [len(f) for f in feats] == [15, 13]
    np.testing.assert_allclose(np.concatenate(feats), g["audio_two.audio_features"], atol=TOL, rtol=0)
    from gemma_ref.audio_features import raw_frames, read_audio

    for k, clip in enumerate(clips_of(g, "audio_two")):
        frames, mask = raw_frames(read_audio(clip, 16_000), 640)
        n = len(frames)
        np.testing.assert_allclose(frames, g["audio_two.input_features"][k][:n], atol=1e-7, rtol=0)
        assert mask.all() and not g["audio_two.input_features_mask"][k][n:].any()


def test_chunked_prefill_splits_a_clip(unified, monkeypatch):
    """Prefill in chunks of 7 tokens (a clip's 15 tokens across three) decodes the golden."""
    from gemma_ref import api

    model, g = unified
    monkeypatch.setattr(api, "PREFILL_CHUNK", 7)
    out = model.generate(g["audio_two.input_ids"].tolist(), audio=clips_of(g, "audio_two"),
                         max_new_tokens=len(g["audio_two.greedy_ids"]), stop=[])
    assert out == g["audio_two.greedy_ids"].tolist()


def test_chat_audio_parts(unified):
    """An audio part of a chat message reaches the model as its <|audio|> block (Gemma 4's template)."""
    model, _ = unified
    messages = [{"role": "user", "content": [{"type": "audio", "audio": str(CLIPS / "short.wav")},
                                             {"type": "text", "text": "What is it?"}]}]
    prompt = model.chat_prompt(messages)
    assert prompt.count("<|audio|>") == 1
    ids, _, sound = model.prompt_inputs(prompt, audio=[str(CLIPS / "short.wav")])
    assert ids.count(515) == 3 and len(sound[0]) == 3
    want = model.generate(prompt, audio=[str(CLIPS / "short.wav")], max_new_tokens=4, stop=[])
    assert model.chat(messages, max_new_tokens=4, stop=[]) == want


def test_cli_generate_and_info(unified, capsys):
    model, g = unified
    prompt = CASES["audio_one"][0]
    assert main(["generate", "--model", str(UNIFIED), "--audio", str(CLIPS / "short.wav"), prompt,
                 "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == prompt + model.tokenizer.decode(g["audio_one.greedy_ids"].tolist()) + "\n"
    assert main(["info", "--model", str(UNIFIED), "--json"]) == 0
    audio = [s for s in json.loads(capsys.readouterr().out)["special"] if s.startswith("audio")]
    assert len(audio) == 1 and "Unified" in audio[0] and "640 samples" in audio[0]


@pytest.fixture(scope="module")
def without_audio(tmp_path_factory):
    """The checkpoint with its config's audio_config removed (its embed_audio tensor left)."""
    d = tmp_path_factory.mktemp("unified") / "no-audio"
    shutil.copytree(UNIFIED, d, ignore=shutil.ignore_patterns("*.npz"))
    raw = json.loads((d / "config.json").read_text())
    del raw["audio_config"]
    (d / "config.json").write_text(json.dumps(raw))
    return d


@pytest.mark.parametrize("argv, message", [
    (["--model", "{noaudio}", "--audio", "{clips}/short.wav", "x"], "takes no audio"),
    (["--audio", "{clips}/short.wav", "<|audio|> and <|audio|>"], "2 <|audio|> marker(s) for 1"),
    (["--audio", "{clips}/short.wav", "--audio", "{clips}/tone.wav", "<|audio|> only"],
     "1 <|audio|> marker(s) for 2"),
    (["--audio", "{clips}/missing.wav", "x"], "no such audio file"),
    (["<|audio|> without a clip"], "no audio clips were given"),
])
def test_cli_bad_audio_is_one_error_line(argv, message, without_audio, capsys):
    argv = [a.format(noaudio=without_audio, clips=CLIPS) for a in argv]
    model = [] if "--model" in argv else ["--model", str(UNIFIED)]
    assert main(["generate", *model, "--max-new-tokens", "2", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gemma-ref: error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)


def test_api_bad_audio(unified, without_audio, capsys):
    model, _ = unified
    with pytest.raises(GemmaRefError, match=r"\[clips, frames, 640\]"):
        model.embed_audio({"input_features": np.zeros((1, 4, 128), np.float32),
                           "input_features_mask": np.ones((1, 4), bool)})
    with pytest.raises(GemmaRefError, match="empty"):
        model.embed_audio([(np.zeros(0, np.float32), 16_000)])
    with pytest.raises(GemmaRefError, match="the clips give"):  # ids whose block is one token short
        ids = model.prompt_inputs("<|audio|>", audio=[str(CLIPS / "short.wav")])[0]
        model.forward(np.array([ids[:2] + ids[3:]]), audio=[str(CLIPS / "short.wav")])
    plain = Model.from_pretrained(without_audio, progress=False)
    assert plain.audio is None
    with pytest.raises(GemmaRefError, match="12B Unified"):
        plain.embed_audio(str(CLIPS / "short.wav"))
    assert main(["info", "--model", str(without_audio)]) == 0
    assert "\naudio " not in capsys.readouterr().out
