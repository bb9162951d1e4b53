#!/usr/bin/env python3
"""Tiny random RecurrentGemma (Griffin) checkpoints, with goldens from transformers AND
from Google's own `recurrentgemma` 1.0.1 package, on the same weights.

For every checkpoint below this writes ``tests/data/tiny/<name>/`` (config.json,
generation_config.json, model.safetensors, tokenizer.model, golden.npz, PROVENANCE.md),
like scripts/make_tiny_goldens.py (whose helpers it imports), for
`RecurrentGemmaForCausalLM` (transformers' models/recurrent_gemma/modeling_recurrent_gemma.py):

  recurrentgemma-mqa  the 2B's layout scaled down: blocks recurrent, recurrent, attention,
                      ...; one kv head; lru_width (64) != hidden_size (48); window 8 < T;
                      logits softcap 5 (bites). Also run through Google's
                      recurrentgemma.torch.Griffin with the same weights (names mapped).
  recurrentgemma-gqa  what transformers' config allows beyond Google's presets: 2 kv heads,
                      block pattern (recurrent, attention), conv1d_width 3, rope_theta 1000,
                      q/k/v biases (attention_bias), window 6. transformers only (Google's
                      Griffin has one kv head, no q/k/v bias, conv width 4, theta 1e4).

Goldens: transformers, float32, eager attention, CPU, one thread; each draw accepted only
if transformers' float64 forward agrees with its float32 logits to FLOAT64_BAR, plus
make_tiny_goldens.check_ok (greedy margins, distinct tokens, cached == uncached argmax).

Google's package: `pip download recurrentgemma==1.0.1 --no-deps`, installed with
`pip install --no-deps --target DIR` beside einops, jaxtyping and typeguard<3 (its
numpy<2.4 pin is not needed to run it); its top-level __init__ imports JAX, which the
torch modules do not need, so the package is entered without running it (see
import_recurrentgemma_torch). Pass DIR as RECURRENTGEMMA_PATH.

One difference between the two references, measured here and documented in
PROVENANCE.md: Google's local attention lets a query see keys at distance 0..window
(window + 1 keys: `_compute_forward_pass_mask`: q <= k + window; its cache holds
`window` keys besides the new one), transformers' 0..window-1 (`sliding_window_overlay`:
k > q - window). So Google's Griffin with attention_window_size W - 1 is transformers'
with W; the golden `google_logits` are made that way (and the gap at W is recorded).

Usage (from the repository root):

    RECURRENTGEMMA_PATH=/path/to/target python scripts/make_tiny_goldens_recurrent_gemma.py [name ...]
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import transformers
from transformers import RecurrentGemmaConfig, RecurrentGemmaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_tiny_goldens import (  # noqa: E402
    MAX_ATTEMPTS, NEW_TOKENS, OUT_ROOT, PROMPT_LEN, PROMPT_TEXT, SEQ0_TEXT, SEQ_LEN,
    TOKENIZER_MODEL, check_ok, greedy, install_checkpoint, load_fp32_eager, margins_of,
    provenance_date, save_npz_deterministic, seeded_inputs,
)
from make_tiny_goldens_gemma3n import logits_of  # noqa: E402

FLOAT64_BAR = 2e-5  # max |logits(float64) - logits(float32)| accepted
MIN_MARGIN = 1e-3  # smallest top1 - top2 gap on the greedy path

SPECS = [
    dict(
        name="recurrentgemma-mqa",
        seed=41000,
        google=True,
        config=dict(
            vocab_size=512, hidden_size=48, intermediate_size=192, num_hidden_layers=5,
            num_attention_heads=4, num_key_value_heads=1, lru_width=64,
            attention_window_size=8, conv1d_width=4, logits_soft_cap=5.0,
            block_types=["recurrent", "recurrent", "attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        ),
    ),
    dict(
        name="recurrentgemma-gqa",
        seed=42000,
        google=False,
        config=dict(
            vocab_size=512, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, lru_width=None,
            attention_window_size=6, conv1d_width=3, logits_soft_cap=30.0, attention_bias=True,
            block_types=["recurrent", "attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 1000.0, "partial_rotary_factor": 0.5},
        ),
    ),
]

# Re-draw (std): Linear weights gain / sqrt(fan_in); biases; RMSNorm weights (applied as
# 1 + w); the RG-LRU's block-diagonal gates 1 / sqrt(block width) with biases; the conv
# taps. recurrent_param keeps transformers' init (a = sigmoid-gated decay in [0.9, 0.999]
# at gate 1/8), so the state has long memory, as in the real models.
INIT = dict(emb=0.1, proj=2.0, bias=0.1, norm=0.3, gate=1.0, gate_bias=0.5, conv=0.5)


@torch.no_grad()
def redraw_parameters(model: torch.nn.Module, seed: int, init: dict) -> None:
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():  # the tied lm_head is not listed twice
        def normal(std, mean=0.0):
            return torch.randn(p.shape, generator=gen, dtype=torch.float32) * std + mean

        if name.endswith("rg_lru.recurrent_param"):
            continue
        if name.endswith(("_gate_weight",)):  # [heads, bw, bw], used as x @ W
            val = normal(init["gate"] / math.sqrt(p.shape[-1]))
        elif name.endswith("_gate_bias"):
            val = normal(init["gate_bias"])
        elif name.endswith("conv_1d.weight"):  # [C, 1, W]
            val = normal(init["conv"])
        elif "norm" in name:
            val = normal(init["norm"])
        elif name == "model.embed_tokens.weight":
            val = normal(init["emb"])
        elif p.ndim == 2:
            val = normal(init["proj"] / math.sqrt(p.shape[1]))
        else:  # biases
            val = normal(init["bias"])
        p.copy_(val)


def build_config(spec: dict) -> RecurrentGemmaConfig:
    cfg = dict(rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2,
               hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
               **copy.deepcopy(spec["config"]))
    config = RecurrentGemmaConfig(**cfg)
    config._attn_implementation = "eager"
    return config


@torch.no_grad()
def evaluate(model, input_ids, prompt):
    """Every golden quantity from one float32 eager model, and the float64 cross-check."""
    res = {"logits": logits_of(model, input_ids)}
    # The residual stream, row 0: the input of layer 0 (embeddings * normalizer) and each
    # layer's output, captured by hooks (independent of output_hidden_states' conventions).
    layers, captured = model.model.layers, []
    hooks = [layers[0].register_forward_pre_hook(lambda m, a: captured.append(a[0][0].clone()))]
    hooks += [l.register_forward_hook(lambda m, a, o: captured.append(o[0].clone())) for l in layers]
    model(input_ids=input_ids[:1], use_cache=False)
    for h in hooks:
        h.remove()
    res["residual_stream"] = torch.stack(captured)
    seq, raw = greedy(model, prompt)
    res["greedy_ids"], res["greedy_raw_logits"], res["greedy_margins"] = seq, raw, margins_of(raw)
    full = torch.cat([prompt[0], seq])[None]
    res["full_check_logits"] = model(input_ids=full, use_cache=False).logits[0][prompt.shape[1] - 1:-1]
    model64 = copy.deepcopy(model).to(torch.float64)
    res["float64_delta"] = float((logits_of(model64, input_ids) - res["logits"].double()).abs().max())
    return res


# --- Google's recurrentgemma 1.0.1 -------------------------------------------------------


def import_recurrentgemma_torch():
    """recurrentgemma.torch without the package's __init__ (which imports JAX)."""
    root = os.environ.get("RECURRENTGEMMA_PATH")
    if not root:
        raise SystemExit("set RECURRENTGEMMA_PATH to where recurrentgemma 1.0.1 is installed "
                         "(pip install --no-deps --target DIR recurrentgemma==1.0.1 einops jaxtyping 'typeguard<3')")
    sys.path.insert(0, root)
    pkg = types.ModuleType("recurrentgemma")
    pkg.__path__ = [str(Path(root) / "recurrentgemma")]
    pkg.__version__ = "1.0.1"
    sys.modules["recurrentgemma"] = pkg
    from recurrentgemma import common
    from recurrentgemma import torch as rg

    return common, rg


def google_state_dict(hf: dict, config: RecurrentGemmaConfig) -> dict:
    """transformers' parameter names and layouts -> Griffin's (recurrentgemma.torch)."""
    out = {"embedder.input_embedding": hf["model.embed_tokens.weight"],
           "final_norm.scale": hf["model.final_norm.weight"]}
    for i, kind in enumerate(config.layers_block_type):
        p, g = f"model.layers.{i}.", f"blocks.{i}."
        out[g + "temporal_pre_norm.scale"] = hf[p + "temporal_pre_norm.weight"]
        out[g + "channel_pre_norm.scale"] = hf[p + "channel_pre_norm.weight"]
        t = p + "temporal_block."
        if kind == "linear_attention":  # the recurrent block
            r = g + "recurrent_block."
            for n in ("linear_x", "linear_y", "linear_out"):
                for w in ("weight", "bias"):
                    out[f"{r}{n}.{w}"] = hf[f"{t}{n}.{w}"]
            out[r + "conv_1d.w"] = hf[t + "conv_1d.weight"][:, 0, :].T  # [C, 1, W] -> [W, C]
            out[r + "conv_1d.b"] = hf[t + "conv_1d.bias"]
            out[r + "rg_lru.a_param"] = hf[t + "rg_lru.recurrent_param"]
            out[r + "rg_lru.input_gate.w"] = hf[t + "rg_lru.input_gate_weight"]
            out[r + "rg_lru.input_gate.b"] = hf[t + "rg_lru.input_gate_bias"]
            out[r + "rg_lru.a_gate.w"] = hf[t + "rg_lru.recurrent_gate_weight"]
            out[r + "rg_lru.a_gate.b"] = hf[t + "rg_lru.recurrent_gate_bias"]
        else:
            a = g + "attention_block."
            for n, m in (("q_proj", "proj_q"), ("k_proj", "proj_k"), ("v_proj", "proj_v"), ("o_proj", "proj_final")):
                out[f"{a}{m}.weight"] = hf[f"{t}{n}.weight"]
            out[a + "proj_final.bias"] = hf[t + "o_proj.bias"]
        m = p + "mlp_block."
        out[g + "mlp_block.ffw_up.w"] = torch.stack([hf[m + "gate_proj.weight"].T, hf[m + "up_proj.weight"].T])
        out[g + "mlp_block.ffw_up.b"] = torch.stack([hf[m + "gate_proj.bias"], hf[m + "up_proj.bias"]])[:, None, None]
        out[g + "mlp_block.ffw_down.weight"] = hf[m + "down_proj.weight"]
        out[g + "mlp_block.ffw_down.bias"] = hf[m + "down_proj.bias"]
    return {k: v.contiguous() for k, v in out.items()}


def google_griffin(model, window: int):
    common, rg = import_recurrentgemma_torch()
    c = model.config
    kinds = {"linear_attention": common.TemporalBlockType.RECURRENT,
             "sliding_attention": common.TemporalBlockType.ATTENTION}
    cfg = common.GriffinConfig(
        vocab_size=c.vocab_size, width=c.hidden_size, mlp_expanded_width=c.intermediate_size // 2,
        num_heads=c.num_attention_heads, block_types=tuple(kinds[k] for k in c.layers_block_type),
        embeddings_scale_by_sqrt_dim=True, attention_window_size=window,
        logits_soft_cap=c.logits_soft_cap, lru_width=c.lru_width)
    g = rg.Griffin(cfg, gradient_checkpointing=False).eval()
    g.load_state_dict(google_state_dict(dict(model.state_dict()), c), strict=True)
    return g


@torch.no_grad()
def google_outputs(model, input_ids, prompt, greedy_ids) -> dict:
    """Griffin's logits on the same weights: full forward of input_ids, and its cached steps
    along transformers' greedy path (prompt in one call, then one token at a time)."""
    W = model.config.attention_window_size
    out = {}
    for window in (W - 1, W):
        g = google_griffin(model, window)
        pos = torch.arange(input_ids.shape[1])[None].repeat(input_ids.shape[0], 1)
        out[window] = g(input_ids, pos, return_cache=False)[0]
    g = google_griffin(model, W - 1)
    ids = torch.cat([prompt[0], greedy_ids])[None]
    P = prompt.shape[1]
    logits, cache = g(ids[:, :P], torch.arange(P)[None])
    steps = [logits[0, -1]]
    for t in range(P, ids.shape[1] - 1):
        logits, cache = g(ids[:, t:t + 1], torch.tensor([[t]]), cache)
        steps.append(logits[0, -1])
    return {"logits": out[W - 1], "logits_window_as_named": out[W], "cached_steps": torch.stack(steps)}


# --- checkpoints ---------------------------------------------------------------------


@torch.no_grad()
def run_checks(spec, out_dir, input_ids, res) -> dict:
    checks = {
        "max |cached greedy step logits - no-cache full forward logits|":
            float((res["greedy_raw_logits"] - res["full_check_logits"]).abs().max()),
        "max |logits(float64 forward of the same weights) - logits(float32)|": res["float64_delta"],
        "logits std": float(res["logits"].std()),
        "logits max |x|": float(res["logits"].abs().max()),
    }
    _, info = RecurrentGemmaForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32,
                                                        attn_implementation="eager", output_loading_info=True)
    checks["from_pretrained loading_info"] = json.dumps(
        {k: sorted(v) if isinstance(v, (set, list)) else str(v) for k, v in info.items() if v},
        sort_keys=True) or "{}"

    def logits_with(**overrides):
        cfg = RecurrentGemmaConfig.from_pretrained(str(out_dir))
        for k, v in overrides.items():
            setattr(cfg, k, v)
        m = RecurrentGemmaForCausalLM.from_pretrained(str(out_dir), config=cfg, dtype=torch.float32,
                                                      attn_implementation="eager").eval()
        return logits_of(m, input_ids)

    base = res["logits"]
    # Each mechanism must move the logits, or the goldens would not test it.
    checks["max |logits - logits with attention_window_size=4096|"] = float(
        (base - logits_with(attention_window_size=4096)).abs().max())
    checks["max |logits - logits with logits_soft_cap=1e9|"] = float(
        (base - logits_with(logits_soft_cap=1e9)).abs().max())
    if "google" in res:
        g = res["google"]
        W = spec["config"]["attention_window_size"]
        checks[f"max |transformers logits - Google Griffin logits (window {W - 1})|"] = float(
            (base - g["logits"]).abs().max())
        checks[f"max |transformers logits - Google Griffin logits (window {W}, as named)|"] = float(
            (base - g["logits_window_as_named"]).abs().max())
        checks["max |transformers cached greedy steps - Google cached steps|"] = float(
            (res["greedy_raw_logits"] - g["cached_steps"]).abs().max())
    return checks


def make_one(spec: dict, vocab_tok: int, tok_sp, date: str) -> dict:
    name, out_dir = spec["name"], OUT_ROOT / spec["name"]
    seq0 = ([2] + tok_sp.encode(SEQ0_TEXT, out_type=int))[:SEQ_LEN]
    prompt = ([2] + tok_sp.encode(PROMPT_TEXT, out_type=int))[:PROMPT_LEN]
    rejected = []
    for attempt in range(MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        input_ids, prompt_t = seeded_inputs(seed, seq0, prompt, vocab_tok)
        model = RecurrentGemmaForCausalLM(build_config(spec)).eval()
        redraw_parameters(model, seed, INIT)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            loaded = load_fp32_eager(RecurrentGemmaForCausalLM, Path(tmp))
            res = evaluate(loaded, input_ids, prompt_t)
            ok, problems = check_ok(res, vocab_tok, MIN_MARGIN)
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
            if spec["google"]:
                res["google"] = google_outputs(loaded, input_ids, prompt_t, res["greedy_ids"])
        break
    else:
        raise RuntimeError(f"{name}: no acceptable seed in {MAX_ATTEMPTS} attempts")

    checks = run_checks(spec, out_dir, input_ids, res)
    arrays = {
        "input_ids": input_ids.numpy().astype(np.int64),
        "logits": res["logits"].numpy().astype(np.float32),
        "prompt_ids": np.asarray(prompt, dtype=np.int64),
        "greedy_ids": res["greedy_ids"].numpy().astype(np.int64),
        "greedy_raw_logits": res["greedy_raw_logits"].numpy().astype(np.float32),
        "greedy_margins": res["greedy_margins"].numpy().astype(np.float32),
        "residual_stream": res["residual_stream"].numpy().astype(np.float32),
    }
    if "google" in res:
        arrays["google_logits"] = res["google"]["logits"].numpy().astype(np.float32)
        arrays["google_cached_steps"] = res["google"]["cached_steps"].numpy().astype(np.float32)
    save_npz_deterministic(out_dir / "golden.npz", arrays)
    write_provenance(spec, out_dir, seed, rejected, checks, arrays, res, date)
    return dict(name=name, seed=seed, checks=checks, min_margin=float(res["greedy_margins"].min()))


def write_provenance(spec, out_dir, seed, rejected, checks, arrays, res, date):
    from safetensors import safe_open

    with safe_open(str(out_dir / "model.safetensors"), "np") as f:
        keys = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    W = spec["config"]["attention_window_size"]
    lines = [
        f"# {spec['name']}", "",
        "Tiny random RecurrentGemma checkpoint (`RecurrentGemmaForCausalLM`) with golden outputs from",
        "Hugging Face transformers" + (" and from Google's `recurrentgemma` 1.0.1 (`recurrentgemma.torch.Griffin`,"
                                       " the same weights), both" if spec["google"] else "")
        + " independent of gemma-ref.", "",
        "## Provenance", "",
        f"- generated: {date}",
        f"- command: `RECURRENTGEMMA_PATH=DIR python scripts/make_tiny_goldens_recurrent_gemma.py {spec['name']}`"
        " (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"sentencepiece {spm.__version__}, python {sys.version.split()[0]}"
        + (", recurrentgemma 1.0.1 (torch modules; einops 0.8.2, jaxtyping 0.3.11, typeguard 2.13.3)"
           if spec["google"] else ""),
        "- attn_implementation=\"eager\", float32, CPU, torch.set_num_threads(1)",
        f"- seed: {seed} (`torch.manual_seed` before the model is built, so transformers' init of "
        f"recurrent_param is seeded; other parameters re-drawn with `torch.Generator().manual_seed({seed})`, "
        f"sequence 1 from `numpy.random.default_rng({seed})`)",
        f"- re-draw: {json.dumps(INIT, sort_keys=True)} (see redraw_parameters in the script)",
        f"- {len(rejected)} earlier seed(s) rejected" + (
            ": " + "; ".join(f"{s}: {', '.join(p)}" for s, p in rejected) if rejected else ""),
        "- weights saved in float32; tokenizer.model: copy of `tests/data/tokenizer/tiny.model`", "",
        "## Config", "", "```json", json.dumps(spec["config"], indent=1), "```", "",
        "## Golden contents (golden.npz)", "", "| key | shape | dtype |", "| --- | --- | --- |",
    ]
    lines += [f"| `{k}` | {list(v.shape)} | {v.dtype} |" for k, v in arrays.items()]
    lines += [
        "",
        f"- logits: transformers, one full forward per row, no cache; after the logits softcap "
        f"({spec['config']['logits_soft_cap']}).",
        f"- greedy: `model.generate(prompt, do_sample=False, max_new_tokens={NEW_TOKENS}, "
        f"min_new_tokens={NEW_TOKENS}, use_cache=True)`; each token checked to be the argmax of the raw "
        "logits (`greedy_raw_logits`, transformers' cached steps: its recurrent state and conv state), and "
        "a no-cache forward over prompt + greedy gives the same argmaxes.",
        f"- min greedy margin: {float(res['greedy_margins'].min()):.4f}; greedy_ids: {res['greedy_ids'].tolist()}",
        "- residual_stream [L+1, T, D], row 0: entry 0 the input of layer 0 (embeddings times transformers' "
        "bfloat16 normalizer), entry i the output of layer i-1 (forward hooks on the decoder layers).",
    ]
    if spec["google"]:
        lines += [
            f"- google_logits: `recurrentgemma.torch.Griffin` (gradient_checkpointing=False) on the same weights "
            f"(names and layouts mapped by google_state_dict), full forward of input_ids with segment_pos "
            f"0..T-1, **attention_window_size {W - 1}**: Google's window W lets a query see W + 1 keys "
            f"(distances 0..W), transformers' W keys (0..W-1), so Google's {W - 1} is transformers' {W} "
            "(see Checks: the logits differ at the window as named).",
            "- google_cached_steps: the same Griffin, the prompt in one call, then transformers' greedy tokens "
            "one at a time through Griffin's cache (RG-LRU state, conv1d state, ring of keys/values).",
        ]
    lines += ["", "## Checks", ""]
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
