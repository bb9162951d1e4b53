#!/usr/bin/env python3
"""Tiny random Gemma 3n checkpoints and golden outputs, made with Hugging Face transformers.

For every checkpoint below this writes ``tests/data/tiny/<name>/`` (config.json,
generation_config.json, model.safetensors, tokenizer.model, golden.npz, PROVENANCE.md),
like scripts/make_tiny_goldens.py (whose helpers it imports), for
`Gemma3nForCausalLM` (transformers' models/gemma3n/modeling_gemma3n.py):

  gemma3n-2streams  AltUp with 2 streams, active stream 1; PLE table of 300 rows for a
                    512-token vocabulary; KV sharing on the last 2 of 6 layers; sparsity
                    0.95 / 0.8 / 0.6 on layers 0, 2, 4 (4 is a KV-sharing layer);
                    per-layer intermediate sizes; window 8 < T; new rope spelling.
  gemma3n-4streams  AltUp with 4 streams, active stream 2, altup_correct_scale false;
                    MQA; vocab 520 (8 rows more than the tokenizer), PLE table of 256 rows;
                    KV sharing on the last 3 of 7 layers; sparsity on 4 layers with 4
                    targets; OLD rope spelling (rope_theta, rope_local_base_freq).

Goldens: transformers, float32, eager attention, CPU, one thread. Each weight draw is
accepted only if a float64 forward of the same weights agrees with the float32 logits to
FLOAT64_BAR (so the goldens measure the model, not rounding), plus the checks of
make_tiny_goldens.check_ok (greedy margins, distinct tokens, cached == uncached argmax).

Usage (from the repository root):

    python scripts/make_tiny_goldens_gemma3n.py [name ...]
"""

from __future__ import annotations

import copy
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import transformers
from transformers import Gemma3nForCausalLM, Gemma3nTextConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_goldens import (  # noqa: E402
    FULL, MAX_ATTEMPTS, NEW_TOKENS, OUT_ROOT, PROMPT_LEN, PROMPT_TEXT, SEQ0_TEXT, SEQ_LEN,
    SLIDING, TOKENIZER_MODEL, check_ok, greedy, install_checkpoint, load_fp32_eager, margins_of,
    provenance_date, rewrite_old_rope_spelling, save_npz_deterministic, seeded_inputs,
)

FLOAT64_BAR = 2e-5  # max |logits(float64) - logits(float32)| accepted; the tests' bar is 1e-3
# Smallest top1 - top2 logit gap along the greedy path: 50x the worst float32 rounding
# accepted above, so a float32 engine whose order of operations differs still agrees.
MIN_MARGIN_3N = 1e-3

SPECS = [
    dict(
        name="gemma3n-2streams",
        seed=31000,
        init=dict(final_norm_mean=0.7),
        config=dict(
            vocab_size=512,
            vocab_size_per_layer_input=300,  # ids >= 300 read row 0 of the PLE table
            hidden_size=32,
            hidden_size_per_layer_input=8,
            intermediate_size=[64, 96, 80, 64, 48, 64],
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            layer_types=[SLIDING, SLIDING, FULL, SLIDING, SLIDING, FULL],
            sliding_window=8,
            num_kv_shared_layers=2,  # layer 4 reuses layer 3 (sliding), layer 5 reuses layer 2
            altup_num_inputs=2,
            altup_active_idx=1,
            altup_correct_scale=True,
            laurel_rank=4,
            activation_sparsity_pattern=[0.95, 0.0, 0.8, 0.0, 0.6, 0.0],
            final_logit_softcapping=8.0,
            rope_parameters={FULL: {"rope_type": "default", "rope_theta": 1_000_000.0},
                             SLIDING: {"rope_type": "default", "rope_theta": 10_000.0}},
        ),
    ),
    dict(
        name="gemma3n-4streams",
        seed=32000,
        old_rope_spelling=True,
        init=dict(final_norm_mean=0.6),
        config=dict(
            vocab_size=520,  # like 262400 rows for a 262144-token text vocabulary
            vocab_size_per_layer_input=256,
            hidden_size=48,
            hidden_size_per_layer_input=16,
            intermediate_size=[48, 64, 80, 96, 64, 48, 32],
            num_hidden_layers=7,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            layer_types=[SLIDING, FULL, SLIDING, SLIDING, FULL, SLIDING, FULL],
            sliding_window=8,
            num_kv_shared_layers=3,  # layers 4, 6 reuse layer 1 (full); layer 5 reuses layer 3
            altup_num_inputs=4,
            altup_active_idx=2,
            altup_correct_scale=False,
            laurel_rank=6,
            activation_sparsity_pattern=[0.95, 0.7, 0.0, 0.5, 0.9, 0.0, 0.0],
            final_logit_softcapping=30.0,
            rope_parameters={FULL: {"rope_type": "default", "rope_theta": 1_000_000.0},
                             SLIDING: {"rope_type": "default", "rope_theta": 10_000.0}},
        ),
    ),
]

# Re-draw of every parameter (transformers initialises norms to 1, correct_output_scale
# to 0). Gemma 3n's RMSNorm multiplies by w itself (not 1 + w), so norm weights are
# drawn around 1. The AltUp router sees normed / D inputs, so its weights are drawn
# ~sqrt(D) to give the tanh an O(1) argument. Small AltUp coefficients: larger ones let
# predict() cancel streams against each other, which makes float32 rounding visible in
# the logits (see FLOAT64_BAR).
# Per spec, a smaller final norm (smaller logits) keeps float32 rounding under FLOAT64_BAR.
INIT = dict(emb=0.1, ple_emb=0.3, proj=1.0, norm_mean=1.0, norm=0.2, final_norm_mean=2.0,
            router=1.0, altup_coef=0.15, correct_scale_mean=1.0, correct_scale=0.3)


@torch.no_grad()
def redraw_parameters(model: torch.nn.Module, seed: int, init: dict, n_text: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    D = model.config.hidden_size
    for name, p in model.named_parameters():  # the tied lm_head is not listed twice
        mod_name, _, pname = name.rpartition(".")
        cls = type(modules[mod_name]).__name__

        def normal(std, mean=0.0):
            return torch.randn(p.shape, generator=gen, dtype=torch.float32) * std + mean

        if "RMSNorm" in cls:
            mean = init["final_norm_mean"] if mod_name == "model.norm" else init["norm_mean"]
            val = normal(init["norm"], mean)
        elif pname == "correct_output_scale":
            val = normal(init["correct_scale"], init["correct_scale_mean"])
        elif mod_name == "model.embed_tokens":
            val = normal(init["emb"])
            val[n_text:] *= 0.1  # rows past the tokenizer (like Gemma 3n's audio/image ids): rarely the argmax
        elif mod_name == "model.embed_tokens_per_layer":
            val = normal(init["ple_emb"])
        elif mod_name.endswith("altup.modality_router"):
            val = normal(init["router"] * math.sqrt(D))
        elif mod_name.endswith(("altup.prediction_coefs", "altup.correction_coefs")):
            val = normal(init["altup_coef"] / math.sqrt(p.shape[1]))
        else:  # Linear [out, in]
            val = normal(init["proj"] / math.sqrt(p.shape[1]))
        p.copy_(val)


def build_config(spec: dict) -> Gemma3nTextConfig:
    cfg = dict(max_position_embeddings=512, rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1,
               bos_token_id=2, tie_word_embeddings=True, attention_bias=False,
               hidden_activation="gelu_pytorch_tanh", **copy.deepcopy(spec["config"]))
    config = Gemma3nTextConfig(**cfg)
    config._attn_implementation = "eager"
    return config


def logits_of(model, input_ids):
    return torch.stack([model(input_ids=input_ids[i:i + 1], use_cache=False).logits[0]
                        for i in range(input_ids.shape[0])])


@torch.no_grad()
def evaluate(model, input_ids, prompt):
    """Every golden quantity from one float32 eager model, and the float64 cross-check."""
    res = {"logits": logits_of(model, input_ids)}
    out0 = model(input_ids=input_ids[:1], use_cache=False, output_hidden_states=True)
    # Each entry is [altup_num_inputs, B, T, D]: every AltUp stream, batch row 0 kept.
    res["hidden_states"] = torch.stack([h[:, 0] for h in out0.hidden_states])
    res["last_hidden_state"] = model.model(input_ids=input_ids[:1], use_cache=False).last_hidden_state[0]
    seq, raw = greedy(model, prompt)
    res["greedy_ids"], res["greedy_raw_logits"], res["greedy_margins"] = seq, raw, margins_of(raw)
    full = torch.cat([prompt[0], seq])[None]
    res["full_check_logits"] = model(input_ids=full, use_cache=False).logits[0][prompt.shape[1] - 1:-1]
    model64 = copy.deepcopy(model).to(torch.float64)
    res["float64_delta"] = float((logits_of(model64, input_ids) - res["logits"].double()).abs().max())
    return res


@torch.no_grad()
def run_checks(spec, out_dir, input_ids, res) -> dict:
    checks = {
        "max |cached greedy step logits - no-cache full forward logits|":
            float((res["greedy_raw_logits"] - res["full_check_logits"]).abs().max()),
        "max |logits(float64 forward of the same weights) - logits(float32)|": res["float64_delta"],
        "logits std": float(res["logits"].std()),
        "logits max |x|": float(res["logits"].abs().max()),
    }
    _, info = Gemma3nForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32,
                                                 attn_implementation="eager", output_loading_info=True)
    checks["from_pretrained loading_info"] = json.dumps(
        {k: sorted(v) if isinstance(v, (set, list)) else str(v) for k, v in info.items() if v},
        sort_keys=True) or "{}"

    def logits_with(**overrides):
        cfg = Gemma3nTextConfig.from_pretrained(str(out_dir))
        for k, v in overrides.items():
            setattr(cfg, k, v)
        m = Gemma3nForCausalLM.from_pretrained(str(out_dir), config=cfg, dtype=torch.float32,
                                               attn_implementation="eager").eval()
        return logits_of(m, input_ids)

    base = res["logits"]
    # Each mechanism must move the logits, or the goldens would not test it.
    checks["max |logits - logits with sliding_window=4096|"] = float(
        (base - logits_with(sliding_window=4096)).abs().max())
    L = spec["config"]["num_hidden_layers"]
    checks["max |logits - logits with no activation sparsity|"] = float(
        (base - logits_with(activation_sparsity_pattern=[0.0] * L)).abs().max())
    checks["max |logits - logits with altup_coef_clip=1e-3| (0: no clip at inference)"] = float(
        (base - logits_with(altup_coef_clip=1e-3)).abs().max())
    no_cap = logits_with(final_logit_softcapping=1e9)  # the config class refuses None
    checks["max |logits - logits with final_logit_softcapping=1e9|"] = float((base - no_cap).abs().max())
    ids = input_ids.flatten()
    checks["ids >= vocab_size_per_layer_input in input_ids"] = int(
        (ids >= spec["config"]["vocab_size_per_layer_input"]).sum())
    return checks


HIDDEN_STATES_DOC = """\
`hidden_states` [L+1, S, T, D] is transformers' `output_hidden_states=True` tuple for row 0,
stacked. Gemma 3n records the output of each decoder layer, which is the whole AltUp stack, so
every entry holds ALL S = altup_num_inputs streams (stream altup_active_idx is the one the
blocks run on): entry 0 is the input of layer 0 (stream 0 = embeddings * sqrt(D), streams
1.. = altup_projections of it, magnitude-matched); entry i is the output of layer i-1;
entry L is the raw output of the last layer (Gemma 3n captures with
tie_last_hidden_states=False, so it is NOT replaced by the final norm's output, unlike
Gemma 1-3). `last_hidden_state` [T, D] is the model's output after the merge of the streams
(altup_unembed_projections, magnitude-matched to stream 0, mean over streams) and the final
norm."""


def make_one(spec: dict, vocab_tok: int, tok_sp, date: str) -> dict:
    name, out_dir = spec["name"], OUT_ROOT / spec["name"]
    seq0 = ([2] + tok_sp.encode(SEQ0_TEXT, out_type=int))[:SEQ_LEN]
    prompt = ([2] + tok_sp.encode(PROMPT_TEXT, out_type=int))[:PROMPT_LEN]
    rejected = []
    for attempt in range(MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        input_ids, prompt_t = seeded_inputs(seed, seq0, prompt, vocab_tok)
        model = Gemma3nForCausalLM(build_config(spec)).eval()
        redraw_parameters(model, seed, dict(INIT, **spec.get("init", {})), vocab_tok)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            loaded = load_fp32_eager(Gemma3nForCausalLM, Path(tmp))
            res = evaluate(loaded, input_ids, prompt_t)
            ok, problems = check_ok(res, vocab_tok, MIN_MARGIN_3N)
            if res["float64_delta"] > FLOAT64_BAR:
                ok = False
                problems.append(f"float64 vs float32 logits differ by {res['float64_delta']:.1e}")
            print(f"  {name} seed {seed}: min margin {float(res['greedy_margins'].min()):.4f}, "
                  f"float64 delta {res['float64_delta']:.1e}, "
                  f"{'OK' if ok else 'REJECT: ' + '; '.join(problems)}", flush=True)
            if not ok:
                rejected.append((seed, problems))
                continue
            install_checkpoint(Path(tmp), out_dir)
        break
    else:
        raise RuntimeError(f"{name}: no acceptable seed in {MAX_ATTEMPTS} attempts")

    checks = run_checks(spec, out_dir, input_ids, res)
    if spec.get("old_rope_spelling"):
        new_text = (out_dir / "config.json").read_text()
        rewrite_old_rope_spelling(out_dir / "config.json")
        again = logits_of(load_fp32_eager(Gemma3nForCausalLM, out_dir), input_ids)
        diff = float((again - res["logits"]).abs().max().detach())
        if diff != 0.0:
            (out_dir / "config.json").write_text(new_text)
            raise RuntimeError(f"{name}: old rope spelling changes the logits by {diff}")
        checks["old rope spelling: max |logits(reloaded) - logits(new spelling)|"] = diff

    arrays = {
        "input_ids": input_ids.numpy().astype(np.int64),
        "logits": res["logits"].numpy().astype(np.float32),
        "prompt_ids": np.asarray(prompt, dtype=np.int64),
        "greedy_ids": res["greedy_ids"].numpy().astype(np.int64),
        "greedy_raw_logits": res["greedy_raw_logits"].numpy().astype(np.float32),
        "greedy_margins": res["greedy_margins"].numpy().astype(np.float32),
        "hidden_states": res["hidden_states"].numpy().astype(np.float32),
        "last_hidden_state": res["last_hidden_state"].numpy().astype(np.float32),
    }
    save_npz_deterministic(out_dir / "golden.npz", arrays)
    write_provenance(spec, out_dir, seed, rejected, checks, arrays, res, date)
    return dict(name=name, seed=seed, checks=checks, min_margin=float(res["greedy_margins"].min()))


def write_provenance(spec, out_dir, seed, rejected, checks, arrays, res, date):
    from safetensors import safe_open

    with safe_open(str(out_dir / "model.safetensors"), "np") as f:
        keys = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    lines = [
        f"# {spec['name']}", "",
        "Tiny random Gemma 3n checkpoint (`Gemma3nForCausalLM`) with golden outputs from Hugging Face",
        "transformers (an implementation independent of gemma-ref).", "",
        "## Provenance", "",
        f"- generated: {date}",
        f"- command: `python scripts/make_tiny_goldens_gemma3n.py {spec['name']}` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"sentencepiece {spm.__version__}, python {sys.version.split()[0]}",
        "- attn_implementation=\"eager\", float32, CPU, torch.set_num_threads(1)",
        f"- seed: {seed} (`torch.manual_seed`, parameters re-drawn with `torch.Generator().manual_seed({seed})`, "
        f"sequence 1 from `numpy.random.default_rng({seed})`)",
        f"- re-draw: {json.dumps(dict(INIT, **spec.get('init', {})), sort_keys=True)} (see redraw_parameters "
        "in the script; embedding rows past the tokenizer's 512 drawn 10x smaller)",
        f"- {len(rejected)} earlier seed(s) rejected" + (
            ": " + "; ".join(f"{s}: {', '.join(p)}" for s, p in rejected) if rejected else ""),
        "- weights saved in float32; tokenizer.model: copy of `tests/data/tokenizer/tiny.model`", "",
        "## Config", "", "```json", json.dumps(spec["config"], indent=1), "```",
        "" if not spec.get("old_rope_spelling") else
        "config.json was rewritten to the OLD rope spelling (`rope_theta`, `rope_local_base_freq`, "
        "`rope_scaling`) and reloads to bit-identical logits (see Checks).", "",
        "## Golden contents (golden.npz)", "", "| key | shape | dtype |", "| --- | --- | --- |",
    ]
    lines += [f"| `{k}` | {list(v.shape)} | {v.dtype} |" for k, v in arrays.items()]
    lines += [
        "",
        f"- logits: one full forward per row, no cache; after the final softcap "
        f"({spec['config']['final_logit_softcapping']}).",
        f"- greedy: `model.generate(prompt, do_sample=False, max_new_tokens={NEW_TOKENS}, "
        f"min_new_tokens={NEW_TOKENS}, use_cache=True)`; each token checked to be the argmax of the raw "
        "logits (`greedy_raw_logits`, the cached steps), and a no-cache forward over prompt + greedy gives "
        "the same argmaxes.",
        f"- min greedy margin: {float(res['greedy_margins'].min()):.4f}; greedy_ids: {res['greedy_ids'].tolist()}",
        "", "### hidden_states convention", "", HIDDEN_STATES_DOC, "", "## Checks", "",
    ]
    lines += [f"- {k}: {v if isinstance(v, str) else format(v, '.6g')}" for k, v in checks.items()]
    lines += ["", "## model.safetensors keys", "",
              f"{sum(int(np.prod(s)) for s, _ in keys.values())} parameters.", "", "```"]
    lines += [f"{k} {s} {d}" for k, (s, d) in sorted(keys.items())]
    lines += ["```", ""]
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines))


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    tok_sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER_MODEL))
    date = provenance_date()
    only = set(sys.argv[1:])
    for spec in SPECS:
        if not only or spec["name"] in only:
            print(f"== {spec['name']}", flush=True)
            info = make_one(spec, tok_sp.get_piece_size(), tok_sp, date)
            for k, v in info["checks"].items():
                print(f"    {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
