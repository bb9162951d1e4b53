#!/usr/bin/env python3
"""Tiny random Gemma 4 audio-text checkpoints with goldens from transformers.

For each variant below this writes ``tests/data/audio/<name>/``:

  config.json, generation_config.json, model.safetensors   (save_pretrained)
  processor_config.json                                     (the feature extractor's settings)
  tokenizer.model                                           (copy of tests/data/tokenizer/tiny.model)
  golden.npz                                                (per case, see PROVENANCE.md)
  PROVENANCE.md

and the clips in ``tests/data/audio/clips/`` (16 kHz mono PCM WAVs, a 44.1 kHz stereo
one; the >30 s clip is made by `long_clip()` below, the same formula the tests use).

Everything golden comes from transformers: Gemma4Processor (its feature extractor,
Gemma4AudioFeatureExtractor, and a GemmaTokenizer made from tiny.model with <|audio|>,
<|audio>, <audio|> added as ids 512, 513, 514; built without its video processor, which
needs torchvision) makes input_ids and input_features from text with audio markers, and
loads the files as it does (transformers.audio_utils.load_audio: soundfile + soxr);
Gemma4ForConditionalGeneration (float32, eager attention, CPU, one thread) makes the
audio tower output, the audio soft tokens, the logits and the greedy continuation.

Usage (from the repository root):

    pip install torch==2.13.0 transformers==5.25.0 sentencepiece safetensors numpy soundfile soxr
    python scripts/make_audio_goldens.py
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
import sentencepiece as spm
import soundfile
import soxr
import torch
import transformers
from transformers import AutoTokenizer, Gemma4AudioConfig, Gemma4Config, Gemma4ForConditionalGeneration, \
    Gemma4Processor, Gemma4TextConfig
from transformers.models.gemma4.feature_extraction_gemma4 import Gemma4AudioFeatureExtractor
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_goldens import (  # noqa: E402  (helpers shared with the text goldens)
    FULL,
    SLIDING,
    TOKENIZER_MODEL,
    provenance_date,
    redraw_parameters,
    save_npz_deterministic,
)
from make_vision_goldens import first_good_seed, greedy_checked  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = ROOT / "tests" / "data" / "audio"
CLIPS = OUT_ROOT / "clips"
SPECIAL = {"audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"}
TEMPLATE = ROOT / "gemma_ref" / "templates" / "gemma4-it.jinja"

TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=2,
            num_key_value_heads=1, head_dim=16, global_head_dim=32, sliding_window=8,
            layer_types=[SLIDING, FULL, SLIDING, FULL], hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=520, num_kv_shared_layers=1, final_logit_softcapping=30.0,
            use_bidirectional_attention="vision", max_position_embeddings=1024)
INIT = dict(emb=0.1, proj=2.0, norm=0.3, norm_mean=1.0, final_norm_mean=2.0, scalar=0.3)

VARIANTS = [
    dict(
        name="gemma4-audio",
        seed=23000,
        # chunks of 4 tokens seeing 4 back (left 5), clipped linears with stored bounds,
        # 16 mel bins (= the first conv's channels, which the flatten assumes)
        audio=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, subsampling_conv_channels=[16, 8],
                   conv_kernel_size=5, attention_chunk_size=4, attention_context_left=5,
                   attention_context_right=0, output_proj_dims=24, use_clipped_linears=True),
        features=dict(feature_size=16),
        clip_bounds=3.0,
        long=True,
    ),
    dict(
        name="gemma4-audio-b",
        seed=24000,
        # blocks larger than the left context (6 vs 2 back: the relative shift wraps), kernel 3,
        # activations clamped at 8, no clipped linears; mel with pre-emphasis, FFT overdrive,
        # 125-7600 Hz and per-bin normalisation
        audio=dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=2, subsampling_conv_channels=[32, 4],
                   conv_kernel_size=3, attention_chunk_size=6, attention_context_left=3,
                   attention_context_right=0, output_proj_dims=40, use_clipped_linears=False,
                   gradient_clipping=8.0),
        features=dict(feature_size=32, preemphasis=0.97, fft_overdrive=True, min_frequency=125.0,
                      max_frequency=7600.0, per_bin_mean=[0.1 * np.sin(i) for i in range(32)],
                      per_bin_stddev=[1.0 + 0.2 * np.cos(i) for i in range(32)], mel_floor=1e-5),
        clip_bounds=None,
        long=False,
    ),
]

CASES = {  # prompt, clips ("long" = long_clip(), else a file in clips/)
    "text": ("Once upon a time there was", []),
    "one": ("Transcribe <|audio|> please.", ["tone.wav"]),
    "two": ("<|audio|> and <|audio|>: which is louder?", ["short.wav", "silence.wav"]),
    "stereo": ("Hear <|audio|>", ["stereo44k.wav"]),
    "long": ("<|audio|> In short:", ["long"]),
}
CHAT = [{"role": "system", "content": "You transcribe."},
        {"role": "user", "content": [{"type": "audio", "audio": "tone.wav"},
                                     {"type": "text", "text": "What is said?"},
                                     {"type": "audio", "audio": "short.wav"}]}]


def long_clip() -> np.ndarray:
    """31 s at 16 kHz (past the 30 s cap): a gliding tone with a slow tremolo, float32."""
    t = np.arange(31 * 16000) / 16000.0
    return (0.25 * np.sin(2 * np.pi * (220 + 40 * t) * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))).astype(np.float32)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """16-bit PCM WAV; samples [A] or [A, channels] in [-1, 1]."""
    x = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if x.ndim == 1 else x.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())


def write_clips() -> None:
    CLIPS.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2300)
    t = np.arange(9600) / 16000.0  # 0.6 s: 15 tokens, several attention chunks
    tone = 0.3 * np.sin(2 * np.pi * 330 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t * (1 + t)) \
        + 0.05 * rng.standard_normal(t.size)
    write_wav(CLIPS / "tone.wav", tone, 16000)
    t = np.arange(1700) / 16000.0  # ~0.1 s: fewer tokens than one chunk
    write_wav(CLIPS / "short.wav", 0.4 * np.sin(2 * np.pi * 600 * t) * np.hanning(t.size), 16000)
    write_wav(CLIPS / "silence.wav", np.zeros(6400), 16000)  # 0.4 s of zeros
    t = np.arange(22050) / 44100.0  # 0.5 s, 44.1 kHz, stereo: averaged, resampled to 16 kHz
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.2 * np.sin(2 * np.pi * 2500 * t)
                       + 0.05 * rng.standard_normal(t.size)], axis=1)
    write_wav(CLIPS / "stereo44k.wav", stereo, 44100)


class Processor(Gemma4Processor):
    """Gemma4Processor without a video processor (transformers' needs torchvision)."""

    def check_argument_for_proper_class(self, name, arg):
        return None if name == "video_processor" else super().check_argument_for_proper_class(name, arg)


def make_processor(spec):
    tok_dir = tempfile.mkdtemp()
    shutil.copy(TOKENIZER_MODEL, Path(tok_dir) / "tokenizer.model")
    (Path(tok_dir) / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "extra_special_tokens": {**SPECIAL, "image_token": "<|image|>", "boi_token": "<|image>",
                                 "eoi_token": "<image|>"}}))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert (tok.audio_token_id, tok.boa_token_id, tok.eoa_token_id) == (512, 513, 514)
    return Processor(feature_extractor=Gemma4AudioFeatureExtractor(**spec["features"]),
                     image_processor=Gemma4ImageProcessorPil(), tokenizer=tok, video_processor=None,
                     chat_template=TEMPLATE.read_text())


def config_of(spec):
    text = Gemma4TextConfig(vocab_size=520, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                            tie_word_embeddings=True, attention_bias=False, hidden_activation="gelu_pytorch_tanh",
                            **TEXT)
    return Gemma4Config(text_config=text, vision_config=None, audio_config=Gemma4AudioConfig(**spec["audio"]),
                        audio_token_id=512, boa_token_id=513, eoa_token_index=514,
                        image_token_id=515, boi_token_id=516, eoi_token_id=517, video_token_id=518,
                        tie_word_embeddings=True)


def load_clip(name):
    from transformers.audio_utils import load_audio

    return long_clip() if name == "long" else load_audio(str(CLIPS / name), sampling_rate=16000)


@torch.no_grad()
def run_case(model, processor, prompt, clips):
    res = {}
    audio = [load_clip(c) for c in clips]
    inputs = processor(text=[prompt], audio=audio or None, return_tensors="pt")
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    res["input_ids"] = ids[0].numpy().astype(np.int64)
    if audio:
        feats, fmask = inputs["input_features"], inputs["input_features_mask"]
        out = model.model.audio_tower(feats, fmask, return_dict=True)
        soft = model.model.get_audio_features(feats, fmask, return_dict=True)
        for k, (f, m) in enumerate(zip(feats, fmask)):
            n = int(m.sum())  # the clip's own frames (a batch pads to the longest)
            res[f"features_{k}"], res[f"features_mask_{k}"] = f[:n].numpy(), m[:n].numpy()
            res[f"tower_{k}"] = out.last_hidden_state[k][out.attention_mask[k]].numpy()
            res[f"soft_{k}"] = soft.pooler_output[k][soft.attention_mask[k]].numpy()
        res["samples_per_clip"] = np.array([len(a) for a in audio], np.int64)
    logits = model(input_ids=ids, use_cache=False, **extra).logits[0].numpy()
    res["logits"] = logits if len(logits) < 100 else logits[-8:]  # the long case keeps its last rows
    return res, checked_greedy(model, ids, extra, res)


def checked_greedy(model, ids, extra, res) -> list[str]:
    """make_vision_goldens.greedy_checked, and no added token (<|audio|> ...) in the continuation
    (its no-cache check then fails in transformers: more audio tokens than features)."""
    try:
        problems = greedy_checked(model, ids, extra, lambda seq: extra, res)
    except ValueError as e:
        return [f"no-cache check failed ({str(e)[:60]})"]
    if int(res["greedy_ids"].max()) >= 512:
        problems.append("greedy picked an added token")
    return problems


@torch.no_grad()
def run_chat(model, processor):
    msgs = [{**m, "content": [{**p, "audio": str(CLIPS / p["audio"])} if p.get("type") == "audio" else p
                              for p in m["content"]] if isinstance(m["content"], list) else m["content"]}
            for m in CHAT]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = processor.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt")
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    res = {"input_ids": ids[0].numpy().astype(np.int64),
           "logits": model(input_ids=ids, use_cache=False, **extra).logits[0].numpy()}
    return text, res, checked_greedy(model, ids, extra, res)


def make_variant(spec, date):
    out_dir = OUT_ROOT / spec["name"]
    processor = make_processor(spec)
    cases = {c: v for c, v in CASES.items() if c != "long" or spec["long"]}

    def make_model(seed):
        model = Gemma4ForConditionalGeneration(config_of(spec))
        redraw_parameters(model, seed, INIT)
        if spec["clip_bounds"]:  # stored clamps that bite: +-bound, jittered per projection
            gen = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for name, b in model.named_buffers():
                    if name.endswith(("input_min", "output_min", "input_max", "output_max")):
                        sign = -1.0 if name.endswith("min") else 1.0
                        b.fill_(sign * spec["clip_bounds"] * float(1 + 0.3 * torch.rand((), generator=gen)))
        return model

    chat_text = {}

    def chat_run(m):
        chat_text["text"], res, problems = run_chat(m, processor)
        return res, problems

    runs = {case: (lambda m, p=prompt, c=clips: run_case(m, processor, p, c)) for case, (prompt, clips) in cases.items()}
    runs["chat"] = chat_run
    seed, attempt, results = first_good_seed(spec["name"], spec["seed"], make_model,
                                             Gemma4ForConditionalGeneration, runs, out_dir)
    shutil.copy(TOKENIZER_MODEL, out_dir / "tokenizer.model")
    fe = processor.feature_extractor.to_dict()
    fe = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in fe.items()
          if k not in ("mel_filters", "window")}
    (out_dir / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Gemma4Processor", "audio_seq_length": processor.audio_seq_length,
         "audio_ms_per_token": processor.audio_ms_per_token, "feature_extractor": fe}, indent=2,
        sort_keys=True, default=float) + "\n")
    arrays = {f"{case}.{k}": np.ascontiguousarray(v) for case, res in results.items()
              for k, v in res.items() if not k.startswith("_")}
    save_npz_deterministic(out_dir / "golden.npz", arrays)
    (out_dir / "chat_prompt.txt").write_text(chat_text["text"])
    lines = [
        f"# {spec['name']}", "",
        "Tiny random Gemma 4 audio-text checkpoint (Gemma4ForConditionalGeneration, audio tower, no vision)",
        "with goldens from transformers.", "",
        f"- command: `python scripts/make_audio_goldens.py {spec['name']}` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"soundfile {soundfile.__version__}, soxr {soxr.__version__}; float32, eager attention, CPU, one thread",
        f"- date: {date}; seed {seed} ({attempt} earlier seed(s) rejected: small greedy margins or an "
        "added token picked)",
        "- parameters: make_tiny_goldens.redraw_parameters(model, seed, " + json.dumps(INIT) + ")"
        + (f"; clip bounds +-{spec['clip_bounds']} x U(1, 1.3)" if spec["clip_bounds"] else ""),
        "- text config: " + json.dumps(TEXT),
        "- audio config: " + json.dumps(spec["audio"]),
        "- feature extractor: Gemma4AudioFeatureExtractor(" + json.dumps(spec["features"], default=float) + ")",
        "- inputs: Gemma4Processor(text=[prompt], audio=[clips]) (clips read by transformers' load_audio at "
        "16 kHz; `long` = long_clip(), 31 s); the chat: Gemma4Processor.apply_chat_template(CHAT) with the "
        "committed gemma4-it.jinja (its rendered text in chat_prompt.txt)",
        "- per case: input_ids, features_k / features_mask_k (clip k's frames, unpadded), tower_k (audio tower "
        "output at real tokens), soft_k (embed_audio output at real tokens), samples_per_clip, logits (one "
        "no-cache forward; the `long` case keeps the last 8 rows), greedy_ids / greedy_margins (12 cached "
        "greedy steps)", "",
        "| case | prompt | clips | tokens |", "| --- | --- | --- | --- |",
    ]
    for case, (prompt, clips) in cases.items():
        lines.append(f"| `{case}` | `{prompt!r}` | {', '.join(clips) or '-'} | {len(results[case]['input_ids'])} |")
    lines.append(f"| `chat` | CHAT | tone.wav, short.wav | {len(results['chat']['input_ids'])} |")
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines) + "\n")
    return results


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    assert spm.SentencePieceProcessor(model_file=str(TOKENIZER_MODEL)).get_piece_size() == 512
    write_clips()
    run_variants(VARIANTS, make_variant)
    return 0


def run_variants(variants, make_variant) -> None:
    """make_variant(spec, date) for each variant (those named on the command line, if any)."""
    date = provenance_date()
    only = set(sys.argv[1:])
    for spec in variants:
        if only and spec["name"] not in only:
            continue
        print(f"== {spec['name']}", flush=True)
        for case, res in make_variant(spec, date).items():
            print(f"  {case}: {({k: tuple(np.shape(v)) for k, v in res.items() if not k.startswith('_')})}")


if __name__ == "__main__":
    sys.exit(main())
