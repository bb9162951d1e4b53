#!/usr/bin/env python3
"""Tiny random T5Gemma and T5Gemma 2 checkpoints, and golden outputs, from transformers.

For each checkpoint below this writes ``tests/data/encdec/<name>/``: config.json,
generation_config.json, model.safetensors (save_pretrained), tokenizer.model (a copy of
tests/data/tokenizer/tiny.model), golden.npz and PROVENANCE.md. The goldens come from
transformers in float32 with attn_implementation="eager", CPU, one thread; this script
does not import gemma_ref.

golden.npz:
  input_ids [2, TE], attention_mask [2, TE]   encoder inputs (row 1 right-padded)
  decoder_input_ids [2, TD]                   decoder inputs (start token first)
  logits [2, TD, V]                           model(input_ids, attention_mask, decoder_input_ids)
  logits_no_mask [TD, V]                      row 1 (right-padded) without attention_mask: the
                                              model's own default masks
  encoder_hidden_states [Le+1, TE, D]         row 0, output_hidden_states: embeddings .. final norm
  decoder_hidden_states [Ld+1, TD, D]         row 0, the same for the decoder
  prompt_ids [P], greedy_ids [N]              model.generate(prompt, do_sample=False): encoder once,
                                              decoder cached; the new ids (the start token dropped)
  greedy_margins [N]                          top1 - top2 raw logit of each greedy step
  T5Gemma 2, one image (random pixel values [1, 3, S, S] in [-1, 1]: pixel_values) put as
  <boi> + M image tokens + <eoi> after <bos> of input_ids row 0 (image_input_ids) and of the
  prompt (image_prompt_ids): image_logits [TD, V] (decoder_input_ids row 0),
  image_encoder_hidden_states, image_greedy_ids [N], image_greedy_margins [N]; and
  file_pixel_values [1, 3, S, S]: tests/data/vision/images/rgb_wide.png through
  Gemma3ImageProcessorPil(**preprocessor_config.json) (T5Gemma 2's image processor)

Beside it, hf_dump.npz: scripts/dump_transformers.py --trace on one prompt (ids), a golden
in gemma-ref's dump format with both stacks' intermediates.

Usage (from the repository root):  python scripts/make_t5gemma_goldens.py
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
from transformers import (SiglipVisionConfig, T5Gemma2Config, T5Gemma2DecoderConfig, T5Gemma2EncoderConfig,
                          T5Gemma2ForConditionalGeneration, T5Gemma2TextConfig, T5GemmaConfig,
                          T5GemmaForConditionalGeneration, T5GemmaModuleConfig)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import dump_transformers  # noqa: E402
from make_tiny_goldens import (TOKENIZER_MODEL, load_fp32_eager, margins_of, provenance_date,  # noqa: E402
                               save_npz_deterministic)
from make_vision_goldens import preprocessor_json  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = ROOT / "tests" / "data" / "encdec"  # not tiny/: test_goldens_tiny reads every checkpoint there as decoder-only
VOCAB = 512  # the tiny tokenizer's
TE, TD, P, N = 12, 8, 7, 16  # encoder length (> the windows), decoder length, prompt, new tokens
PAD_FROM = 9  # input_ids row 1: padding from here on
MIN_MARGIN, MIN_DISTINCT, MAX_ATTEMPTS = 2e-2, 6, 100
SLIDING, FULL = "sliding_attention", "full_attention"
COMMON = dict(vocab_size=VOCAB, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
              hidden_activation="gelu_pytorch_tanh", max_position_embeddings=512)

SPECS = [
    # T5Gemma (from Gemma 2): softcaps, sliding:full 1:1, encoder wider than the decoder
    # (as 9B-2B), so the cross-attention K/V read the encoder's width.
    dict(name="t5gemma-tiny", seed=11000,
         encoder=dict(hidden_size=48, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, sliding_window=3,
                      layer_types=[SLIDING, FULL, SLIDING, FULL], attn_logit_softcapping=5.0,
                      final_logit_softcapping=3.0),
         decoder=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=20, sliding_window=3,
                      layer_types=[SLIDING, FULL], attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
         init=dict(emb=0.1, proj=2.0, norm=0.5, post_norm_mean=1.0, final_norm_mean=1.0), min_margin=0.015),
    # T5Gemma 2 (from Gemma 3): QK-norm, merged self+cross attention, tied embeddings, the
    # encoder's sliding layers a two-sided window; a SigLIP tower in the encoder.
    dict(name="t5gemma2-tiny", seed=12000,
         text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, query_pre_attn_scalar=20, sliding_window=4,
                   rope_parameters={FULL: {"rope_type": "default", "rope_theta": 1_000_000.0},
                                    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0}}),
         encoder_layers=[SLIDING, SLIDING, FULL], decoder_layers=[SLIDING, FULL],
         vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     image_size=28, patch_size=14, vision_use_head=False),
         init=dict(emb=0.1, proj=2.0, norm=0.5, post_norm_mean=1.0, final_norm_mean=2.0)),
]

SEQ0_TEXT = "The quick brown fox jumps over the lazy dog."
PROMPT_TEXT = "Translate to French: the cat"


def build(spec):
    if spec["name"].startswith("t5gemma2"):
        text = dict(COMMON, **spec["text"])
        v = VOCAB
        enc = T5Gemma2EncoderConfig(
            text_config=T5Gemma2TextConfig(**text, num_hidden_layers=len(spec["encoder_layers"]),
                                           layer_types=spec["encoder_layers"]),
            vision_config=SiglipVisionConfig(**spec["vision"]), mm_tokens_per_image=4,
            boi_token_index=v + 1, eoi_token_index=v + 2, image_token_index=v)
        dec = T5Gemma2DecoderConfig(**text, num_hidden_layers=len(spec["decoder_layers"]),
                                    layer_types=spec["decoder_layers"])
        for c in (enc.text_config, dec):
            c.vocab_size = VOCAB + 8  # image, begin/end-of-image ids past the tokenizer's
        cfg = T5Gemma2Config(encoder=enc, decoder=dec, image_token_index=v, tie_word_embeddings=True)
        return cfg, T5Gemma2ForConditionalGeneration
    cfg = T5GemmaConfig(encoder=T5GemmaModuleConfig(**COMMON, **spec["encoder"]),
                        decoder=T5GemmaModuleConfig(**COMMON, **spec["decoder"]), vocab_size=VOCAB)
    return cfg, T5GemmaForConditionalGeneration


@torch.no_grad()
def redraw(model, seed: int, init: dict) -> None:
    """Every parameter re-drawn (transformers starts RMSNorm weights at 0, projections tiny)."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():  # tied parameters are listed once
        mod_name, _, pname = name.rpartition(".")
        mod = modules[mod_name]

        def normal(std, mean=0.0):
            return torch.randn(p.shape, generator=gen) * std + mean

        if "RMSNorm" in type(mod).__name__:
            mean = 0.0
            if mod_name.endswith((".encoder.norm", ".decoder.norm", "text_model.norm")):
                mean = init["final_norm_mean"]
            elif mod_name.rsplit(".", 1)[-1].startswith("post_"):
                mean = init["post_norm_mean"]
            val = normal(init["norm"], mean)
        elif isinstance(mod, torch.nn.LayerNorm):  # SigLIP
            val = normal(0.1, 1.0) if pname == "weight" else normal(0.05)
        elif isinstance(mod, torch.nn.Embedding):  # token rows, the eoi row, SigLIP positions
            val = normal(init["emb"]) if "embed_tokens" in mod_name else normal(0.1)
        elif pname == "mm_input_projection_weight":  # [vision D, text D], used as x @ W
            val = normal(init["proj"] / math.sqrt(p.shape[0]))
        elif p.ndim >= 2:
            val = normal(init["proj"] / math.sqrt(int(np.prod(p.shape[1:]))))
        else:
            val = normal(0.05)
        p.copy_(val)


def inputs(seed, tok):
    """Encoder ids [2, TE] (row 1 right-padded), their mask, decoder ids [2, TD], prompt [1, P]."""
    rng = np.random.default_rng(seed)
    seq0 = ([2] + tok.encode(SEQ0_TEXT))[:TE]
    seq1 = [2] + rng.integers(7, VOCAB, size=PAD_FROM - 1).tolist() + [0] * (TE - PAD_FROM)
    mask = [[1] * TE, [1] * PAD_FROM + [0] * (TE - PAD_FROM)]
    dec = [[2] + rng.integers(7, VOCAB, size=TD - 1).tolist() for _ in range(2)]
    prompt = ([2] + tok.encode(PROMPT_TEXT))[:P]
    assert len(seq0) == TE and len(prompt) == P, (len(seq0), len(prompt))
    t = lambda x: torch.tensor(x, dtype=torch.long)
    return t([seq0, seq1]), t(mask), t(dec), t([prompt])


def image(seed, size):
    """One [1, 3, S, S] image of pixel values in [-1, 1] (as the processor's output)."""
    return torch.from_numpy(np.random.default_rng(seed + 1).uniform(-1, 1, (1, 3, size, size)).astype(np.float32))


@torch.no_grad()
def evaluate(model, ids, mask, dec, prompt, pixels=None):
    res = {}
    kw = {} if pixels is None else {"pixel_values": pixels}
    rows = []
    for b in range(2):  # one row at a time (the pixels go with row 0)
        k = kw if b == 0 else {}
        rows.append(model(input_ids=ids[b:b + 1], attention_mask=mask[b:b + 1], decoder_input_ids=dec[b:b + 1],
                          use_cache=False, **k).logits[0])
    res["logits"] = torch.stack(rows)
    res["logits_no_mask"] = model(input_ids=ids[1:2], decoder_input_ids=dec[1:2], use_cache=False).logits[0]
    batched = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits
    if pixels is None:
        res["batch_vs_rows"] = float((batched - res["logits"]).abs().max())
    out = model(input_ids=ids[:1], attention_mask=mask[:1], decoder_input_ids=dec[:1], use_cache=False,
                output_hidden_states=True, **kw)
    res["encoder_hidden_states"] = torch.stack([h[0] for h in out.encoder_hidden_states])
    res["decoder_hidden_states"] = torch.stack([h[0] for h in out.decoder_hidden_states])
    gen = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                         max_new_tokens=N, min_new_tokens=N, use_cache=True, return_dict_in_generate=True,
                         output_logits=True, **kw)
    if int(gen.sequences[0, 0]) != 2:
        raise RuntimeError(f"decoder start token {int(gen.sequences[0, 0])}, expected <bos> 2")
    res["greedy_ids"] = gen.sequences[0, 1:]
    raw = torch.stack([x[0] for x in gen.logits])
    res["greedy_raw_logits"], res["greedy_margins"] = raw, margins_of(raw)
    full = model(input_ids=prompt, decoder_input_ids=gen.sequences[:, :-1], use_cache=False, **kw).logits[0]
    res["full_vs_cached"] = float((full - raw).abs().max())
    res["full_argmax_ok"] = bool(torch.equal(full.argmax(-1), res["greedy_ids"]))
    return res


def problems(res, min_margin):
    seq = res["greedy_ids"]
    out = []
    if not torch.equal(res["greedy_raw_logits"].argmax(-1), seq):
        out.append("greedy != argmax of raw logits")
    if float(res["greedy_margins"].min()) < min_margin:
        out.append(f"min greedy margin {float(res['greedy_margins'].min()):.2e}")
    if len(set(seq.tolist())) < MIN_DISTINCT or int(seq.max()) >= VOCAB or (seq == 0).any():
        out.append("degenerate greedy path (few distinct ids, pad or past the vocabulary)")
    if not res["full_argmax_ok"]:
        out.append("no-cache forward disagrees with the cached greedy path")
    return out


def make_one(spec, tok, date):
    import sentencepiece  # noqa: F401  (the tokenizer above)

    name = spec["name"]
    out_dir = OUT_ROOT / name
    rejected = []
    for attempt in range(MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        torch.manual_seed(seed)
        ids, mask, dec, prompt = inputs(seed, tok)
        cfg, cls = build(spec)
        model = cls(cfg).eval()
        redraw(model, seed, spec["init"])
        pixels = image(seed, spec["vision"]["image_size"]) if "vision" in spec else None
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            loaded = load_fp32_eager(cls, Path(tmp))
            res = evaluate(loaded, ids, mask, dec, prompt)
            why = problems(res, spec.get("min_margin", MIN_MARGIN))
            print(f"  {name} seed {seed}: margin {float(res['greedy_margins'].min()):.4f} "
                  f"{'OK' if not why else 'REJECT: ' + '; '.join(why)}", flush=True)
            if why:
                rejected.append((seed, why))
                continue
            if out_dir.exists():
                shutil.rmtree(out_dir)
            shutil.copytree(tmp, out_dir)
            shutil.copy(TOKENIZER_MODEL, out_dir / "tokenizer.model")
        break
    else:
        raise RuntimeError(f"{name}: no acceptable seed")
    arrays = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "decoder_input_ids": dec.numpy(),
              "logits": res["logits"].numpy(), "logits_no_mask": res["logits_no_mask"].numpy(),
              "encoder_hidden_states": res["encoder_hidden_states"].numpy(),
              "decoder_hidden_states": res["decoder_hidden_states"].numpy(), "prompt_ids": prompt[0].numpy(),
              "greedy_ids": res["greedy_ids"].numpy(), "greedy_margins": res["greedy_margins"].numpy()}
    if pixels is not None:  # the same prompt and row 0 with an image: the image tokens go first
        v = evaluate_vision(loaded, ids, mask, dec, prompt, pixels)
        arrays.update(v)
        arrays["file_pixel_values"] = image_processor(spec, out_dir)
    arrays = {k: a.astype(np.int64 if a.dtype.kind in "iu" else np.float32) for k, a in arrays.items()}
    save_npz_deterministic(out_dir / "golden.npz", arrays)
    write_provenance(spec, out_dir, seed, rejected, res, arrays, type(loaded).__name__, date)
    hf_dump(out_dir, prompt[0].tolist())


IMAGE_FILE = ROOT / "tests" / "data" / "vision" / "images" / "rgb_wide.png"


def image_processor(spec, out_dir) -> np.ndarray:
    """Write preprocessor_config.json (Hub style, as Gemma 3's); the pixel values its processor
    makes of IMAGE_FILE."""
    from PIL import Image
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    cfg = preprocessor_json({"vision": spec["vision"], "mm_tokens_per_image": 4,
                             "preprocessor": {"image_mean": [0.5] * 3, "image_std": [0.5] * 3}})
    (out_dir / "preprocessor_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    kw = {k: v for k, v in cfg.items() if v is not None and k not in
          ("image_processor_type", "processor_class", "image_seq_length")}
    return Gemma3ImageProcessorPil(**kw)(images=[Image.open(IMAGE_FILE)], return_tensors="pt")["pixel_values"].numpy()


def hf_dump(out_dir, prompt_ids):
    """hf_dump.npz: transformers' dump (scripts/dump_transformers.py) of one prompt, traced."""
    with tempfile.TemporaryDirectory() as tmp:
        prompts = Path(tmp) / "prompts.jsonl"
        prompts.write_text(json.dumps({"input_ids": prompt_ids}) + "\n")
        dump_transformers.main(["--model", str(out_dir.relative_to(ROOT)), "--prompts", str(prompts), "--trace",
                                "--max-new-tokens", "6", "--out", str(out_dir / "hf_dump.npz")])


@torch.no_grad()
def evaluate_vision(model, ids, mask, dec, prompt, pixels):
    """Goldens with one image: <boi> + image tokens x 4 + <eoi> before row 0's text and the prompt."""
    enc = model.config.encoder
    block = [enc.boi_token_index] + [enc.image_token_index] * enc.mm_tokens_per_image + [enc.eoi_token_index]
    t = lambda x: torch.tensor([x], dtype=torch.long)
    img_ids = t([2] + block + ids[0, 1:].tolist())
    img_prompt = t([2] + block + prompt[0, 1:].tolist())
    logits = model(input_ids=img_ids, decoder_input_ids=dec[:1], pixel_values=pixels, use_cache=False,
                   output_hidden_states=True)
    gen = model.generate(input_ids=img_prompt, attention_mask=torch.ones_like(img_prompt), pixel_values=pixels,
                         do_sample=False, max_new_tokens=N, min_new_tokens=N, use_cache=True,
                         return_dict_in_generate=True, output_logits=True)
    raw = torch.stack([x[0] for x in gen.logits])
    return {"pixel_values": pixels.numpy(), "image_input_ids": img_ids[0].numpy(),
            "image_logits": logits.logits[0].numpy(),
            "image_encoder_hidden_states": torch.stack([h[0] for h in logits.encoder_hidden_states]).numpy(),
            "image_prompt_ids": img_prompt[0].numpy(), "image_greedy_ids": gen.sequences[0, 1:].numpy(),
            "image_greedy_margins": margins_of(raw).numpy()}


def write_provenance(spec, out_dir, seed, rejected, res, arrays, cls_name, date):
    from safetensors import safe_open

    with safe_open(str(out_dir / "model.safetensors"), "np") as f:
        keys = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    lines = [
        f"# {spec['name']}", "",
        "Tiny random encoder-decoder checkpoint with golden outputs from Hugging Face transformers",
        "(an implementation independent of gemma-ref).", "",
        f"- generated: {date}",
        "- command: `python scripts/make_t5gemma_goldens.py` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"python {sys.version.split()[0]}",
        f"- model class: `{cls_name}`, attn_implementation=\"eager\", float32, CPU, torch.set_num_threads(1)",
        f"- seed {seed}: `torch.manual_seed({seed})` before construction, parameters re-drawn with "
        f"`torch.Generator().manual_seed({seed})` (stds {json.dumps(spec['init'], sort_keys=True)}), inputs from "
        f"`numpy.random.default_rng({seed})`" + (f"; {len(rejected)} earlier seed(s) rejected" if rejected else ""),
        "- tokenizer.model: a copy of tests/data/tokenizer/tiny.model (512 pieces)",
        "- hf_dump.npz: `python scripts/dump_transformers.py --model tests/data/encdec/"
        f"{spec['name']} --prompts (prompt_ids as input_ids) --trace --max-new-tokens 6` (called by this script)",
        f"- greedy: `generate(prompt_ids[None], do_sample=False, max_new_tokens={N}, min_new_tokens={N})`, "
        f"decoder start <bos> 2; min margin {float(res['greedy_margins'].min()):.4f}; each token the argmax of the "
        "raw logits",
        f"- transformers' own checks: max |no-cache forward - cached greedy logits| = {res['full_vs_cached']:.3g}"
        + (f"; max |batched (row 1 right-padded, attention_mask) - row by row| = {res['batch_vs_rows']:.3g}"
           if "batch_vs_rows" in res else ""),
        "", "## golden.npz", "", "| key | shape | dtype |", "| --- | --- | --- |",
    ]
    lines += [f"| `{k}` | {list(a.shape)} | {a.dtype} |" for k, a in arrays.items()]
    lines += ["", "## model.safetensors keys", "", f"{sum(int(np.prod(s)) for s in keys.values())} parameters.",
              "", "```"]
    lines += [f"{k} {s}" for k, s in sorted(keys.items())]
    lines += ["```", ""]
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines))


def main():
    import sentencepiece as spm

    torch.set_num_threads(1)
    tok = spm.SentencePieceProcessor(model_file=str(TOKENIZER_MODEL))
    date = provenance_date()
    names = sys.argv[1:]
    for spec in SPECS:
        if not names or spec["name"] in names:
            make_one(spec, tok, date)


if __name__ == "__main__":
    main()
