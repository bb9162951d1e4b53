"""Write a randomly initialized checkpoint of exactly one preset's shapes, in HF layout.

    python scripts/make_random_checkpoint.py --preset 7b --dtype bfloat16 --out /tmp/gemma-7b-random
    python scripts/make_random_checkpoint.py --preset 3-270m --dtype float32 --out /tmp/g3-270m
    python scripts/make_random_checkpoint.py --preset 4-e2b --audio --out /tmp/g4-e2b-audio

--audio (Gemma 4 E2B/E4B, Gemma 3n E2B/E4B): also the audio tower and its embedder in the
released shapes (Gemma 4: 12 Conformer layers, 1024 wide, ~307M parameters; Gemma 3n: 12
layers, 1536 wide, ~680M), with config.json in the multimodal spelling (model_type gemma4 /
gemma3n, text_config, audio_config).

Output: config.json (Hugging Face keys, loadable by gemma-ref and by transformers),
model-0000i-of-0000n.safetensors shards of about --shard-gb each, and
model.safetensors.index.json. No tokenizer: benchmarks feed token ids.

It streams: one shard (~2 GB) is held in memory at a time, and large tensors are
filled in row blocks, so a 17 GB bf16 Gemma 7B is written with ~2-3 GB of RAM.
Values: normal(0, --std) for matrices, normal(0, --norm-std) for norm weights (Gemma
1-3 scale by 1 + w, so w near 0 is a near-identity norm; Gemma 4's norms, layer scalars
and router scales multiply by w, so they are drawn around 1). The numbers mean nothing; the
shapes, dtype and file layout are exact, which is all a speed or memory test needs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from gemma_ref.config import FULL, PRESETS, SLIDING, GemmaConfig  # noqa: E402
from gemma_ref.audio import AudioConfig, _gemma3n_config  # noqa: E402
from gemma_ref.loader import expected_shapes  # noqa: E402

DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# The real models' context lengths (the presets default to 8192 for every family).
CONTEXT = {"3-270m": 32768, "3-1b": 32768, "3-4b": 131072, "3-12b": 131072, "3-27b": 131072,
           "3n-e2b": 32768, "3n-e4b": 32768,
           "4-e2b": 131072, "4-e4b": 131072, "4-26b-a4b": 262144, "4-31b": 262144}
ARCH = {"gemma": "GemmaForCausalLM", "gemma2": "Gemma2ForCausalLM",
        "gemma3_text": "Gemma3ForCausalLM", "gemma3n_text": "Gemma3nForCausalLM",
        "gemma4_text": "Gemma4ForCausalLM"}
BLOCK_ELEMS = 1 << 26  # fill big tensors 64 Mi elements (256 MB of float32) at a time


def hf_config(cfg: GemmaConfig, dtype: str, max_pos: int) -> dict:
    """config.json in Hugging Face spelling, for gemma-ref and transformers alike."""
    d = {
        "architectures": [ARCH[cfg.model_type]], "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
        "rms_norm_eps": cfg.rms_norm_eps, "max_position_embeddings": max_pos,
        "hidden_activation": cfg.hidden_activation, "hidden_act": cfg.hidden_activation,
        "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id, "tie_word_embeddings": True,
        "attention_bias": False, "torch_dtype": dtype, "dtype": dtype,
    }
    if cfg.query_pre_attn_scalar is not None:
        d["query_pre_attn_scalar"] = cfg.query_pre_attn_scalar
    if cfg.attn_logit_softcapping is not None:
        d["attn_logit_softcapping"] = cfg.attn_logit_softcapping
    if cfg.final_logit_softcapping is not None:
        d["final_logit_softcapping"] = cfg.final_logit_softcapping
    if cfg.sliding_window:
        d["sliding_window"] = cfg.sliding_window
    if cfg.model_type == "gemma":
        d["rope_theta"] = cfg.rope_theta
    else:
        d["layer_types"] = list(cfg.layer_types)
        full = {"rope_type": "default", "rope_theta": cfg.rope_theta}
        if cfg.rope_scaling_factor != 1.0:
            full = {"rope_type": "linear", "rope_theta": cfg.rope_theta,
                    "factor": cfg.rope_scaling_factor}
        if cfg.model_type == "gemma4_text":
            full = {"rope_type": "proportional", "rope_theta": cfg.rope_theta,
                    "partial_rotary_factor": cfg.partial_rotary_factor}
        if cfg.model_type in ("gemma3_text", "gemma3n_text", "gemma4_text"):
            d["rope_parameters"] = {FULL: full, SLIDING: {"rope_type": "default",
                                                          "rope_theta": cfg.rope_local_base_freq}}
        else:
            d["rope_theta"] = cfg.rope_theta
    if cfg.model_type == "gemma3n_text":
        d.update({k: getattr(cfg, k) for k in (
            "altup_num_inputs", "altup_active_idx", "altup_correct_scale", "laurel_rank",
            "num_kv_shared_layers", "hidden_size_per_layer_input", "vocab_size_per_layer_input")})
        d["intermediate_size"] = [s.intermediate_size for s in cfg.layers]
        d["activation_sparsity_pattern"] = [s.activation_sparsity for s in cfg.layers]
    if cfg.model_type == "gemma4_text":  # in the Hub files' spelling
        d.pop("query_pre_attn_scalar", None)
        d.update({k: getattr(cfg, k) for k in (
            "global_head_dim", "num_global_key_value_heads", "attention_k_eq_v", "num_kv_shared_layers",
            "use_double_wide_mlp", "hidden_size_per_layer_input", "vocab_size_per_layer_input",
            "enable_moe_block", "num_experts", "top_k_experts", "moe_intermediate_size")})
    return d


def random_tensor(shape, dtype, std, rng, mean=0.0) -> np.ndarray:
    """normal(mean, std) in `dtype`, filled in row blocks (no full-size float32 temporary)."""
    out = np.empty(shape, dtype)
    flat = out.reshape(shape[0], -1) if len(shape) > 1 else out.reshape(1, -1)
    rows = max(1, BLOCK_ELEMS // flat.shape[1])
    for r in range(0, flat.shape[0], rows):
        block = rng.standard_normal((min(rows, flat.shape[0] - r), flat.shape[1]), np.float32)
        block *= std
        block += mean
        flat[r:r + rows] = block.astype(dtype)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", required=True, choices=sorted(PRESETS))
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--shard-gb", type=float, default=2.0, help="target shard size (default 2)")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--norm-std", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-position-embeddings", type=int, default=None,
                    help="context length in config.json (default: the real model's)")
    ap.add_argument("--audio", action="store_true", help="also the audio tower (4-e2b, 4-e4b, 3n-e2b, 3n-e4b)")
    args = ap.parse_args(argv)

    cfg = PRESETS[args.preset]
    dtype = np.dtype(DTYPES[args.dtype])
    shapes = expected_shapes(cfg)
    audio = None
    if args.audio:
        if args.preset not in ("4-e2b", "4-e4b", "3n-e2b", "3n-e4b"):
            ap.error("--audio: only Gemma 4 E2B/E4B and Gemma 3n E2B/E4B have an audio tower")
        if args.preset.startswith("3n"):  # Gemma3nAudioConfig's defaults are the released tower
            audio = _gemma3n_config({"model_type": "gemma3n", "audio_config": {"model_type": "gemma3n_audio"},
                                     "text_config": {"hidden_size": cfg.hidden_size,
                                                     "vocab_size": cfg.vocab_size}}, "preset")
        else:
            audio = AudioConfig(text_hidden_size=cfg.hidden_size)  # the released tower's shapes
        shapes.update({"model." + k: v for k, v in audio.expected_shapes().items()})
    max_pos = args.max_position_embeddings or CONTEXT.get(args.preset,
                                                          cfg.max_position_embeddings)
    # Plan the shards by size, in checkpoint order, before writing anything.
    limit = int(args.shard_gb * 1e9)
    shards, cur, cur_bytes = [], [], 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if cur and cur_bytes + nbytes > limit:
            shards.append(cur)
            cur, cur_bytes = [], 0
        cur.append(name)
        cur_bytes += nbytes
    shards.append(cur)
    total = sum(int(np.prod(s)) for s in shapes.values())

    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("model*.safetensors"):
        old.unlink()
    config = hf_config(cfg, args.dtype, max_pos)
    if audio is not None and audio.model_type == "gemma3n_audio":  # defaults = the released tower
        config = {"architectures": ["Gemma3nForConditionalGeneration"], "model_type": "gemma3n",
                  "text_config": config, "vision_config": None, "audio_config": {"model_type": "gemma3n_audio"},
                  "tie_word_embeddings": True}
    elif audio is not None:  # the multimodal spelling, as the Hub's E2B/E4B config.json
        a = {k: getattr(audio, k) for k in audio.__dataclass_fields__ if k not in (
            "audio_token_id", "boa_token_id", "eoa_token_index", "text_hidden_size")}
        config = {"architectures": ["Gemma4ForConditionalGeneration"], "model_type": "gemma4",
                  "text_config": config, "vision_config": None, "audio_token_id": audio.audio_token_id,
                  "boa_token_id": audio.boa_token_id, "eoa_token_index": audio.eoa_token_index,
                  "audio_config": {**a, "subsampling_conv_channels": list(audio.subsampling_conv_channels),
                                   "model_type": "gemma4_audio"}, "tie_word_embeddings": True}
    (args.out / "config.json").write_text(json.dumps(config, indent=2))
    print(f"{args.preset}: {total / 1e9:.2f} B parameters, {total * dtype.itemsize / 1e9:.1f} GB "
          f"in {args.dtype}, {len(shards)} shard(s) -> {args.out}", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    weight_map, t0 = {}, time.perf_counter()
    n = len(shards)
    for i, names in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{n:05d}.safetensors"
        tensors = {}
        for name in names:
            scale = name.endswith(("norm.weight", "layer_scalar", "router.scale", "per_expert_scale", "norm_out.weight",
                                   "norm_pre_attn.weight", "norm_post_attn.weight",
                                   "correct_output_scale"))
            std = args.norm_std if scale else args.std
            # Gemma 3n's and 4's norms (and scalars) multiply by w, not 1 + w: centre them on 1.
            mean = 1.0 if scale and cfg.norm_offset == 0 else 0.0
            if name.endswith(("_min", "_max")):  # the audio projections' clamps: wide, never biting
                std, mean = 0.0, (-1e4 if name.endswith("_min") else 1e4)
            tensors[name] = random_tensor(shapes[name], dtype, std, rng, mean)
            weight_map[name] = fname
        save_file(tensors, str(args.out / fname), metadata={"format": "pt"})
        del tensors
        print(f"  {fname} ({i}/{n}) {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    index = {"metadata": {"total_size": total * dtype.itemsize}, "weight_map": weight_map}
    (args.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    print(f"done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
