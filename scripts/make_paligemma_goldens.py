#!/usr/bin/env python3
"""Tiny random PaliGemma 1 and 2 checkpoints with goldens from transformers.

For each variant below this writes ``tests/data/paligemma/<name>/``:

  config.json, generation_config.json, model.safetensors   (save_pretrained)
  preprocessor_config.json                                  (Hub-style: SiglipImageProcessor)
  tokenizer.model                                           (copy of tests/data/tokenizer/tiny.model)
  golden.npz                                                (per case, see PROVENANCE.md)
  PROVENANCE.md

Everything golden comes from transformers: PaliGemmaProcessor (SiglipImageProcessorPil
and a GemmaTokenizer made from tiny.model with <image> added as id 512) makes
input_ids, token_type_ids and pixel_values; PaliGemmaForConditionalGeneration
(float32, eager attention, CPU, one thread) makes the vision tower output, the image
features, the logits and the greedy continuation. Images: tests/data/vision/images/.

Usage (from the repository root):

    pip install torch==2.13.0 transformers pillow sentencepiece safetensors numpy
    python scripts/make_paligemma_goldens.py
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL
import PIL.Image
import sentencepiece as spm
import torch
import transformers
from transformers import (
    AutoTokenizer,
    Gemma2Config,
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipVisionConfig,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_goldens import TOKENIZER_MODEL, provenance_date, redraw_parameters, save_npz_deterministic  # noqa: E402
from make_tiny_goldens import FULL, SLIDING  # noqa: E402
from make_vision_goldens import NEW_TOKENS, first_good_seed, greedy_checked, tokenizer_dir  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = ROOT / "tests" / "data" / "paligemma"
IMAGES = ROOT / "tests" / "data" / "vision" / "images"  # made by make_vision_goldens.py

VARIANTS = [
    dict(
        name="paligemma1-mqa",
        seed=21000,
        text_class=GemmaConfig,  # PaliGemma 1: a Gemma 1 decoder
        text=dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=1, head_dim=16),
        vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                    image_size=42, patch_size=14),  # 3 x 3 patches -> 9 image tokens
        preprocessor=dict(resample=3),
        init=dict(emb=0.1, proj=2.0, norm=0.5, post_norm_mean=1.0, final_norm_mean=2.0),
    ),
    dict(
        name="paligemma2-gqa",
        seed=22000,
        text_class=Gemma2Config,  # PaliGemma 2: a Gemma 2 decoder (softcaps, sliding window)
        text=dict(model_type="gemma2", hidden_size=48, intermediate_size=64, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                  sliding_window=6, layer_types=[SLIDING, FULL, SLIDING, FULL],
                  attn_logit_softcapping=50.0, final_logit_softcapping=30.0),
        # 16 image tokens: the prefix is longer than the window (6), which the bidirectional
        # prefix overrides (transformers ORs the prefix block onto the sliding-window mask).
        vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    image_size=32, patch_size=8, layer_norm_eps=1e-5),  # 4 x 4 patches -> 16 tokens
        preprocessor=dict(resample=2, image_mean=[0.48145466, 0.4578275, 0.40821073],
                          image_std=[0.26862954, 0.26130258, 0.27577711]),
        # Gains 1.5, not 2.0: with 2.0 this model amplifies the float32 rounding of the image
        # features (~7e-6 from float64, in transformers as in any float32 engine) to ~2e-4 in
        # the logits, past what a float32 golden can pin down.
        init=dict(emb=0.1, proj=1.5, norm=0.5, post_norm_mean=1.0, final_norm_mean=2.0),
    ),
]

# case -> (prompt, images by file name, suffix, generate?)
CASES = {
    "one": ("Describe the image.", ["rgb_wide.png"], None, True),
    "two": ("<image><image>Which is brighter?", ["l_tall.png", "rgba_square.png"], None, True),
    "marker": ("<image>caption en", ["rgba.png"], None, True),
    "suffix": ("Caption:", ["rgb_wide.png"], "a cat on", False),
}


def build(spec, vocab_tok: int):
    text = spec["text_class"](
        vocab_size=vocab_tok + 8, max_position_embeddings=512, rms_norm_eps=1e-6, pad_token_id=0,
        eos_token_id=1, bos_token_id=2, tie_word_embeddings=True, attention_bias=False,
        hidden_activation="gelu_pytorch_tanh", **{k: v for k, v in spec["text"].items() if k != "model_type"})
    vision = SiglipVisionConfig(vision_use_head=False, **spec["vision"])
    return PaliGemmaConfig(text_config=text.to_dict(), vision_config=vision.to_dict(),
                           image_token_index=vocab_tok, vocab_size=vocab_tok + 8,
                           projection_dim=spec["text"]["hidden_size"], hidden_size=spec["text"]["hidden_size"],
                           pad_token_id=0, eos_token_id=1, bos_token_id=2)


def image_seq_length(spec) -> int:
    return (spec["vision"]["image_size"] // spec["vision"]["patch_size"]) ** 2


def preprocessor_json(spec) -> dict:
    size = spec["vision"]["image_size"]
    d = {"do_convert_rgb": None, "do_normalize": True, "do_rescale": True, "do_resize": True,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
         "image_processor_type": "SiglipImageProcessor", "image_seq_length": image_seq_length(spec),
         "processor_class": "PaliGemmaProcessor", "rescale_factor": 1 / 255,
         "size": {"height": size, "width": size}}
    d.update(spec["preprocessor"])
    return dict(sorted(d.items()))


def make_processor(spec, tok_dir):
    cfg = preprocessor_json(spec)
    kw = {k: v for k, v in cfg.items() if v is not None and k not in (
        "image_processor_type", "processor_class", "image_seq_length")}
    ip = SiglipImageProcessorPil(**kw)
    ip.image_seq_length = cfg["image_seq_length"]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return PaliGemmaProcessor(image_processor=ip, tokenizer=tok)


@torch.no_grad()
def run_case(model, processor, prompt, images, suffix, generate):
    inputs = processor(images=[images], text=[prompt], suffix=suffix, return_tensors="pt")
    ids, tt, pv = inputs["input_ids"], inputs["token_type_ids"], inputs["pixel_values"]
    res = {"input_ids": ids[0].numpy().astype(np.int64), "token_type_ids": tt[0].numpy().astype(np.int64),
           "pixel_values": pv.numpy()}
    res["vision_tower"] = model.model.vision_tower(pixel_values=pv).last_hidden_state.numpy()
    res["image_features"] = model.model.get_image_features(pv).pooler_output.numpy()
    res["logits"] = model(input_ids=ids, pixel_values=pv, token_type_ids=tt, use_cache=False).logits[0].numpy()
    if not generate:
        return res, []

    def full_inputs(seq):  # prompt + continuation: the continuation is the causal suffix (type 1)
        return {"pixel_values": pv, "token_type_ids": torch.cat([tt[0], torch.ones_like(seq)])[None]}

    return res, greedy_checked(model, ids, {"pixel_values": pv, "token_type_ids": tt}, full_inputs, res)


def make_variant(spec, tok_dir, vocab_tok, date):
    out_dir = OUT_ROOT / spec["name"]
    processor = make_processor(spec, tok_dir)
    assert processor.image_token_id == vocab_tok, processor.image_token_id
    images = {n: PIL.Image.open(IMAGES / n) for case in CASES.values() for n in case[1]}

    def make_model(seed):
        model = PaliGemmaForConditionalGeneration(build(spec, vocab_tok))
        redraw_parameters(model, seed, spec["init"])
        return model

    runs = {case: (lambda m, c=c: run_case(m, processor, c[0], [images[n] for n in c[1]], c[2], c[3]))
            for case, c in CASES.items()}
    seed, attempt, results = first_good_seed(spec["name"], spec["seed"], make_model,
                                             PaliGemmaForConditionalGeneration, runs, out_dir)
    shutil.copy(TOKENIZER_MODEL, out_dir / "tokenizer.model")
    (out_dir / "preprocessor_config.json").write_text(json.dumps(preprocessor_json(spec), indent=2) + "\n")
    arrays = {f"{case}.{k}": np.ascontiguousarray(v) for case, res in results.items()
              for k, v in res.items() if not k.startswith("_")}
    save_npz_deterministic(out_dir / "golden.npz", arrays)
    write_provenance(spec, out_dir, seed, attempt, arrays, results, date)
    return results


def write_provenance(spec, out_dir, seed, attempt, arrays, results, date):
    from safetensors import safe_open

    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    lines = [
        f"# {spec['name']}", "",
        f"Tiny random PaliGemma checkpoint (PaliGemmaForConditionalGeneration, text model_type "
        f"`{spec['text']['model_type']}`) with goldens from Hugging Face transformers (independent of gemma-ref).", "",
        "## Provenance", "",
        f"- generated: {date}",
        f"- command: `python scripts/make_paligemma_goldens.py {spec['name']}` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"Pillow {PIL.__version__}, python {sys.version.split()[0]}",
        "- float32, attn_implementation=\"eager\", CPU, torch.set_num_threads(1)",
        f"- seed {seed} (torch.manual_seed before construction; parameters re-drawn by "
        f"make_tiny_goldens.redraw_parameters with the same seed); {attempt} earlier seed(s) rejected",
        "- text config: " + json.dumps(spec["text"]),
        "- vision config: " + json.dumps(spec["vision"]),
        "- parameter init (redraw_parameters): " + json.dumps(spec["init"]),
        "- inputs: PaliGemmaProcessor(SiglipImageProcessorPil(**preprocessor_config.json without nulls, "
        f"image_seq_length={image_seq_length(spec)}), GemmaTokenizer from tiny.model + <image>=512), called as "
        "processor(images=[images], text=[prompt], suffix=suffix)",
        "- images: tests/data/vision/images/*.png, opened with PIL",
        f"- greedy: model.generate(input_ids, pixel_values, token_type_ids, do_sample=False, "
        f"max_new_tokens={NEW_TOKENS}, min_new_tokens={NEW_TOKENS}, use_cache=True); each token is the "
        "argmax of the raw logits, and a no-cache forward over prompt + continuation (token_type_ids 1 "
        "on the continuation) agrees", "",
        "## Cases", "",
        "| case | prompt | images | suffix | tokens | min greedy margin | HF cached vs no-cache |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for case, (prompt, names, suffix, gen) in CASES.items():
        r = results[case]
        margin = f"{float(r['greedy_margins'].min()):.4f}" if gen else "-"
        diff = f"{r['_cache_vs_full']:.2e}" if gen else "-"
        lines.append(f"| `{case}` | `{prompt!r}` | {', '.join(names)} | {suffix!r} | {len(r['input_ids'])} | "
                     f"{margin} | {diff} |")
    lines += ["", "## golden.npz", "", "Keys `<case>.<name>`:", "", "| key | shape | dtype |", "| --- | --- | --- |"]
    lines += [f"| `{k}` | {list(v.shape)} | {v.dtype} |" for k, v in arrays.items()]
    lines += ["", "- `vision_tower`: `model.model.vision_tower(pixel_values).last_hidden_state` [I, P, Dv]",
              "- `image_features`: `model.model.get_image_features(pixel_values).pooler_output` [I, P, D]",
              "- `logits`: one no-cache forward with pixel_values and token_type_ids (prefix bidirectional, "
              "suffix causal), every position, full width V = 520 (rows >= 512 are padding)",
              "", "## model.safetensors keys", "", "```", *keys, "```",
              "", "## preprocessor_config.json", "", "```", json.dumps(preprocessor_json(spec), indent=2), "```", ""]
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines))


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    vocab_tok = spm.SentencePieceProcessor(model_file=str(TOKENIZER_MODEL)).get_piece_size()
    tok_dir = tokenizer_dir({"image_token": "<image>"})
    date = provenance_date()
    only = set(sys.argv[1:])
    for spec in VARIANTS:
        if only and spec["name"] not in only:
            continue
        print(f"== {spec['name']}", flush=True)
        for case, res in make_variant(spec, tok_dir, vocab_tok, date).items():
            print(f"  {case}: {({k: tuple(np.shape(v)) for k, v in res.items() if not k.startswith('_')})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
