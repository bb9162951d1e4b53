"""Shared fixtures: tiny seeded checkpoints written with NumPy (no torch needed)."""

import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from gemma_ref.config import GemmaConfig
from gemma_ref.loader import expected_shapes

DATA = Path(__file__).parent / "data"
TINY_TOKENIZER = DATA / "tokenizer" / "tiny.model"

BASE = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=256)

# One tiny config per architecture variant the invariants are checked on.
VARIANTS = {
    "gemma1-mqa": dict(BASE, model_type="gemma"),  # head_dim 32 != 64 / 4
    "gemma1-gqa": dict(BASE, model_type="gemma", num_key_value_heads=2),
    "gemma1-mha": dict(BASE, model_type="gemma", num_key_value_heads=4, head_dim=16),
    "gemma2-gqa": dict(BASE, model_type="gemma2", num_hidden_layers=4, num_key_value_heads=2,
                       head_dim=16, sliding_window=8, query_pre_attn_scalar=24,
                       attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    "gemma3-mqa": dict(BASE, model_type="gemma3_text", num_hidden_layers=6, sliding_window=8,
                       query_pre_attn_scalar=24, rope_theta=1e6, rope_local_base_freq=1e4,
                       rope_scaling={"rope_type": "linear", "factor": 8.0},
                       layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                    "sliding_attention", "full_attention", "sliding_attention"]),
    # Gemma 4: per-layer embeddings, the last 2 layers sharing K/V (one of each type) with a
    # double-wide MLP, bigger heads on full layers, proportional RoPE.
    "gemma4-ple-shared": dict(BASE, model_type="gemma4_text", num_hidden_layers=5, head_dim=16,
                              global_head_dim=32, sliding_window=8, num_kv_shared_layers=2,
                              use_double_wide_mlp=True, hidden_size_per_layer_input=8,
                              vocab_size_per_layer_input=512, final_logit_softcapping=30.0,
                              layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                           "sliding_attention", "full_attention"]),
    # Gemma 3n: 3 AltUp streams (active 1), LAuReL, a per-layer table smaller than the
    # vocabulary, the last 2 layers sharing K/V, sparse gates, one MLP width per layer.
    "gemma3n-altup": dict(BASE, model_type="gemma3n_text", num_hidden_layers=5, head_dim=16,
                          intermediate_size=[96, 64, 80, 96, 48], sliding_window=8,
                          num_kv_shared_layers=2, hidden_size_per_layer_input=8,
                          vocab_size_per_layer_input=300, altup_num_inputs=3, altup_active_idx=1,
                          laurel_rank=4, activation_sparsity_pattern=[0.9, 0.0, 0.7, 0.0, 0.8],
                          layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                       "sliding_attention", "full_attention"]),
    # Gemma 4: experts beside the MLP, K = V on full layers (with their own kv heads).
    "gemma4-moe-kv": dict(BASE, model_type="gemma4_text", num_hidden_layers=4, num_key_value_heads=2,
                          head_dim=16, global_head_dim=32, num_global_key_value_heads=1,
                          attention_k_eq_v=True, sliding_window=8, enable_moe_block=True,
                          num_experts=6, top_k_experts=2, moe_intermediate_size=24,
                          layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                       "full_attention"]),
    # VaultGemma: Gemma 2 without the output norms (here with the default sliding layers)
    "vaultgemma-mqa": dict(BASE, model_type="vaultgemma", num_hidden_layers=4, head_dim=16,
                           sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=5.0,
                           final_logit_softcapping=3.0),
    # Gemma 4 12B Unified's text model: Gemma 4 without PLE or experts (last layer shares K/V)
    "gemma4-unified": dict(BASE, model_type="gemma4_unified_text", num_hidden_layers=4, head_dim=16,
                           global_head_dim=32, sliding_window=8, num_kv_shared_layers=1,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                        "full_attention"]),
}


def write_checkpoint(directory: Path, config: dict, seed: int = 0, dtype=np.float32,
                     tokenizer: bool = True) -> Path:
    """A random checkpoint in Hugging Face layout (config.json + model.safetensors)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cfg = GemmaConfig.from_dict(config)
    shapes = expected_shapes(cfg)
    tensors = {}
    for name, shape in shapes.items():
        scale = name.endswith(("norm.weight", "layer_scalar", "scale"))
        std = 0.3 if scale else (1.0 if "embed" in name else 0.15)
        # Gemma 4 norms (and scalars) multiply by w, not 1 + w: centre them on 1
        mean = 1.0 if scale and cfg.norm_offset == 0 else 0.0
        tensors[name] = (rng.standard_normal(shape) * std + mean).astype(np.float32).astype(dtype)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps(config))
    if tokenizer:
        shutil.copy(TINY_TOKENIZER, directory / "tokenizer.model")
    return directory


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """name -> directory of a tiny seeded checkpoint, for every variant (+ a bf16 file)."""
    root = tmp_path_factory.mktemp("tiny")
    dirs = {name: write_checkpoint(root / name, cfg, seed=i) for i, (name, cfg) in enumerate(VARIANTS.items())}
    dirs["gemma1-gqa-bf16"] = write_checkpoint(root / "gemma1-gqa-bf16", VARIANTS["gemma1-gqa"],
                                               seed=1, dtype=ml_dtypes.bfloat16)
    return dirs


@pytest.fixture(scope="session")
def tiny_models(tiny_dirs):
    from gemma_ref import Model

    return {name: Model.from_pretrained(d) for name, d in tiny_dirs.items()}


def pytest_sessionfinish(session, exitstatus):
    """The suite must run without the dev tools: fail if anything imported them."""
    import sys

    heavy = [m for m in ("torch", "transformers") if m in sys.modules]
    if heavy and exitstatus == 0:
        print(f"\nERROR: the test suite imported {heavy}; CI has no PyTorch/transformers")
        session.exitstatus = 1
