"""Audio in: Gemma 4's feature extractor, Conformer tower and audio prompts, against
goldens from transformers (tests/data/audio, scripts/make_audio_goldens.py)."""

from __future__ import annotations

import importlib
import math
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from gemma_ref import GemmaRefError, Model, audio, audio_features
from gemma_ref.cli import main
from gemma_ref.tokenizer import chat_audio

DATA = Path(__file__).parent / "data" / "audio"
CLIPS = DATA / "clips"
VARIANTS = ["gemma4-audio", "gemma4-audio-b"]
TOL = 1e-4


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


HAS_SOXR = _importable("soxr")  # the audio extra (CI has it not): resampling

# The cases of scripts/make_audio_goldens.py: prompt, clips ("long" = long_clip())
CASES = {
    "text": ("Once upon a time there was", []),
    "one": ("Transcribe <|audio|> please.", ["tone.wav"]),
    "two": ("<|audio|> and <|audio|>: which is louder?", ["short.wav", "silence.wav"]),
    "stereo": ("Hear <|audio|>", ["stereo44k.wav"]),
    "long": ("<|audio|> In short:", ["long"]),
}
CHAT = [{"role": "system", "content": "You transcribe."},
        {"role": "user", "content": [{"type": "audio", "audio": str(CLIPS / "tone.wav")},
                                     {"type": "text", "text": "What is said?"},
                                     {"type": "audio", "audio": str(CLIPS / "short.wav")}]}]


def long_clip() -> np.ndarray:
    """scripts/make_audio_goldens.long_clip: 31 s at 16 kHz, past the 30 s cap."""
    t = np.arange(31 * 16000) / 16000.0
    return (0.25 * np.sin(2 * np.pi * (220 + 40 * t) * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))).astype(np.float32)


def clip_of(name):
    return (long_clip(), 16000) if name == "long" else str(CLIPS / name)


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    d = DATA / request.param
    return Model.from_pretrained(d, progress=False), np.load(d / "golden.npz")


def cases_of(g, need_files=True, cases=CASES):
    """The golden's cases; the resampled clip only where soxr is installed (else its
    features come from the golden, see test_stereo_features_from_the_processor)."""
    return [c for c in cases if f"{c}.input_ids" in g
            and (HAS_SOXR or not need_files or "stereo44k.wav" not in cases[c][1])]


def processor_features(g, case):
    """The processor's features of a case's clips, as Model.embed_audio takes them."""
    n = len(g[f"{case}.samples_per_clip"])
    F = max(len(g[f"{case}.features_{k}"]) for k in range(n))
    feats = np.zeros((n, F, g[f"{case}.features_0"].shape[-1]), np.float32)
    masks = np.zeros((n, F), bool)
    for k in range(n):
        f = g[f"{case}.features_{k}"]
        feats[k, :len(f)], masks[k, :len(f)] = f, g[f"{case}.features_mask_{k}"]
    return {"input_features": feats, "input_features_mask": masks}


# --- primitives, by hand ---------------------------------------------------------------


def test_periodic_hann_and_mel_filters_by_hand():
    assert np.allclose(audio_features.periodic_hann(4), [0.0, 0.5, 1.0, 0.5])
    f = audio_features.mel_filter_bank(5, 2, 0.0, 8000.0, 16000)  # bins at 0, 2000, ..., 8000 Hz
    edges = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 8000 / 700), 4) / 2595) - 1)
    # filter 0 rises from edges[0] to edges[1], falls to edges[2]: at 2000 Hz
    x = 2000.0
    want = min((x - edges[0]) / (edges[1] - edges[0]), (edges[2] - x) / (edges[2] - edges[1]))
    assert f.shape == (5, 2) and math.isclose(f[1, 0], max(want, 0.0), rel_tol=1e-12)
    assert f[0, 0] == 0.0 and abs(f[4, 1]) < 1e-12  # the band edges get (almost) nothing


def test_rel_shift_moves_row_i_right_by_i():
    bd = np.arange(1, 7, dtype=np.float32).reshape(2, 3)  # Q = 2 queries, R = 3 distances
    out = audio.rel_shift(bd, 4)  # X = 4 keys
    assert out.tolist() == [[1, 2, 3, 0], [0, 4, 5, 6]]


def test_conv2d_stride2_against_a_loop():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 6)), rng.standard_normal((3, 2, 3, 3))
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    want = np.array([[[np.sum(w[o] * xp[:, 2 * f:2 * f + 3, 2 * m:2 * m + 3]) for m in range(3)]
                      for f in range(3)] for o in range(3)])
    assert np.allclose(audio.conv2d_stride2(x, w), want)


def test_key_visible_is_causal_and_local():
    c = audio.AudioConfig(attention_chunk_size=2, attention_context_left=3, attention_context_right=0)
    seen = audio.key_visible(np.array([True, True, True, False]), c)  # [2 blocks, 2 queries, X = 4]
    # block 1 (queries 2, 3) reads keys 0..3; query 2 sees 1 and 2; query 3 sees 2 (3 is padding)
    assert seen[1].tolist() == [[False, True, True, False], [False, False, True, False]]
    assert seen[0].tolist() == [[False, False, True, False], [False, False, True, True]]


def test_pcm_wav_widths_read_alike(tmp_path):
    x = (np.sin(np.arange(400) / 9) * 0.5).astype(np.float64)
    got = {}
    for width in (2, 3, 4):
        q = np.round(x * (2 ** (8 * width - 1) - 1)).astype(np.int64)
        raw = b"".join(int(v).to_bytes(width, "little", signed=True) for v in q)
        with wave.open(str(tmp_path / f"{width}.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(width), w.setframerate(16000), w.writeframes(raw)
        got[width] = audio_features.read_audio(str(tmp_path / f"{width}.wav"), 16000)
    assert np.abs(got[2] - x).max() < 1e-4 and np.abs(got[3] - x).max() < 1e-6
    assert np.abs(got[4] - x).max() < 1e-6


def test_num_tokens_counts_the_subsampled_valid_frames():
    assert audio_features.num_tokens(np.array([True] * 10 + [False])) == 3  # 10 -> 5 -> 3
    p = audio_features.AudioFeatures(feature_size=16)
    _, mask = audio_features.log_mel(np.zeros(480_000 + 5000, np.float32), p)  # cut to 30 s
    assert audio_features.num_tokens(mask) == 750


# --- against transformers ------------------------------------------------------------


def test_features_are_the_processors(variant):
    model, g = variant
    for case in cases_of(g):
        for k, name in enumerate(CASES[case][1]):
            feats, mask = model.audio.clip_features(clip_of(name))
            want = g[f"{case}.features_{k}"]
            n = len(want)
            assert np.array_equal(mask[:n], g[f"{case}.features_mask_{k}"]) and not mask[n:].any()
            assert np.abs(feats[:n] - want).max() <= 1e-5, (case, k)


def test_tower_and_soft_tokens(variant):
    model, g = variant
    for case in cases_of(g, need_files=False):
        if not CASES[case][1]:
            continue
        trace = {}
        soft = model.embed_audio(processor_features(g, case), trace=trace)
        for k in range(len(soft)):
            assert np.abs(soft[k] - g[f"{case}.soft_{k}"]).max() <= TOL, (case, k)
        for k in range(len(soft)):  # the trace holds every clip's tower, padded to the longest
            tower = trace["audio_tower"][k][:len(g[f"{case}.tower_{k}"])]
            assert np.abs(tower - g[f"{case}.tower_{k}"]).max() <= TOL


def test_prompt_ids_logits_and_greedy(variant):
    model, g = variant
    for case in cases_of(g):
        prompt, names = CASES[case]
        clips = [clip_of(n) for n in names]
        ids, _, soft = model.prompt_inputs(prompt, audio=clips)
        assert ids == g[f"{case}.input_ids"].tolist(), case
        want = g[f"{case}.logits"][:, :model.n_vocab]
        logits = model.forward(np.array(ids), audio=clips)
        assert np.abs(logits[-len(want):] - want).max() <= TOL, case
        assert model.generate(prompt, audio=clips, max_new_tokens=12, stop=[]) == \
            model.tokenizer.decode(g[f"{case}.greedy_ids"].tolist())
        assert model.generate(ids, audio=clips, max_new_tokens=12, stop=[]) == g[f"{case}.greedy_ids"].tolist()


def test_stereo_features_from_the_processor(variant):
    """Without soxr the 44.1 kHz clip cannot be resampled here; the processor's features
    of it still go through the tower and the language model."""
    model, g = variant
    ids = g["stereo.input_ids"]
    logits = model.forward(ids, audio=processor_features(g, "stereo"))
    assert np.abs(logits - g["stereo.logits"][:, :model.n_vocab]).max() <= TOL


def test_chat_through_the_template(variant):
    model, g = variant
    prompt = model.chat_prompt(CHAT)
    assert prompt == (DATA / Path(model.source).name / "chat_prompt.txt").read_text()
    ids, _, _ = model.prompt_inputs(prompt, audio=chat_audio(CHAT))
    assert ids == g["chat.input_ids"].tolist()
    out = model.generate(ids, audio=chat_audio(CHAT), max_new_tokens=12, stop=[])
    assert out == g["chat.greedy_ids"].tolist()


def test_clips_as_arrays_and_files_agree(variant):
    model, _ = variant
    with wave.open(str(CLIPS / "tone.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
    a = model.embed_audio([(pcm, 16000)])[0]  # integer PCM, scaled as soundfile does
    b = model.embed_audio(str(CLIPS / "tone.wav"))[0]
    c = model.embed_audio([(pcm.astype(np.float64) / 32768, 16000)])[0]
    assert np.array_equal(a, b) and np.array_equal(a, c)


def test_cli_generate_with_audio(capsys):
    d = DATA / "gemma4-audio"
    g = np.load(d / "golden.npz")
    assert main(["generate", "--model", str(d), "--audio", str(CLIPS / "tone.wav"), "Transcribe <|audio|> please.",
                 "--max-new-tokens", "12"]) == 0
    Model.from_pretrained(d, progress=False)
    want = Model.from_pretrained(d, progress=False).tokenizer.decode(g["one.greedy_ids"].tolist())
    out = capsys.readouterr().out
    assert out == "Transcribe <|audio|> please." + want + "\n"


# --- bad input --------------------------------------------------------------------------


def _bad_files(tmp):
    (tmp / "notaudio.wav").write_bytes(b"this is not a RIFF file at all")
    with wave.open(str(tmp / "empty.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16000), w.writeframes(b"")
    with wave.open(str(tmp / "8k.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\x01\x00" * 800)


@pytest.mark.parametrize("argv, message", [
    (["--audio", "{tmp}/missing.wav", "x"], "no such audio file"),
    (["--audio", "{tmp}/notaudio.wav", "x"], "notaudio.wav"),
    (["--audio", "{tmp}/empty.wav", "x"], "empty"),
    (["--audio", "{clips}/tone.wav", "<|audio|> <|audio|>"], "2 <|audio|> marker(s) for 1"),
    (["--audio", "{clips}/tone.wav", "--audio", "{clips}/short.wav", "<|audio|> only"], "1 <|audio|> marker(s) for 2"),
    (["--model", "{vision}", "--audio", "{clips}/tone.wav", "x"], "takes no audio"),
    (["--model", "{gemma3n}", "--audio", "{clips}/tone.wav", "x"], "no audio_config"),
])
def test_cli_bad_audio_is_one_error_line(argv, message, tmp_path, capsys):
    _bad_files(tmp_path)
    fill = {"tmp": tmp_path, "clips": CLIPS, "vision": DATA.parent / "vision" / "gemma4-vision",
            "gemma3n": DATA.parent / "tiny" / "gemma3n-2streams"}
    argv = [a.format(**fill) for a in argv]
    model = [] if "--model" in argv else ["--model", str(DATA / "gemma4-audio")]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["generate", *model, "--max-new-tokens", "2", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gemma-ref: error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind


def test_api_bad_audio(tmp_path):
    _bad_files(tmp_path)
    model = Model.from_pretrained(DATA / "gemma4-audio", progress=False)
    nan = np.zeros(1600, np.float32)
    nan[5] = np.nan
    for clip, message in [((nan, 16000), "NaN"), ((np.zeros(0, np.float32), 16000), "empty"),
                          ((np.zeros(100, np.float32), 0), "sample rate"),
                          ((np.zeros((2, 2, 2), np.float32), 16000), "samples must be"),
                          (3.5, "expected a file path")]:
        with pytest.raises(GemmaRefError, match=message):
            model.embed_audio([clip])
    if not HAS_SOXR:  # another rate needs soxr, as transformers resamples
        with pytest.raises(GemmaRefError, match="install the audio extra"):
            model.embed_audio(str(tmp_path / "8k.wav"))
    else:  # resampled to 16 kHz: 800 samples -> 1600
        assert len(audio_features.read_audio(str(tmp_path / "8k.wav"), 16000)) == 1600
    with pytest.raises(GemmaRefError, match="no audio clips were given"):
        model.generate("hear <|audio|>", max_new_tokens=1)
    with pytest.raises(GemmaRefError, match="one prompt at a time"):
        model.generate(["a", "b"], audio=[str(CLIPS / "tone.wav")])
    with pytest.raises(GemmaRefError, match="input_features"):
        model.embed_audio({"input_features": np.zeros((1, 4, 3), np.float32),
                           "input_features_mask": np.ones((1, 4), bool)})


def test_checkpoint_missing_an_audio_tensor_is_named(tmp_path):
    from gemma_ref.loader import read_safetensors, write_safetensors

    d = tmp_path / "ckpt"
    shutil.copytree(DATA / "gemma4-audio", d)
    tensors = {k: np.asarray(v) for k, v in read_safetensors(d / "model.safetensors").items()}
    del tensors["model.audio_tower.layers.1.self_attn.per_dim_scale"]
    write_safetensors(d / "model.safetensors", tensors)
    with pytest.raises(GemmaRefError, match="audio_tower.layers.1.self_attn.per_dim_scale"):
        Model.from_pretrained(d, progress=False)


# --- dump / compare ------------------------------------------------------------------------


def test_dump_keeps_the_features_and_reruns_them(tmp_path):
    """`gemma-ref dump` on audio prompts stores the processor-layout features, so that
    scripts/dump_transformers.py --ids-from (and compare --model) rerun exactly those."""
    from gemma_ref import reference

    d = DATA / "gemma4-audio"
    g = np.load(d / "golden.npz")
    for name in ("tone.wav", "short.wav", "silence.wav"):
        shutil.copy(CLIPS / name, tmp_path / name)
    (tmp_path / "p.jsonl").write_text('{"prompt": "Transcribe <|audio|> please.", "audio": ["tone.wav"]}\n'
                                      '{"prompt": "<|audio|> and <|audio|>: which is louder?", '
                                      '"audio": ["short.wav", "silence.wav"]}\n')
    out = tmp_path / "gr.npz"
    assert main(["dump", "--model", str(d), "--prompts", str(tmp_path / "p.jsonl"), "-o", str(out), "-n", "3"]) == 0
    golden = reference.load(out)
    for p, case in zip(golden.prompts, ("one", "two")):
        assert p.input_ids.tolist() == g[f"{case}.input_ids"].tolist()
        assert np.abs(p.logits - g[f"{case}.logits"][:, :512]).max() <= TOL
        assert p.input_features.shape[0] == len(CASES[case][1]) and p.input_features_mask.dtype == bool
        n = len(g[f"{case}.features_0"])
        assert np.array_equal(p.input_features[0, :n], g[f"{case}.features_0"])
    model = Model.from_pretrained(d, progress=False)
    again = reference.candidate_from_model(model, golden)
    for a, b in zip(golden.prompts, again.prompts):
        assert np.array_equal(a.logits, b.logits) and np.array_equal(a.greedy_ids, b.greedy_ids)


def test_clamp_bounds_may_be_infinite_not_nan(tmp_path):
    """A tower never given bounds stores +-Inf (transformers' init: no clamp); NaN is corrupt."""
    from gemma_ref.loader import read_safetensors, write_safetensors

    d = tmp_path / "ckpt"
    shutil.copytree(DATA / "gemma4-audio", d)
    tensors = {k: np.asarray(v) for k, v in read_safetensors(d / "model.safetensors").items()}
    name = "model.audio_tower.layers.0.self_attn.q_proj.input_max"
    tensors[name] = np.array(np.inf, np.float32)
    write_safetensors(d / "model.safetensors", tensors)
    model = Model.from_pretrained(d, progress=False)
    assert np.isinf(model.weights[name[len("model."):]])
    tensors[name] = np.array(np.nan, np.float32)
    write_safetensors(d / "model.safetensors", tensors)
    with pytest.raises(GemmaRefError, match="input_max holds NaN"):
        Model.from_pretrained(d, progress=False)
