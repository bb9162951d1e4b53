#!/usr/bin/env python3
"""Build tiny random Gemma checkpoints and golden outputs with Hugging Face transformers.

For every checkpoint below this writes ``tests/data/tiny/<name>/``:

  config.json, generation_config.json, model.safetensors   (save_pretrained, safetensors)
  tokenizer.model                                           (copy of tests/data/tokenizer/tiny.model)
  golden.npz                                                (see tests/data/tiny/README.md)
  PROVENANCE.md

The goldens come from an implementation independent of gemma-ref: transformers
in float32 with attn_implementation="eager", CPU, one thread.

Usage (from the repository root):

    pip install torch==2.13.0 transformers sentencepiece safetensors numpy
    python scripts/make_tiny_tokenizer.py   # only if tests/data/tokenizer/tiny.model is missing
    python scripts/make_tiny_goldens.py

Rerunning gives byte-identical files (the date in PROVENANCE.md is taken from
SOURCE_DATE_EPOCH when set, otherwise it is today's UTC date).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch
import transformers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3Config,
    Gemma3ForCausalLM,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    Gemma4AudioConfig,
    Gemma4Config,
    Gemma4ForCausalLM,
    Gemma4ForConditionalGeneration,
    Gemma4TextConfig,
    Gemma4VisionConfig,
    GemmaConfig,
    GemmaForCausalLM,
    SiglipVisionConfig,
)

ROOT = Path(__file__).resolve().parent.parent
OUT_ROOT = ROOT / "tests" / "data" / "tiny"
TOKENIZER_MODEL = ROOT / "tests" / "data" / "tokenizer" / "tiny.model"

SEQ_LEN = 24  # T: longer than the sliding window (8)
PROMPT_LEN = 6  # P
NEW_TOKENS = 32  # N
MIN_MARGIN = 2e-2  # default required top1-top2 margin along the greedy path
MIN_DISTINCT = 8  # required number of distinct generated tokens
MAX_ATTEMPTS = 100

SEQ0_TEXT = (
    "The quick brown fox jumps over the lazy dog. Le renard brun rapide saute "
    "par-dessus le chien paresseux. def f(x): return x * 2"
)
PROMPT_TEXT = "Once upon a time there was"

SLIDING = "sliding_attention"
FULL = "full_attention"

GEMMA3_ROPE = {
    FULL: {"rope_type": "linear", "factor": 8.0, "rope_theta": 1_000_000.0},
    SLIDING: {"rope_type": "default", "rope_theta": 10_000.0},
}
GEMMA3_LAYER_TYPES = [SLIDING, SLIDING, FULL, SLIDING, FULL, SLIDING]

# name -> spec.  "init" holds the std of the re-drawn parameters:
#   emb: embedding rows; proj: gain for Linear weights (std = gain / sqrt(fan_in));
#   qk: gain for q_proj/k_proj (defaults to proj); norm: std of RMSNorm weights
#   (the norm multiplies by 1 + w); final_norm_mean / post_norm_mean: mean of the
#   final norm / Gemma 2-3 post-attention and post-feedforward norm weights (default 0).
#   Without them the sqrt(hidden)-scaled embedding dominates the residual stream and
#   tied-embedding models just repeat the last token.
SPECS = [
    dict(
        name="gemma1-mqa",
        arch="gemma",
        seed=1000,
        dtype="float32",
        config=dict(
            hidden_size=64,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
        ),
        init=dict(emb=0.2, proj=2.5, norm=0.5),
    ),
    dict(
        name="gemma1-gqa",
        arch="gemma",
        seed=2000,
        dtype="float32",
        config=dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        ),
        init=dict(emb=0.2, proj=2.5, norm=0.5),
    ),
    dict(
        name="gemma1-mha-bf16",
        arch="gemma",
        seed=3000,
        dtype="bfloat16",
        config=dict(
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            head_dim=16,
        ),
        init=dict(emb=0.2, proj=2.5, norm=0.5),
    ),
    dict(
        name="gemma2-gqa",
        arch="gemma2",
        seed=4000,
        dtype="float32",
        config=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            layer_types=[SLIDING, FULL, SLIDING, FULL],
            attn_logit_softcapping=5.0,
            final_logit_softcapping=3.0,
        ),
        init=dict(emb=0.1, proj=2.0, qk=2.5, norm=0.5, post_norm_mean=1.0, final_norm_mean=1.0),
        # tanh saturation under final_logit_softcapping=3.0 compresses the top logits
        min_margin=0.015,
    ),
    dict(
        name="gemma3-mqa",
        arch="gemma3",
        seed=5000,
        dtype="float32",
        config=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            layer_types=GEMMA3_LAYER_TYPES,
            rope_parameters=GEMMA3_ROPE,
            # Gemma 3 ignores this (Gemma3Attention never passes it as softcap);
            # set to prove an implementation ignores it as well.
            attn_logit_softcapping=5.0,
        ),
        init=dict(emb=0.1, proj=2.0, norm=0.5, post_norm_mean=1.0, final_norm_mean=2.0),
    ),
    dict(
        name="gemma3-gqa",
        arch="gemma3",
        seed=6000,
        dtype="float32",
        old_rope_spelling=True,
        config=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=6,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=24,
            sliding_window=8,
            layer_types=GEMMA3_LAYER_TYPES,
            rope_parameters=GEMMA3_ROPE,
        ),
        init=dict(emb=0.1, proj=2.0, norm=0.5, post_norm_mean=1.0, final_norm_mean=2.0),
    ),
    dict(
        name="gemma3-multimodal",
        arch="gemma3mm",
        seed=7000,
        dtype="float32",
        extra_vocab=8,  # like 262208 vs 262144 in the real 4B
        config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            query_pre_attn_scalar=20,
            sliding_window=8,
            layer_types=[SLIDING, SLIDING, FULL],
            rope_parameters=GEMMA3_ROPE,
        ),
        vision=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            vision_use_head=False,
        ),
        mm=dict(mm_tokens_per_image=4),
        init=dict(emb=0.1, proj=2.0, norm=0.5, post_norm_mean=1.0, final_norm_mean=2.0),
    ),
    # Gemma 4. Its norms multiply by w (not 1 + w): norm_mean centres them on 1.
    # rope_parameters are transformers' Gemma 4 defaults: sliding layers default RoPE
    # (theta 1e4), full layers proportional RoPE (theta 1e6, the first 0.25 of the pairs).
    dict(
        name="gemma4-ple-shared",
        arch="gemma4",
        seed=8000,
        dtype="float32",
        config=dict(
            hidden_size=48,
            intermediate_size=64,
            num_hidden_layers=5,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            global_head_dim=32,  # full layers: bigger heads
            sliding_window=8,
            layer_types=[SLIDING, FULL, SLIDING, SLIDING, FULL],
            hidden_size_per_layer_input=8,  # PLE
            vocab_size_per_layer_input=512,
            num_kv_shared_layers=2,  # layers 3 (sliding) and 4 (full) reuse layers 2 and 1
            use_double_wide_mlp=True,  # ... with MLPs of width 128
            final_logit_softcapping=30.0,
        ),
        init=dict(emb=0.1, proj=2.0, norm=0.3, norm_mean=1.0, final_norm_mean=2.0, scalar=0.3),
    ),
    dict(
        name="gemma4-moe-kv",
        arch="gemma4",
        seed=9000,
        dtype="float32",
        config=dict(
            hidden_size=48,
            intermediate_size=32,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            global_head_dim=32,
            num_global_key_value_heads=1,  # full layers: 1 kv head (with attention_k_eq_v)
            attention_k_eq_v=True,  # full layers: no v_proj, V = raw K projection
            sliding_window=8,
            layer_types=[SLIDING, FULL, SLIDING, FULL],
            enable_moe_block=True,
            num_experts=6,
            top_k_experts=2,
            moe_intermediate_size=24,
            hidden_size_per_layer_input=0,
            final_logit_softcapping=5.0,  # bites at these logit sizes
        ),
        init=dict(emb=0.1, proj=2.0, norm=0.3, norm_mean=1.0, final_norm_mean=2.0, scalar=0.3),
    ),
    dict(
        name="gemma4-multimodal",
        arch="gemma4mm",
        seed=10000,
        dtype="float32",
        hub_spelling=True,  # config.json says global_head_dim, as the Hub files do
        extra_vocab=8,  # image/audio/video and their begin/end tokens live here
        config=dict(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=16,
            global_head_dim=32,
            sliding_window=8,
            layer_types=[SLIDING, FULL, SLIDING, FULL],
            hidden_size_per_layer_input=8,
            vocab_size_per_layer_input=520,
            num_kv_shared_layers=1,
            final_logit_softcapping=30.0,
        ),
        vision=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=2, head_dim=16, patch_size=4, pooling_kernel_size=2,
                    position_embedding_size=64),
        audio=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                   subsampling_conv_channels=[8, 4], output_proj_dims=32),
        init=dict(emb=0.1, proj=2.0, norm=0.3, norm_mean=1.0, final_norm_mean=2.0, scalar=0.3),
    ),
]


# --------------------------------------------------------------------------- helpers


def provenance_date() -> str:
    sde = os.environ.get("SOURCE_DATE_EPOCH")
    if sde:
        return _dt.datetime.fromtimestamp(int(sde), tz=_dt.timezone.utc).strftime("%Y-%m-%d")
    return _dt.datetime.now(tz=_dt.timezone.utc).strftime("%Y-%m-%d")


def save_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez (uncompressed) but with fixed zip timestamps, so reruns are identical."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in arrays:
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arrays[key]), allow_pickle=False)


def text_config_of(model):
    cfg = model.config
    return cfg.text_config if hasattr(cfg, "text_config") else cfg


def build_config(spec: dict, vocab_size: int):
    common = dict(
        vocab_size=vocab_size + spec.get("extra_vocab", 0),
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
        tie_word_embeddings=True,
        attention_bias=False,
    )
    cfg = dict(common, **copy.deepcopy(spec["config"]))
    arch = spec["arch"]
    if arch == "gemma":
        cfg["hidden_act"] = "gelu_pytorch_tanh"
        return GemmaConfig(**cfg)
    if arch == "gemma2":
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        return Gemma2Config(**cfg)
    if arch == "gemma3":
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        return Gemma3TextConfig(**cfg)
    if arch == "gemma3mm":
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        text = Gemma3TextConfig(**cfg)
        vision = SiglipVisionConfig(**spec["vision"])
        tok_v = vocab_size
        return Gemma3Config(
            text_config=text,
            vision_config=vision,
            image_token_index=tok_v,  # first padding row, like 262144 in the real models
            boi_token_index=tok_v + 1,
            eoi_token_index=tok_v + 2,
            tie_word_embeddings=True,
            **spec["mm"],
        )
    if arch == "gemma4":
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        return Gemma4TextConfig(**cfg)
    if arch == "gemma4mm":
        cfg["hidden_activation"] = "gelu_pytorch_tanh"
        tok_v = vocab_size  # the padding rows hold the multimodal tokens, as in the real models
        return Gemma4Config(
            text_config=Gemma4TextConfig(**cfg),
            vision_config=Gemma4VisionConfig(**spec["vision"]),
            audio_config=Gemma4AudioConfig(**spec["audio"]),
            image_token_id=tok_v, boi_token_id=tok_v + 1, eoi_token_id=tok_v + 2,
            audio_token_id=tok_v + 3, boa_token_id=tok_v + 4, eoa_token_index=tok_v + 5,
            video_token_id=tok_v + 6, tie_word_embeddings=True,
        )
    raise ValueError(arch)


MODEL_CLASSES = {
    "gemma": GemmaForCausalLM,
    "gemma2": Gemma2ForCausalLM,
    "gemma3": Gemma3ForCausalLM,
    "gemma3mm": Gemma3ForConditionalGeneration,
    "gemma4": Gemma4ForCausalLM,
    "gemma4mm": Gemma4ForConditionalGeneration,
}


@torch.no_grad()
def redraw_parameters(model: torch.nn.Module, seed: int, init: dict) -> None:
    """Re-draw every parameter so that nothing is zero / identity (HF inits RMSNorm to 0)."""
    gen = torch.Generator().manual_seed(seed)
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():  # tied lm_head is not listed twice
        mod_name, _, pname = name.rpartition(".")
        mod = modules[mod_name]
        cls = type(mod).__name__

        def normal(std, mean=0.0):
            return torch.randn(p.shape, generator=gen, dtype=torch.float32) * std + mean

        if "RMSNorm" in cls:
            mean = init.get("norm_mean", 0.0)
            if mod_name.endswith("language_model.norm") or mod_name == "model.norm":
                mean = init.get("final_norm_mean", 0.0)
            elif mod_name.endswith(("post_attention_layernorm", "post_feedforward_layernorm")):
                mean = init.get("post_norm_mean", 0.0)
            val = normal(init["norm"], mean)
        elif isinstance(mod, torch.nn.LayerNorm):  # SigLIP vision tower
            val = normal(0.1, 1.0) if pname == "weight" else normal(0.05)
        elif isinstance(mod, torch.nn.Embedding):
            val = normal(init["emb"]) if "embed_tokens" in mod_name else normal(0.1)
        elif pname == "mm_input_projection_weight":  # [vision_hidden, text_hidden], used as x @ W
            val = normal(init["proj"] / math.sqrt(p.shape[0]))
        elif cls == "Gemma4TextRouter" and pname in ("scale", "per_expert_scale"):  # multipliers
            val = normal(init["scalar"], 1.0)
        elif cls == "Gemma4TextExperts":  # [E, out, in]: fan-in is the last axis
            val = normal(init["proj"] / math.sqrt(p.shape[-1]))
        elif p.ndim >= 2:  # Linear [out, in] or Conv2d [out, in, k, k]
            gain = init["proj"]
            if mod_name.endswith(("q_proj", "k_proj")):
                gain = init.get("qk", gain)
            val = normal(gain / math.sqrt(int(np.prod(p.shape[1:]))))
        else:  # biases
            val = normal(0.05)
        p.copy_(val.to(p.dtype))
    for name, b in model.named_buffers():  # Gemma 4: each layer's output multiplier (saved)
        if name.endswith("layer_scalar"):
            b.copy_((torch.randn(b.shape, generator=gen) * init["scalar"] + 1.0).to(b.dtype))


def load_fp32_eager(cls, path: Path):
    model = cls.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    return model


def forward_logits(model, ids: torch.Tensor, **kw):
    out = model(input_ids=ids, use_cache=False, **kw)
    return out


@torch.no_grad()
def greedy(model, prompt: torch.Tensor):
    out = model.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=NEW_TOKENS,
        min_new_tokens=NEW_TOKENS,
        use_cache=True,
        return_dict_in_generate=True,
        output_logits=True,
        pad_token_id=0,
    )
    seq = out.sequences[0, prompt.shape[1] :]
    raw = torch.stack([x[0] for x in out.logits])  # [N, V] raw (unprocessed) logits
    return seq, raw


def margins_of(logits: torch.Tensor) -> torch.Tensor:
    top2 = torch.topk(logits.float(), 2, dim=-1).values
    return top2[..., 0] - top2[..., 1]


def evaluate(model, input_ids: torch.Tensor, prompt: torch.Tensor):
    """All golden quantities from one fp32 eager model."""
    res = {}
    with torch.no_grad():
        logits = torch.stack([forward_logits(model, input_ids[i : i + 1]).logits[0] for i in range(2)])
        res["logits"] = logits
        # hidden states of sequence 0, and the pre-final-norm output of the last layer
        captured = {}
        last_layer = get_layers(model)[-1]
        hook = last_layer.register_forward_hook(
            lambda m, a, o: captured.__setitem__("h", o[0] if isinstance(o, tuple) else o)
        )
        out0 = forward_logits(model, input_ids[:1], output_hidden_states=True)
        hook.remove()
        res["hidden_states"] = torch.stack([h[0] for h in out0.hidden_states])
        res["hidden_states_last_prenorm"] = captured["h"][0]
        if (out0.logits - logits[:1]).abs().max() != 0:
            raise RuntimeError("forward with output_hidden_states changed the logits")
        seq, raw = greedy(model, prompt)
        res["greedy_ids"] = seq
        res["greedy_raw_logits"] = raw
        res["greedy_margins"] = margins_of(raw)
        # no-cache full forward over prompt + generated tokens, for cross-checking
        full = torch.cat([prompt[0], seq])[None]
        full_logits = forward_logits(model, full).logits[0]
        res["full_check_logits"] = full_logits[prompt.shape[1] - 1 : -1]
    return res


def get_layers(model):
    if hasattr(model, "model") and hasattr(model.model, "language_model"):
        return model.model.language_model.layers
    return model.model.layers


def check_ok(res: dict, vocab_tok: int, min_margin: float) -> tuple[bool, list[str]]:
    problems = []
    seq = res["greedy_ids"]
    raw = res["greedy_raw_logits"]
    if not torch.equal(raw.argmax(-1), seq):
        problems.append("greedy token != argmax of raw logits (eos suppressed by min_new_tokens, or a tie)")
    if float(res["greedy_margins"].min()) < min_margin:
        problems.append(f"min greedy margin {float(res['greedy_margins'].min()):.2e} < {min_margin}")
    if len(set(seq.tolist())) < MIN_DISTINCT:
        problems.append(f"only {len(set(seq.tolist()))} distinct greedy tokens")
    if int(seq.max()) >= vocab_tok:
        problems.append("greedy path picked a padding-row token (>= tokenizer vocab)")
    if not torch.equal(res["full_check_logits"].argmax(-1), seq):
        problems.append("no-cache full forward disagrees with cached greedy path")
    return (not problems), problems


def install_checkpoint(saved: Path, out_dir: Path) -> None:
    """out_dir becomes the accepted checkpoint `saved` (replacing any older one), plus the tokenizer."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(saved, out_dir)
    shutil.copy(TOKENIZER_MODEL, out_dir / "tokenizer.model")


def seeded_inputs(seed: int, seq0: list[int], prompt: list[int], vocab_tok: int):
    """torch.manual_seed(seed), then the golden inputs: [seq0, bos + random ids] and the prompt.

    -> input_ids [2, SEQ_LEN], prompt [1, PROMPT_LEN] (torch.long)
    """
    torch.manual_seed(seed)
    seq1 = [2] + np.random.default_rng(seed).integers(7, vocab_tok, size=SEQ_LEN - 1).tolist()
    return torch.tensor([seq0, seq1], dtype=torch.long), torch.tensor([prompt], dtype=torch.long)


# --------------------------------------------------------------------------- old rope spelling


def rewrite_old_rope_spelling(cfg_path: Path) -> dict:
    cfg = json.loads(cfg_path.read_text())
    rp = cfg.pop("rope_parameters")
    full, sliding = rp[FULL], rp[SLIDING]
    scaling = {k: v for k, v in full.items() if k != "rope_theta"}
    cfg["rope_theta"] = full["rope_theta"]
    cfg["rope_local_base_freq"] = sliding["rope_theta"]
    cfg["rope_scaling"] = scaling
    cfg = dict(sorted(cfg.items()))
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


def rewrite_gemma4_hub_spelling(cfg_path: Path) -> dict:
    """Gemma 4's per-layer shapes as the Hub's config.json files state them.

    transformers 5.24 saves `per_layer_config: {"1": {"head_dim": 32}, ...}`; the Hub
    files (google/gemma-4-*) have `global_head_dim` and `num_global_key_value_heads`
    in text_config instead, which transformers turns into the same per-layer overrides.
    """
    cfg = json.loads(cfg_path.read_text())
    text = cfg.get("text_config", cfg)
    overrides = text.pop("per_layer_config")
    full = [i for i, t in enumerate(text["layer_types"]) if t == FULL]
    shapes = {json.dumps(overrides.get(k, {}), sort_keys=True) for k in overrides} | (
        {"{}"} if len(overrides) < len(full) else set())
    if len(shapes) != 1 or any(int(k) not in full for k in overrides):
        raise RuntimeError(f"per_layer_config {overrides} is not one shape for the full layers")
    one = json.loads(shapes.pop())
    text["global_head_dim"] = one.get("head_dim", text["head_dim"])
    text["num_global_key_value_heads"] = one.get("num_key_value_heads")
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return cfg


@torch.no_grad()
def apply_and_verify_hub_spelling(cls, out_dir, input_ids, res) -> dict:
    cfg_path = out_dir / "config.json"
    saved = cfg_path.read_text()
    rewrite_gemma4_hub_spelling(cfg_path)
    reloaded = load_fp32_eager(cls, out_dir)
    logits = torch.stack([reloaded(input_ids=input_ids[i : i + 1], use_cache=False).logits[0] for i in range(2)])
    diff = float((logits - res["logits"]).abs().max())
    if diff != 0.0:
        print(f"  Hub spelling NOT equivalent (diff {diff}); reverting")
        cfg_path.write_text(saved)
        return {"gemma4 Hub spelling": f"NOT equivalent (diff {diff}); kept per_layer_config"}
    return {"gemma4 Hub spelling (global_head_dim): max |logits(reloaded) - logits(per_layer_config)|": diff}


# --------------------------------------------------------------------------- main work


def make_one(spec: dict, vocab_tok: int, tok_sp, date: str) -> dict:
    name = spec["name"]
    out_dir = OUT_ROOT / name
    cls = MODEL_CLASSES[spec["arch"]]

    seq0 = [2] + tok_sp.encode(SEQ0_TEXT, out_type=int)
    if len(seq0) < SEQ_LEN:
        raise RuntimeError(f"SEQ0_TEXT too short: {len(seq0)} tokens")
    seq0 = seq0[:SEQ_LEN]
    prompt = ([2] + tok_sp.encode(PROMPT_TEXT, out_type=int))[:PROMPT_LEN]
    if len(prompt) != PROMPT_LEN:
        raise RuntimeError(f"PROMPT_TEXT gives {len(prompt)} tokens")

    attempts = []
    for attempt in range(MAX_ATTEMPTS):
        seed = spec["seed"] + attempt
        input_ids, prompt_t = seeded_inputs(seed, seq0, prompt, vocab_tok)

        config = build_config(spec, vocab_tok)
        config._attn_implementation = "eager"
        model = cls(config)
        model.eval()
        redraw_parameters(model, seed, spec["init"])

        with tempfile.TemporaryDirectory() as tmp:
            # Save in the target dtype, then load back in float32 (so bf16 goldens use bf16 weights)
            save_model = model
            if spec["dtype"] == "bfloat16":
                save_model = model.to(torch.bfloat16)
            save_model.save_pretrained(tmp, safe_serialization=True)
            loaded = load_fp32_eager(cls, Path(tmp))
            res = evaluate(loaded, input_ids, prompt_t)
            ok, problems = check_ok(res, vocab_tok, spec.get("min_margin", MIN_MARGIN))
            attempts.append((seed, problems))
            print(
                f"  {name} seed {seed}: min margin {float(res['greedy_margins'].min()):.4f}, "
                f"distinct {len(set(res['greedy_ids'].tolist()))}, "
                f"{'OK' if ok else 'REJECT: ' + '; '.join(problems)}",
                flush=True,
            )
            if not ok:
                continue
            install_checkpoint(Path(tmp), out_dir)
        break
    else:
        raise RuntimeError(f"{name}: no acceptable seed in {MAX_ATTEMPTS} attempts")


    checks = run_checks(spec, cls, out_dir, loaded, input_ids, res)

    if spec.get("old_rope_spelling"):
        checks.update(apply_and_verify_old_spelling(cls, out_dir, input_ids, res, loaded))
    if spec.get("hub_spelling"):
        checks.update(apply_and_verify_hub_spelling(cls, out_dir, input_ids, res))

    arrays = {
        "input_ids": input_ids.numpy().astype(np.int64),
        "logits": res["logits"].numpy().astype(np.float32),
        "prompt_ids": np.asarray(prompt, dtype=np.int64),
        "greedy_ids": res["greedy_ids"].numpy().astype(np.int64),
        "greedy_margins": res["greedy_margins"].numpy().astype(np.float32),
        "hidden_states": res["hidden_states"].numpy().astype(np.float32),
        "hidden_states_last_prenorm": res["hidden_states_last_prenorm"].numpy().astype(np.float32),
    }
    save_npz_deterministic(out_dir / "golden.npz", arrays)

    from safetensors import safe_open

    with safe_open(str(out_dir / "model.safetensors"), "np") as f:
        keys = {k: (list(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    n_params = sum(int(np.prod(s)) for s, _ in keys.values())

    info = dict(
        name=name,
        seed=seed,
        rejected_seeds=[(s, p) for s, p in attempts if p],
        n_params=n_params,
        keys=keys,
        checks=checks,
        arrays={k: (list(v.shape), str(v.dtype)) for k, v in arrays.items()},
        min_margin=float(res["greedy_margins"].min()),
        logits_std=float(res["logits"].std()),
        greedy=res["greedy_ids"].tolist(),
    )
    write_provenance(spec, out_dir, info, loaded, date)
    return info


@torch.no_grad()
def run_checks(spec, cls, out_dir, model, input_ids, res) -> dict:
    checks = {}
    tcfg = text_config_of(model)
    # cache vs no-cache consistency of HF itself
    checks["max |cached greedy step logits - no-cache full forward logits|"] = float(
        (res["greedy_raw_logits"] - res["full_check_logits"]).abs().max()
    )
    checks["logits std"] = float(res["logits"].std())
    checks["logits max |x|"] = float(res["logits"].abs().max())

    def logits_with(**overrides):
        # Override the (text) config BEFORE building the model: attention modules copy
        # e.g. attn_logit_softcapping at construction time.
        cfg = cls.config_class.from_pretrained(str(out_dir))
        tcfg_o = cfg.text_config if hasattr(cfg, "text_config") else cfg
        for k, v in overrides.items():
            setattr(tcfg_o, k, v)
        m = cls.from_pretrained(str(out_dir), config=cfg, dtype=torch.float32, attn_implementation="eager")
        m.eval()
        for k, v in overrides.items():
            assert getattr(text_config_of(m), k) == v, k
        return torch.stack([m(input_ids=input_ids[i : i + 1], use_cache=False).logits[0] for i in range(2)])

    _, loading_info = cls.from_pretrained(
        str(out_dir), dtype=torch.float32, attn_implementation="eager", output_loading_info=True
    )
    checks["from_pretrained loading_info"] = json.dumps(
        {k: sorted(v) if isinstance(v, (set, list)) else str(v) for k, v in loading_info.items() if v},
        sort_keys=True,
    ) or "{}"

    base = res["logits"]
    arch = spec["arch"]
    if arch == "gemma3mm":
        checks.update(check_hub_vision_layout(cls, out_dir, input_ids, base))
    if arch == "gemma2":
        no_attn_cap = logits_with(attn_logit_softcapping=None)
        checks["gemma2: max |logits - logits without attn softcap|"] = float((base - no_attn_cap).abs().max())
        no_final_cap = logits_with(final_logit_softcapping=None)
        checks["gemma2: max |logits before final softcap|"] = float(no_final_cap.abs().max())
        checks["gemma2: max |logits - logits without final softcap|"] = float((base - no_final_cap).abs().max())
        no_window = logits_with(sliding_window=4096)
        checks["gemma2: max |logits - logits with sliding_window=4096|"] = float((base - no_window).abs().max())
    if arch in ("gemma3", "gemma3mm"):
        if tcfg.attn_logit_softcapping is not None:
            other = logits_with(attn_logit_softcapping=None)
            checks["gemma3: max |logits - logits with attn_logit_softcapping=None| (must be 0: ignored)"] = float(
                (base - other).abs().max()
            )
        no_window = logits_with(sliding_window=4096)
        checks["gemma3: max |logits - logits with sliding_window=4096|"] = float((base - no_window).abs().max())
        m = load_fp32_eager(cls, out_dir)
        rp = copy.deepcopy(text_config_of(m).rope_parameters)
        rp[FULL] = {"rope_type": "default", "rope_theta": rp[FULL]["rope_theta"]}
        text_config_of(m).rope_parameters = rp
        # rebuild rotary embedding with unscaled global rope
        rot = (m.model.language_model if hasattr(m.model, "language_model") else m.model).rotary_emb
        new_rot = type(rot)(text_config_of(m))
        if hasattr(m.model, "language_model"):
            m.model.language_model.rotary_emb = new_rot
        else:
            m.model.rotary_emb = new_rot
        unscaled = torch.stack([m(input_ids=input_ids[i : i + 1], use_cache=False).logits[0] for i in range(2)])
        checks["gemma3: max |logits - logits without linear rope scaling|"] = float((base - unscaled).abs().max())
    if arch in ("gemma4", "gemma4mm"):
        no_window = logits_with(sliding_window=4096)
        checks["gemma4: max |logits - logits with sliding_window=4096|"] = float((base - no_window).abs().max())
        if tcfg.enable_moe_block:
            every = logits_with(top_k_experts=tcfg.num_experts)
            checks["gemma4: max |logits - logits with every expert used (top_k = num_experts)|"] = float(
                (base - every).abs().max())
        from safetensors import safe_open

        with safe_open(str(out_dir / "model.safetensors"), "np") as f:
            scalars = [float(f.get_tensor(k)[0]) for k in sorted(f.keys()) if k.endswith("layer_scalar")]
        checks["gemma4: layer_scalar values in model.safetensors"] = json.dumps([round(x, 4) for x in scalars])
    return checks


@torch.no_grad()
def check_hub_vision_layout(cls, out_dir, input_ids, base) -> dict:
    """Load a temporary copy whose vision keys use the Hub layout `vision_tower.vision_model.*`."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(out_dir / "model.safetensors"))
    hub = {}
    for k, v in sd.items():
        if k.startswith("vision_tower."):
            k = "vision_tower.vision_model." + k[len("vision_tower.") :]
        hub[k] = v
    with tempfile.TemporaryDirectory() as tmp:
        for f in out_dir.iterdir():
            if f.name != "model.safetensors":
                shutil.copy(f, tmp)
        save_file(hub, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        m, info = cls.from_pretrained(
            tmp, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
        m.eval()
        logits = torch.stack([m(input_ids=input_ids[i : i + 1], use_cache=False).logits[0] for i in range(2)])
        vis = {k: float((v - sd[k.replace("vision_tower.vision_model.", "vision_tower.")]).abs().max())
               for k, v in [("vision_tower.vision_model.embeddings.patch_embedding.weight",
                             m.model.vision_tower.embeddings.patch_embedding.weight)]}
    missing = sorted(info.get("missing_keys", []))
    return {
        "hub vision layout (vision_tower.vision_model.*): max |logits diff|": float((logits - base).abs().max()),
        "hub vision layout: missing keys": json.dumps(missing),
        "hub vision layout: patch_embedding max |diff|": max(vis.values()),
    }


@torch.no_grad()
def apply_and_verify_old_spelling(cls, out_dir, input_ids, res, model_new) -> dict:
    cfg_path = out_dir / "config.json"
    new_text = cfg_path.read_text()
    rewrite_old_rope_spelling(cfg_path)
    reloaded = load_fp32_eager(cls, out_dir)
    logits = torch.stack(
        [reloaded(input_ids=input_ids[i : i + 1], use_cache=False).logits[0] for i in range(2)]
    )
    diff = float((logits - res["logits"]).abs().max())
    same_rope = text_config_of(reloaded).rope_parameters == text_config_of(model_new).rope_parameters
    if diff != 0.0 or not same_rope:
        print(f"  old rope spelling NOT equivalent (diff {diff}, same_rope {same_rope}); reverting")
        cfg_path.write_text(new_text)
        return {"old rope spelling": f"NOT equivalent (diff {diff}); kept new spelling"}
    return {
        "old rope spelling: max |logits(reloaded) - logits(new spelling)|": diff,
        "old rope spelling: rope_parameters after reload": json.dumps(
            text_config_of(reloaded).rope_parameters, sort_keys=True
        ),
    }


HIDDEN_STATES_DOC = """\
`hidden_states` is HF's `output_hidden_states=True` tuple for sequence 0, stacked: entry 0 is the
input of layer 0, i.e. the token embeddings already multiplied by sqrt(hidden_size) (the normalizer
is cast to the weight dtype first: here float32); entry i (1 <= i < L) is the residual stream after
decoder layer i-1; entry L is NOT the raw output of the last layer but `last_hidden_state`, i.e.
the output of the FINAL RMSNorm (transformers' capture_outputs replaces the last captured state by
last_hidden_state). The raw output of the last decoder layer (before the final norm) is stored
separately as `hidden_states_last_prenorm`."""


def write_provenance(spec, out_dir: Path, info: dict, model, date: str) -> None:
    cfg = json.loads((out_dir / "config.json").read_text())
    lines = [
        f"# {spec['name']}",
        "",
        "Tiny random Gemma checkpoint with golden outputs from Hugging Face transformers",
        "(an implementation independent of gemma-ref).",
        "",
        "## Provenance",
        "",
        f"- generated: {date}",
        "- command: `python scripts/make_tiny_goldens.py` (from the repository root)",
        f"- transformers {transformers.__version__}, torch {torch.__version__}, numpy {np.__version__}, "
        f"sentencepiece {spm.__version__}, python {sys.version.split()[0]}",
        f"- model class: `{type(model).__name__}`, attn_implementation=\"eager\", float32, CPU, "
        "torch.set_num_threads(1)",
        f"- seed: {info['seed']} (`torch.manual_seed({info['seed']})` before construction; parameters "
        f"re-drawn with `torch.Generator().manual_seed({info['seed']})`; sequence 1 from "
        f"`numpy.random.default_rng({info['seed']})`)",
        f"- re-draw stds: {json.dumps(spec['init'], sort_keys=True)} (emb: embedding rows; proj: "
        "Linear std = gain/sqrt(fan_in); qk: gain for q_proj/k_proj; norm: RMSNorm weight w, "
        "applied as x * (1 + w) (Gemma 1-3) or x * w (Gemma 4, drawn around norm_mean); scalar: "
        "std of Gemma 4's router scales and layer_scalar, drawn around 1)",
    ]
    if info["rejected_seeds"]:
        reasons: dict[str, int] = {}
        for _, probs in info["rejected_seeds"]:
            for pr in probs:
                key = pr.split(" (")[0]
                if pr.startswith("min greedy margin"):
                    key = "min greedy margin too small"
                elif pr.startswith("only"):
                    key = "too few distinct greedy tokens"
                reasons[key] = reasons.get(key, 0) + 1
        seeds = [s for s, _ in info["rejected_seeds"]]
        lines.append(
            f"- {len(seeds)} earlier seed(s) rejected ({seeds[0]}..{seeds[-1]}); reasons: "
            + ", ".join(f"{k} x{v}" for k, v in sorted(reasons.items()))
        )
    if spec["dtype"] == "bfloat16":
        lines += [
            "- weights saved in **bfloat16** (`model.to(torch.bfloat16).save_pretrained(...)`); "
            "goldens computed by loading that file with `dtype=torch.float32` (bf16 values upcast exactly)",
        ]
    else:
        lines.append("- weights saved in float32")
    lines += [
        "- tokenizer.model: copy of `tests/data/tokenizer/tiny.model` "
        f"(vocab {spm.SentencePieceProcessor(model_file=str(TOKENIZER_MODEL)).get_piece_size()})",
        "",
        "## Golden contents (golden.npz)",
        "",
        "| key | shape | dtype |",
        "| --- | --- | --- |",
    ]
    for k, (shape, dt) in info["arrays"].items():
        lines.append(f"| `{k}` | {shape} | {dt} |")
    lines += [
        "",
        f"- greedy: `model.generate(prompt_ids[None], do_sample=False, max_new_tokens={NEW_TOKENS}, "
        f"min_new_tokens={NEW_TOKENS}, use_cache=True)`; every greedy token was checked to be the argmax "
        "of the RAW logits (so the min_new_tokens eos suppression never changed a choice) and the "
        "no-cache full forward over prompt+greedy gives the same argmaxes.",
        f"- min greedy margin (top1 - top2 raw logit): {info['min_margin']:.4f}",
        f"- greedy_ids: {info['greedy']}",
        "",
        "### hidden_states convention",
        "",
        HIDDEN_STATES_DOC,
        "",
        "## Checks",
        "",
    ]
    for k, v in info["checks"].items():
        lines.append(f"- {k}: {v if isinstance(v, str) else format(v, '.6g')}")
    lines += ["", "## Config notes", ""]
    lines += config_notes(spec, cfg)
    lines += ["", "## model.safetensors keys", "", f"{info['n_params']} parameters.", "", "```"]
    for k, (shape, dt) in sorted(info["keys"].items()):
        lines.append(f"{k} {shape} {dt}")
    lines += ["```", ""]
    (out_dir / "PROVENANCE.md").write_text("\n".join(lines))


def config_notes(spec, cfg) -> list[str]:
    notes = []
    arch = spec["arch"]
    notes.append(
        "- tie_word_embeddings=true: there is no `lm_head.weight` in the file; logits = "
        "final_norm(h) @ embed_tokens.weight.T"
    )
    if arch == "gemma":
        notes.append(
            f"- head_dim={spec['config']['head_dim']}, hidden_size={spec['config']['hidden_size']}, "
            f"heads={spec['config']['num_attention_heads']}, kv_heads={spec['config']['num_key_value_heads']}; "
            "attention scaling head_dim**-0.5; rope theta 10000 (default)"
        )
    if arch == "gemma2":
        notes.append(
            "- layer_types alternate starting with sliding (layer 0 sliding); sliding_window=8; "
            "query_pre_attn_scalar=24 (scaling 24**-0.5, head_dim 16); attn softcap 5.0 applied to "
            "scaled scores before the mask; final softcap 3.0 on the logits"
        )
    if arch in ("gemma3", "gemma3mm"):
        notes.append(
            "- qk-norm (q_norm/k_norm RMSNorm over head_dim, 1+w); sandwich norms; "
            f"query_pre_attn_scalar={spec['config']['query_pre_attn_scalar']} (scaling = its **-0.5) "
            f"with head_dim {spec['config']['head_dim']}"
        )
        notes.append(
            "- rope: sliding layers default rope theta 1e4; full layers theta 1e6 with LINEAR scaling "
            "factor 8 (positions divided by 8, i.e. inv_freq / 8)"
        )
    if spec["name"] == "gemma3-mqa":
        notes.append(
            "- `attn_logit_softcapping: 5.0` is set in config.json ON PURPOSE: transformers' "
            "Gemma3Attention stores it but never passes `softcap=` to the attention function, so it is "
            "ignored (verified: logits identical with it set to null, see Checks)."
        )
    if arch in ("gemma3", "gemma3mm"):
        notes.append(
            "- config.json also carries `_sliding_window_pattern: 6` (written by transformers 5 from the "
            "default); it does NOT match `layer_types`, which is what transformers uses. Implementations "
            "must take the per-layer attention type from `layer_types` when present."
        )
    if spec.get("old_rope_spelling"):
        if "rope_scaling" in cfg:
            notes.append(
                "- config.json uses the OLD (Hub, transformers 4.x) rope spelling: `rope_theta` (global), "
                "`rope_local_base_freq` (sliding layers) and `rope_scaling` {rope_type linear, factor 8} "
                "(full-attention layers only). It was rewritten from the saved new spelling "
                "(`rope_parameters` per layer type) and transformers "
                f"{transformers.__version__} reloads it to identical rope_parameters and bit-identical logits."
            )
        else:
            notes.append("- old rope spelling was NOT equivalent in this transformers version; new spelling kept")
    if arch in ("gemma4", "gemma4mm"):
        text = cfg.get("text_config", cfg)
        notes.append(
            "- Gemma 4: RMSNorm scales by w (not 1 + w); v is RMS-normed without a weight; attention "
            "scaling 1.0 (no query_pre_attn_scalar); no attention softcap; final_logit_softcapping "
            f"{text['final_logit_softcapping']}; each layer's output times its `layer_scalar` (a saved "
            "buffer, re-drawn here so that it matters)"
        )
        notes.append(
            "- RoPE (transformers' Gemma 4 defaults): sliding layers default (theta 1e4, head_dim "
            f"{text['head_dim']}); full layers proportional, theta 1e6, partial_rotary_factor 0.25 of the "
            "head_dim/2 pairs rotate (the rest have inv_freq 0), exponent over the full-layer head_dim"
        )
        kinds = []
        if text.get("hidden_size_per_layer_input"):
            kinds.append(f"per-layer embeddings of width {text['hidden_size_per_layer_input']}")
        if text.get("num_kv_shared_layers"):
            kinds.append(f"the last {text['num_kv_shared_layers']} layer(s) reuse the K/V of the last earlier "
                         "layer of their type (no k_proj/v_proj/k_norm in the file)"
                         + (", with MLPs of width 2 x intermediate_size" if text.get("use_double_wide_mlp") else ""))
        if text.get("attention_k_eq_v"):
            kinds.append("attention_k_eq_v: full layers have no v_proj; V = v_norm(raw k_proj output)")
        if text.get("enable_moe_block"):
            kinds.append(f"MoE: {text['num_experts']} experts, top {text['top_k_experts']}, width "
                         f"{text['moe_intermediate_size']}, beside the dense MLP")
        notes.append("- " + "; ".join(kinds))
        if "per_layer_config" in text:
            notes.append(f"- per-layer shapes as transformers {transformers.__version__} saves them: "
                         f"`per_layer_config` {json.dumps(text['per_layer_config'], sort_keys=True)}")
        else:
            notes.append(
                f"- per-layer shapes in the Hub spelling: `global_head_dim` {text['global_head_dim']}, "
                f"`num_global_key_value_heads` {text['num_global_key_value_heads']} (rewritten from the "
                "saved `per_layer_config`; transformers reloads it to bit-identical logits, see Checks)")
    if arch == "gemma4mm":
        notes.append(
            "- Gemma4ForConditionalGeneration with a tiny vision and audio tower. Text vocab_size = "
            "tokenizer vocab + 8 rows, which hold image/boi/eoi/audio/boa/eoa/video ids (unused: the "
            "goldens are text-only). Keys: `model.language_model.*` (text), `model.vision_tower.*`, "
            "`model.embed_vision.*`, `model.audio_tower.*`, `model.embed_audio.*`; no lm_head (tied)."
        )
    if arch == "gemma3mm":
        notes.append(
            "- Gemma3ForConditionalGeneration. Text vocab_size = tokenizer vocab + 8 padding rows; "
            "logits are full width (slice to the tokenizer vocab). Goldens are text-only "
            "(input_ids only, no pixel_values, no token_type_ids). image_token_index = tokenizer vocab "
            "(first padding row), boi/eoi = +1/+2 (unused). Gemma3ForConditionalGeneration does NOT "
            "apply final_logit_softcapping (Gemma3ForCausalLM does); it is null here anyway."
        )
        notes.append(
            f"- key layout: in memory transformers {transformers.__version__} names the weights "
            "`model.language_model.*`, `model.vision_tower.*`, `model.multi_modal_projector.*` (+ tied "
            "`lm_head.weight`), but save_pretrained (save_original_format=True, the default) reverts the "
            "llava-style renaming, so model.safetensors uses `language_model.model.*` (text), "
            "`vision_tower.*` and `multi_modal_projector.*`, with no `lm_head`. NOTE: the Hub checkpoints "
            "(e.g. gemma-3-4b-it) have `vision_tower.vision_model.*`; transformers 5 drops the "
            "`vision_model.` level of SiglipVisionModel and does not restore it on save. It loads both "
            "layouts (see Checks: a copy with `vision_tower.vision_model.` keys loads to identical logits)."
        )
    return notes


def main() -> int:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()
    if not TOKENIZER_MODEL.exists():
        print(f"missing {TOKENIZER_MODEL}; run scripts/make_tiny_tokenizer.py first", file=sys.stderr)
        return 1
    tok_sp = spm.SentencePieceProcessor(model_file=str(TOKENIZER_MODEL))
    vocab_tok = tok_sp.get_piece_size()
    date = provenance_date()
    OUT_ROOT.mkdir(parents=True, exist_ok=True)

    only = set(sys.argv[1:])
    infos = []
    for spec in SPECS:
        if only and spec["name"] not in only:
            continue
        print(f"== {spec['name']}", flush=True)
        infos.append(make_one(spec, vocab_tok, tok_sp, date))

    print()
    print(f"{'name':20} {'params':>8} {'T':>3} {'min margin':>10} {'logit std':>9}  seed  issues")
    for info in infos:
        issues = []
        if info["rejected_seeds"]:
            issues.append(f"{len(info['rejected_seeds'])} seed(s) rejected")
        print(
            f"{info['name']:20} {info['n_params']:8d} {SEQ_LEN:3d} {info['min_margin']:10.4f} "
            f"{info['logits_std']:9.3f}  {info['seed']}  {'; '.join(issues) or '-'}"
        )
    print()
    for info in infos:
        print(f"[{info['name']}] checks:")
        for k, v in info["checks"].items():
            print(f"    {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
