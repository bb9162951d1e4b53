#!/usr/bin/env python3
"""Tiny random Gemma 3n audio-text checkpoints with goldens from transformers.

Writes ``tests/data/audio/<name>/`` (config.json, model.safetensors, processor_config.json,
tokenizer.model, golden.npz, PROVENANCE.md) for each variant below, with the clips of
scripts/make_audio_goldens.py (run that first, or this writes them too).

Everything golden comes from transformers: Gemma3nProcessor (Gemma3nAudioFeatureExtractor,
and a GemmaTokenizer made from tiny.model with Gemma 3n's audio and image tokens added
as ids 512-521, laid out as the real vocabulary: text, then 4 "vision" ids from
<end_of_image>, then 4 "audio" ids from <end_of_audio>) makes input_ids and
input_features; Gemma3nForConditionalGeneration (float32, eager, CPU, one thread) makes
the audio tower output, the 188 audio soft tokens, the logits and the greedy
continuation. Its vision tower (MobileNet-V5) comes from timm, which is not installed
here: the model is built with an empty module in its place (no prompt has an image, and
no vision weight is saved; embed_vision is built and saved as transformers makes it).

Usage (from the repository root):

    pip install torch==2.13.0 transformers==5.25.0 sentencepiece safetensors numpy soundfile soxr
    python scripts/make_audio_goldens_gemma3n.py
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoTokenizer, Gemma3nAudioConfig, Gemma3nConfig, Gemma3nForConditionalGeneration, \
    Gemma3nProcessor, Gemma3nTextConfig, Gemma3nVisionConfig
from transformers.models.gemma3n import modeling_gemma3n
from transformers.models.gemma3n.feature_extraction_gemma3n import Gemma3nAudioFeatureExtractor
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_audio_goldens import CLIPS, OUT_ROOT, checked_greedy, load_clip, run_variants, write_clips  # noqa: E402
from make_tiny_goldens import FULL, SLIDING, TOKENIZER_MODEL, save_npz_deterministic  # noqa: E402
from make_vision_goldens import first_good_seed  # noqa: E402

# ids 512..521, in this order (the processor needs the image tokens too)
SPECIAL = ["<start_of_audio>", "<start_of_image>", "<end_of_image>", "<image_soft_token>", "<unused_v2>",
           "<unused_v3>", "<end_of_audio>", "<audio_soft_token>", "<unused_a2>", "<unused_a3>"]
TEXT = dict(vocab_size=522, vocab_size_per_layer_input=512, hidden_size=32, hidden_size_per_layer_input=8,
            intermediate_size=[64, 96, 80, 64], num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, layer_types=[SLIDING, FULL, SLIDING, FULL], sliding_window=8, num_kv_shared_layers=1,
            altup_num_inputs=2, altup_active_idx=0, altup_correct_scale=True, laurel_rank=4,
            activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0], final_logit_softcapping=30.0,
            max_position_embeddings=1024,
            rope_parameters={FULL: {"rope_type": "default", "rope_theta": 1_000_000.0},
                             SLIDING: {"rope_type": "default", "rope_theta": 10_000.0}})
INIT = dict(emb=0.1, ple_emb=0.3, proj=1.0, norm_mean=1.0, norm=0.2, final_norm_mean=1.0, router=1.0,
            altup_coef=0.15, correct_scale_mean=1.0, correct_scale=0.3, audio_proj=1.0)

VARIANTS = [
    dict(name="gemma3n-audio", seed=33000,
         # chunks of 4 seeing 4 back (left 5), the released kernels/strides, 16 mel bins
         audio=dict(hidden_size=32, conf_num_hidden_layers=2, conf_num_attention_heads=4, input_feat_size=16,
                    sscp_conv_channel_size=[8, 4], conf_attention_chunk_size=4, conf_attention_context_left=5,
                    conf_attention_context_right=0, conf_conv_kernel_size=5),
         features=dict(feature_size=16), long=True),
    dict(name="gemma3n-audio-b", seed=34000,
         # blocks larger than the left context, a right context of 2, kernel 3, clamping at 6
         audio=dict(hidden_size=48, conf_num_hidden_layers=3, conf_num_attention_heads=2, input_feat_size=24,
                    sscp_conv_channel_size=[6, 5], conf_attention_chunk_size=6, conf_attention_context_left=3,
                    conf_attention_context_right=2, conf_conv_kernel_size=3, gradient_clipping=6.0,
                    sscp_conv_group_norm_eps=1e-2),
         features=dict(feature_size=24, min_frequency=60.0, max_frequency=7000.0), long=False),
]
CASES = {
    "text": ("Once upon a time there was", []),
    "one": ("Transcribe <audio_soft_token> please.", ["tone.wav"]),
    "two": ("<audio_soft_token> and <audio_soft_token>: which is louder?", ["short.wav", "silence.wav"]),
    "stereo": ("Hear <audio_soft_token>", ["stereo44k.wav"]),
    "long": ("<audio_soft_token> In short:", ["long"]),
}


FULL_LOGITS = ("text", "one")  # the other cases keep their last 8 rows


class NoVisionTower(torch.nn.Module):
    """Stands in for the timm MobileNet-V5 (not installed); never called."""


def from_config(config, **kw):
    if isinstance(config, Gemma3nVisionConfig):
        return NoVisionTower()
    return transformers.AutoModel.from_config(config, **kw)


class AutoModelWithoutTimm:
    from_config = staticmethod(from_config)


def make_processor(spec):
    tok_dir = tempfile.mkdtemp()
    shutil.copy(TOKENIZER_MODEL, Path(tok_dir) / "tokenizer.model")
    names = dict(zip(["boa_token", "boi_token", "eoi_token", "image_token", "unused_v2_token", "unused_v3_token",
                      "eoa_token", "audio_token", "unused_a2_token", "unused_a3_token"], SPECIAL))  # in id order
    (Path(tok_dir) / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
        "extra_special_tokens": names}))
    tok = AutoTokenizer.from_pretrained(tok_dir)
    assert tok.convert_tokens_to_ids(SPECIAL) == list(range(512, 522)), tok.convert_tokens_to_ids(SPECIAL)
    return Gemma3nProcessor(feature_extractor=Gemma3nAudioFeatureExtractor(**spec["features"]),
                            image_processor=SiglipImageProcessorPil(), tokenizer=tok)


def config_of(spec):
    text = Gemma3nTextConfig(rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
                             tie_word_embeddings=True, attention_bias=False, hidden_activation="gelu_pytorch_tanh",
                             **TEXT)
    vision = Gemma3nVisionConfig(hidden_size=16, vocab_offset=514, vocab_size=4)
    audio = Gemma3nAudioConfig(vocab_offset=518, vocab_size=4, **spec["audio"])
    return Gemma3nConfig(text_config=text, vision_config=vision, audio_config=audio, boa_token_id=512,
                         boi_token_id=513, eoi_token_id=514, image_token_id=515, eoa_token_id=518,
                         audio_token_id=519, audio_soft_tokens_per_image=188)


@torch.no_grad()
def redraw(model, seed: int) -> None:
    """Every parameter re-drawn (transformers initialises norms to 1, some scales to 0):
    make_tiny_goldens_gemma3n's recipe for the text model, fan-in-scaled normals for the
    audio tower, norms around 1."""
    gen = torch.Generator().manual_seed(seed)
    D = model.config.text_config.hidden_size
    for name, p in model.named_parameters():
        def normal(std, mean=0.0):
            return torch.randn(p.shape, generator=gen, dtype=torch.float32) * std + mean
        if "norm" in name.rsplit(".", 2)[-2] or name.endswith(("norm.weight",)):
            val = normal(INIT["norm"], INIT["norm_mean"])
        elif name.endswith("correct_output_scale"):
            val = normal(INIT["correct_scale"], INIT["correct_scale_mean"])
        elif name.endswith("language_model.embed_tokens.weight"):
            val = normal(INIT["emb"])
            val[512:] *= 0.1  # the added tokens: rarely the argmax
        elif name.endswith("embed_tokens_per_layer.weight"):
            val = normal(INIT["ple_emb"])
        elif "altup.modality_router" in name:
            val = normal(INIT["router"] * math.sqrt(D))
        elif "prediction_coefs" in name or "correction_coefs" in name:
            val = normal(INIT["altup_coef"] / math.sqrt(p.shape[1]))
        elif name.endswith("per_dim_scale"):
            val = normal(0.3)
        elif p.ndim >= 2:
            val = normal(INIT["proj"] / math.sqrt(int(np.prod(p.shape[1:]))))
        else:
            val = normal(0.05)
        p.copy_(val)


@torch.no_grad()
def run_case(model, processor, prompt, clips, all_logits):
    res = {}
    audio = [load_clip(c) for c in clips]
    inputs = processor(text=[prompt], audio=audio or None, return_tensors="pt")
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k in ("input_features", "input_features_mask")}
    res["input_ids"] = ids[0].numpy().astype(np.int64)
    if audio:
        feats, fmask = inputs["input_features"], inputs["input_features_mask"]
        out = model.model.audio_tower(feats, ~fmask, return_dict=True)
        streams = model(input_ids=ids, use_cache=False, output_hidden_states=True, **extra).hidden_states[0]
        soft = streams[0, 0]  # [S, B, T, D]: stream 0 is the language model's input embeddings
        at = (ids[0] == model.config.audio_token_id).numpy()
        for k, (f, m) in enumerate(zip(feats, fmask)):
            res[f"features_{k}"], res[f"features_mask_{k}"] = f.numpy(), m.numpy()  # as batched
            res[f"tower_{k}"] = out.last_hidden_state[k][~out.audio_mel_mask[k]].numpy()
        res["soft"] = soft.numpy()[at]  # what the LM's input holds at the audio soft tokens
        res["samples_per_clip"] = np.array([len(a) for a in audio], np.int64)
    logits = model(input_ids=ids, use_cache=False, **extra).logits[0].numpy()
    res["logits"] = logits if all_logits else logits[-8:]  # a 188-token clip makes big logits: keep few
    return res, checked_greedy(model, ids, extra, res)


def make_variant(spec, date):
    out_dir = OUT_ROOT / spec["name"]
    processor = make_processor(spec)
    cases = {c: v for c, v in CASES.items() if c != "long" or spec["long"]}

    def make_model(seed):
        model = Gemma3nForConditionalGeneration(config_of(spec))
        redraw(model, seed)
        return model

    runs = {case: (lambda m, p=prompt, c=clips, a=case in FULL_LOGITS: run_case(m, processor, p, c, a))
            for case, (prompt, clips) in cases.items()}
    seed, attempt, results = first_good_seed(spec["name"], spec["seed"], make_model, Gemma3nForConditionalGeneration,
                                             runs, out_dir)
    shutil.copy(TOKENIZER_MODEL, out_dir / "tokenizer.model")
    fe = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in processor.feature_extractor.to_dict().items()
          if k not in ("mel_filters", "window")}
    (out_dir / "processor_config.json").write_text(json.dumps(
        {"processor_class": "Gemma3nProcessor", "audio_seq_length": processor.audio_seq_length,
         "feature_extractor": fe}, indent=2, sort_keys=True, default=float) + "\n")
    arrays = {f"{case}.{k}": np.ascontiguousarray(v) for case, res in results.items()
              for k, v in res.items() if not k.startswith("_")}
    save_npz_deterministic(out_dir / "golden.npz", arrays)
    lines = [
        f"# {spec['name']}", "",
        "Tiny random Gemma 3n audio-text checkpoint (Gemma3nForConditionalGeneration; its timm vision tower",
        "replaced by an empty module, see the script) with goldens from transformers.", "",
        f"- command: `python scripts/make_audio_goldens_gemma3n.py {spec['name']}` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}; float32, "
        "eager attention, CPU, one thread",
        f"- date: {date}; seed {seed} ({attempt} earlier seed(s) rejected: small greedy margins or an added token)",
        "- parameters: redraw(model, seed) with " + json.dumps(INIT),
        "- text config: " + json.dumps(TEXT),
        "- audio config: " + json.dumps(spec["audio"]) + "; vocab_offset 518, vocab_size 4; 188 soft tokens a clip",
        "- feature extractor: Gemma3nAudioFeatureExtractor(" + json.dumps(spec["features"]) + ")",
        "- per case: input_ids, features_k / features_mask_k (clip k's, as batched by the processor), tower_k "
        "(the tower's real tokens), soft (the 188 x clips rows of the language model's input at the audio soft "
        "tokens: features or the pad token's embedding), logits (`text`, `one`: all rows; the others: the last 8), greedy_ids / "
        "greedy_margins (12 cached greedy steps)", "",
        "| case | prompt | clips | tokens |", "| --- | --- | --- | --- |",
    ]
    for case, (prompt, clips) in cases.items():
        lines.append(f"| `{case}` | `{prompt!r}` | {', '.join(clips) or '-'} | {len(results[case]['input_ids'])} |")
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines) + "\n")
    return results


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    modeling_gemma3n.AutoModel = AutoModelWithoutTimm  # the vision tower: see the module docstring
    if not (CLIPS / "tone.wav").exists():
        write_clips()
    run_variants(VARIANTS, make_variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
