"""How llama.cpp's converter writes each Gemma into a GGUF file, in Hugging Face terms.

The tensor name table (GGUF name -> Hugging Face key, and what the converter did to the
values), the metadata each architecture states and the defaults llama.cpp assumes for
what it does not, turned into config.json keys (build_config). gguf.py reads files with
these facts; everything known about the converter is here, and nothing about reading.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Callable

import numpy as np

from .errors import GemmaRefError

REQUIRED = object()  # meta(key) without a default: the key must be in the file


# --------------------------------------------------------------------------------------------
# The name table: llama.cpp tensor name -> Hugging Face checkpoint key.
#
# Each row is (GGUF name, architectures it applies to, HF key, value transformation).
# `{i}` is the layer index. The rows agree with the `gguf` package's own
# `gguf.get_tensor_name_map(MODEL_ARCH.GEMMA*, n)` (the tests check that), which is what
# llama.cpp's converter uses to name tensors.
#
# Layout: a GGUF tensor's `ne` lists its dimensions fastest-varying first, so the NumPy shape
# of the data is `reversed(ne)`. That reversed shape already IS the Hugging Face / PyTorch
# layout: token_embd ne=[hidden, vocab] -> (vocab, hidden) = HF `embed_tokens.weight`, and a
# linear layer ne=[in, out] -> (out, in) = HF `nn.Linear.weight`. So no tensor is transposed.
#
# Transformations of the values (the last column):
#   NONE    -- the dequantized values are the HF values (up to quantization error).
#   UNSHIFT -- RMSNorm weights of Gemma 1-3 (Gemma 4's converter stores them as they are:
#              `Gemma4Model.norm_shift` is 0, and its RMSNorm multiplies by w; see SHIFTED).
#              Gemma's RMSNorm computes `x_normed * (1 + w)` and HF stores `w`
#              (centred on 0). llama.cpp's converter stores `w + 1` for every tensor whose HF
#              name ends in "norm.weight" (GemmaModel / Gemma2Model / Gemma3Model
#              .modify_tensors: `data_torch = data_torch + 1`, "ref code in Gemma3RMSNorm"),
#              because llama.cpp's RMSNorm multiplies by the stored weight directly. This
#              includes the Gemma 3 q_norm / k_norm. We subtract 1 back (in float32, exact for
#              these values) so the engine applies its own (1 + w). transformers' GGUF loader
#              does the same (`Gemma2TensorProcessor`: `weights - 1` for "norm.weight").
#
# What is NOT done, deliberately:
#   * No Q/K row permutation. llama.cpp permutes attn_q / attn_k rows for Llama-family models
#     (to turn HF's rotate-half RoPE into its interleaved one), but its Gemma converters do not
#     (Gemma uses llama.cpp's NEOX-style RoPE, which is HF's rotate-half). transformers' loader
#     does not un-permute Gemma either, and scripts/make_gguf_goldens.py checks empirically that
#     the un-permuted weights give a far lower loss than llama-style un-permuted ones.
#   * No embedding scaling: the sqrt(hidden_size) factor is applied by the model, not stored.
#   * `output.weight` (lm_head) exists only for untied models. Gemma ties lm_head to the
#     embedding, and llama.cpp's Gemma converters drop `lm_head.weight`, so normally there is no
#     `lm_head.weight` key and `config["tie_word_embeddings"]` is True.
# --------------------------------------------------------------------------------------------

NONE = "none"
UNSHIFT = "subtract 1 (llama.cpp stores RMSNorm weights as 1 + w)"
STACKED = "split: llama.cpp stacks the S - 1 AltUp matrices into one [S - 1, D, D] tensor"

SHIFTED = ("gemma", "gemma2", "gemma3")  # the architectures whose norms are stored as 1 + w
_ALL = ("gemma", "gemma2", "gemma3", "gemma3n", "gemma4")
_G234 = ("gemma2", "gemma3", "gemma3n", "gemma4")
_G34 = ("gemma3", "gemma3n", "gemma4")
PLE_ARCHITECTURES = ("gemma3n", "gemma4")  # per-layer embeddings
_G3N = ("gemma3n",)
_G4 = ("gemma4",)

TENSOR_NAME_TABLE: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    # GGUF name                       archs      HF key                                                  values
    ("token_embd.weight",              _ALL,      "model.embed_tokens.weight",                            NONE),
    ("output.weight",                  _ALL,      "lm_head.weight",                                       NONE),  # only when untied
    ("output_norm.weight",             _ALL,      "model.norm.weight",                                    UNSHIFT),
    ("blk.{i}.attn_norm.weight",       _ALL,      "model.layers.{i}.input_layernorm.weight",              UNSHIFT),
    ("blk.{i}.attn_q.weight",          _ALL,      "model.layers.{i}.self_attn.q_proj.weight",             NONE),  # not permuted
    ("blk.{i}.attn_k.weight",          _ALL,      "model.layers.{i}.self_attn.k_proj.weight",             NONE),  # not permuted
    ("blk.{i}.attn_v.weight",          _ALL,      "model.layers.{i}.self_attn.v_proj.weight",             NONE),
    ("blk.{i}.attn_output.weight",     _ALL,      "model.layers.{i}.self_attn.o_proj.weight",             NONE),
    ("blk.{i}.attn_q_norm.weight",     _G34,      "model.layers.{i}.self_attn.q_norm.weight",             UNSHIFT),
    ("blk.{i}.attn_k_norm.weight",     _G34,      "model.layers.{i}.self_attn.k_norm.weight",             UNSHIFT),
    # Gemma 1 has two norms per layer: HF's `post_attention_layernorm` is really the pre-MLP
    # norm, and llama.cpp calls it `ffn_norm`.
    ("blk.{i}.ffn_norm.weight",        ("gemma",), "model.layers.{i}.post_attention_layernorm.weight",    UNSHIFT),
    # Gemma 2/3 have four: `post_attention_layernorm` is a real post-attention norm
    # (llama.cpp `post_attention_norm`) and the pre-MLP norm is `pre_feedforward_layernorm`
    # (llama.cpp `ffn_norm`).
    ("blk.{i}.ffn_norm.weight",        _G234,     "model.layers.{i}.pre_feedforward_layernorm.weight",    UNSHIFT),
    ("blk.{i}.post_attention_norm.weight", _G234, "model.layers.{i}.post_attention_layernorm.weight",     UNSHIFT),
    ("blk.{i}.post_ffw_norm.weight",   _G234,     "model.layers.{i}.post_feedforward_layernorm.weight",   UNSHIFT),
    ("blk.{i}.ffn_gate.weight",        _ALL,      "model.layers.{i}.mlp.gate_proj.weight",                NONE),
    ("blk.{i}.ffn_up.weight",          _ALL,      "model.layers.{i}.mlp.up_proj.weight",                  NONE),
    ("blk.{i}.ffn_down.weight",        _ALL,      "model.layers.{i}.mlp.down_proj.weight",                NONE),
    # Gemma 4 (llama.cpp's conversion/gemma.py `Gemma4Model`, gguf-py MODEL_TENSORS[GEMMA4]):
    # per-layer embeddings, the layer scalar, and the mixture of experts. Experts are stored
    # as 3-D tensors, ne = [in, out, experts], i.e. HF's [E, out, in]. The router's `scale`
    # and `per_expert_scale` become `ffn_gate_inp.scale` and `ffn_down_exps.scale`.
    ("per_layer_token_embd.weight",    PLE_ARCHITECTURES,      "model.embed_tokens_per_layer.weight",                  NONE),
    ("per_layer_model_proj.weight",    PLE_ARCHITECTURES,      "model.per_layer_model_projection.weight",              NONE),
    ("per_layer_proj_norm.weight",     PLE_ARCHITECTURES,      "model.per_layer_projection_norm.weight",               UNSHIFT),
    ("blk.{i}.inp_gate.weight",        PLE_ARCHITECTURES,      "model.layers.{i}.per_layer_input_gate.weight",         NONE),
    ("blk.{i}.proj.weight",            PLE_ARCHITECTURES,      "model.layers.{i}.per_layer_projection.weight",         NONE),
    ("blk.{i}.post_norm.weight",       PLE_ARCHITECTURES,      "model.layers.{i}.post_per_layer_input_norm.weight",    UNSHIFT),
    ("blk.{i}.layer_output_scale.weight", _G4,    "model.layers.{i}.layer_scalar",                        NONE),
    ("blk.{i}.ffn_gate_inp.weight",    _G4,       "model.layers.{i}.router.proj.weight",                  NONE),
    ("blk.{i}.ffn_gate_inp.scale",     _G4,       "model.layers.{i}.router.scale",                        NONE),
    ("blk.{i}.ffn_down_exps.scale",    _G4,       "model.layers.{i}.router.per_expert_scale",             NONE),
    ("blk.{i}.ffn_gate_up_exps.weight", _G4,      "model.layers.{i}.experts.gate_up_proj",                NONE),
    ("blk.{i}.ffn_down_exps.weight",   _G4,       "model.layers.{i}.experts.down_proj",                   NONE),
    ("blk.{i}.pre_ffw_norm_2.weight",  _G4,       "model.layers.{i}.pre_feedforward_layernorm_2.weight",  UNSHIFT),
    ("blk.{i}.post_ffw_norm_1.weight", _G4,       "model.layers.{i}.post_feedforward_layernorm_1.weight", UNSHIFT),
    ("blk.{i}.post_ffw_norm_2.weight", _G4,       "model.layers.{i}.post_feedforward_layernorm_2.weight", UNSHIFT),
    # Gemma 3n (llama.cpp's `Gemma3NModel`, gguf-py MODEL_TENSORS[GEMMA3N]): per-layer
    # embeddings as Gemma 4 (above), AltUp and LAuReL. Norms as they are (norm_shift 0). The
    # converter stacks model.altup_projections.{0..S-2} (and the unembed ones) into one tensor,
    # and pads the per-layer table with zero rows up to vocab_size (see unpad_rows).
    ("altup_proj.weight",              _G3N,      "model.altup_projections.{s}.weight",                   STACKED),
    ("altup_unembd_proj.weight",       _G3N,      "model.altup_unembed_projections.{s}.weight",           STACKED),
    ("blk.{i}.altup_correct_coef.weight", _G3N,   "model.layers.{i}.altup.correction_coefs.weight",       NONE),
    ("blk.{i}.altup_correct_scale.weight", _G3N,  "model.layers.{i}.altup.correct_output_scale",          NONE),
    ("blk.{i}.altup_predict_coef.weight", _G3N,   "model.layers.{i}.altup.prediction_coefs.weight",       NONE),
    ("blk.{i}.altup_router.weight",    _G3N,      "model.layers.{i}.altup.modality_router.weight",        NONE),
    ("blk.{i}.altup_router_norm.weight", _G3N,    "model.layers.{i}.altup.router_norm.weight",            UNSHIFT),
    ("blk.{i}.laurel_l.weight",        _G3N,      "model.layers.{i}.laurel.linear_left.weight",           NONE),
    ("blk.{i}.laurel_r.weight",        _G3N,      "model.layers.{i}.laurel.linear_right.weight",          NONE),
    ("blk.{i}.laurel_post_norm.weight", _G3N,     "model.layers.{i}.laurel.post_laurel_norm.weight",      UNSHIFT),
)
# Gemma 4's full-attention RoPE as llama.cpp encodes it: one factor per frequency pair of the
# full layers' heads, 1.0 for the pairs that rotate and 1e30 (frequency ~0) for the rest.
# Read into the config (partial_rotary_factor), not a weight.
ROPE_FREQS = "rope_freqs.weight"

# Tensors a file may lack; every other row of the table that applies to the file's
# architecture must be present.
OPTIONAL_TENSORS = frozenset({"output.weight"})

SUPPORTED_ARCHITECTURES = _ALL

# `general.architecture` -> (HF model_type, HF architectures entry)
MODEL_TYPES = {
    "gemma": ("gemma", "GemmaForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    # The GGUF holds the text model only (llama.cpp writes the vision tower to a separate
    # mmproj file), so this is transformers' text-only Gemma 3, as its GGUF loader also says.
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "gemma3n": ("gemma3n_text", "Gemma3nForCausalLM"),
    "gemma4": ("gemma4_text", "Gemma4ForCausalLM"),
}

# --------------------------------------------------------------------------------------------
# Hyperparameters the file does not state. Each is what llama.cpp's loader (llama-model.cpp)
# hard-codes for the architecture, which is also what transformers' config classes default to.
# --------------------------------------------------------------------------------------------

# Gemma 3: local (sliding-window) layers use RoPE base 10000; `rope.freq_base` in the file is the
# global layers' base (1e6). llama.cpp: `rope_freq_base_train_swa = 10000.0f`. A newer file may
# state it as `{arch}.rope.freq_base_swa`, which then wins.
GEMMA3_ROPE_LOCAL_BASE_FREQ = 10000.0
# Gemma 3: every 6th layer is global: layer i is full attention iff (i + 1) % 6 == 0.
# llama.cpp: `set_swa_pattern(6)`; transformers: `sliding_window_pattern = 6`.
GEMMA3_SLIDING_WINDOW_PATTERN = 6
# Gemma 2: layers alternate, starting with a sliding-window one: layer i is full iff
# (i + 1) % 2 == 0. llama.cpp: `set_swa_pattern(2)`.
GEMMA2_SLIDING_WINDOW_PATTERN = 2
# Gemma 2 window when the file does not state one (llama.cpp: `n_swa = 4096`).
GEMMA2_DEFAULT_SLIDING_WINDOW = 4096
# Gemma 2 soft-caps when the file does not state them (llama.cpp's hparams defaults, which are
# also Gemma2Config's defaults). Gemma 3 has no attention soft-cap and no final soft-cap unless
# the file says so; Gemma 1 has neither.
GEMMA2_DEFAULT_ATTN_LOGIT_SOFTCAPPING = 50.0
GEMMA2_DEFAULT_FINAL_LOGIT_SOFTCAPPING = 30.0
# RoPE base when a file states none (llama.cpp's default; Gemma 1 and 2 use 10000).
DEFAULT_ROPE_THETA = 10000.0
# query_pre_attn_scalar (queries are scaled by its -1/2 power). llama.cpp picks it by model
# size: `f_attention_scale = type == LLM_TYPE_27B ? 1/sqrt(n_embd / n_head) : 1/sqrt(head_dim)`,
# after gemma_pytorch's config. The 27B models are recognised by their layer count, as llama.cpp
# does: Gemma 2 27B has 46 layers (query_pre_attn_scalar = 4608 / 32 = 144), Gemma 3 27B has 62
# (5376 / 32 = 168). Every other size uses head_dim (Gemma 3 270M: 256). transformers' GGUF
# loader does not set it at all and so gets the config class default, 256, which agrees for
# every size but the 27Bs. Gemma 1 has no such setting; it scales by head_dim ** -0.5, which is
# what query_pre_attn_scalar = head_dim means.
_QUERY_SCALE_BY_HIDDEN_OVER_HEADS_LAYER_COUNTS = {"gemma2": 46, "gemma3": 62}
# Every Gemma uses the tanh approximation of GELU in its MLP.
HIDDEN_ACTIVATION = "gelu_pytorch_tanh"

# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


def build_config(meta: Callable[..., Any], tensors: list, path: str, arch: str, vocab_size: int) -> dict[str, Any]:
    """config.json (Hugging Face keys) for a GGUF of `arch`, from its metadata and tensors.

    meta(key) reads a metadata value and fails naming the key when it is missing;
    meta(key, default) gives default instead. tensors: the file's (name, shape, data).
    """
    def key(name: str, default: Any = REQUIRED) -> Any:
        return meta(f"{arch}.{name}", default)

    def positive_int(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise GemmaRefError(f"{path}: GGUF metadata {arch}.{name} = {value!r} is not a positive integer")
        return value

    if arch == "gemma4":
        return _gemma4_config(meta, tensors, path, vocab_size, key, positive_int)
    if arch == "gemma3n":
        return _gemma3n_config(meta, tensors, path, vocab_size, key, positive_int)
    hidden = positive_int("embedding_length", key("embedding_length"))
    layers = positive_int("block_count", key("block_count"))
    heads = positive_int("attention.head_count", key("attention.head_count"))
    kv_heads = positive_int("attention.head_count_kv", key("attention.head_count_kv", heads))
    ffn = positive_int("feed_forward_length", key("feed_forward_length"))
    head_dim = positive_int("attention.key_length", key("attention.key_length", hidden // heads))
    value_dim = positive_int("attention.value_length", key("attention.value_length", head_dim))
    if value_dim != head_dim:
        raise GemmaRefError(
            f"{path}: key_length {head_dim} != value_length {value_dim}; Gemma has one head_dim"
        )
    if heads % kv_heads:
        raise GemmaRefError(f"{path}: head_count {heads} is not a multiple of head_count_kv {kv_heads}")
    context = positive_int("context_length", key("context_length"))
    rms_eps = float(key("attention.layer_norm_rms_epsilon"))
    rope_theta = float(key("rope.freq_base", DEFAULT_ROPE_THETA))

    rope_scaling = None
    scaling_type = key("rope.scaling.type", None)
    if scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type, "factor": float(key("rope.scaling.factor", 1.0))}

    if arch == "gemma":
        sliding_window = None
        layer_types = ["full_attention"] * layers
        rope_local = rope_theta  # one RoPE base for every layer
        attn_softcap = final_softcap = None
    elif arch == "gemma2":
        sliding_window = key("attention.sliding_window", GEMMA2_DEFAULT_SLIDING_WINDOW)
        layer_types = _pattern_layer_types(layers, GEMMA2_SLIDING_WINDOW_PATTERN)
        rope_local = rope_theta  # Gemma 2 uses one RoPE base for every layer
        attn_softcap = float(key("attn_logit_softcapping", GEMMA2_DEFAULT_ATTN_LOGIT_SOFTCAPPING))
        final_softcap = float(key("final_logit_softcapping", GEMMA2_DEFAULT_FINAL_LOGIT_SOFTCAPPING))
    else:  # gemma3
        sliding_window = key("attention.sliding_window", None) or None
        pattern = key("attention.sliding_window_pattern", GEMMA3_SLIDING_WINDOW_PATTERN)
        if sliding_window is None:
            # Newer llama.cpp: no window stated -> every layer is global.
            layer_types = ["full_attention"] * layers
        elif isinstance(pattern, list):  # per-layer flags, True = sliding
            if len(pattern) != layers:
                raise GemmaRefError(
                    f"{path}: {arch}.attention.sliding_window_pattern has {len(pattern)} entries for {layers} layers"
                )
            layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
        else:
            layer_types = _pattern_layer_types(layers, positive_int("attention.sliding_window_pattern", pattern))
        rope_local = float(key("rope.freq_base_swa", GEMMA3_ROPE_LOCAL_BASE_FREQ))
        attn_softcap = key("attn_logit_softcapping", None)
        final_softcap = key("final_logit_softcapping", None)
        attn_softcap = float(attn_softcap) if attn_softcap else None
        final_softcap = float(final_softcap) if final_softcap else None

    if layers == _QUERY_SCALE_BY_HIDDEN_OVER_HEADS_LAYER_COUNTS.get(arch):
        query_pre_attn_scalar = hidden // heads
    else:
        query_pre_attn_scalar = head_dim

    model_type, architecture = MODEL_TYPES[arch]
    config: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": model_type,
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "max_position_embeddings": context,
        "rms_norm_eps": rms_eps,
        "rope_theta": rope_theta,
        "rope_local_base_freq": rope_local,
        "rope_scaling": rope_scaling,
        "sliding_window": sliding_window,
        "layer_types": layer_types,
        "query_pre_attn_scalar": query_pre_attn_scalar,
        "attn_logit_softcapping": attn_softcap,
        "final_logit_softcapping": final_softcap,
        "hidden_activation": HIDDEN_ACTIVATION,
        "hidden_act": HIDDEN_ACTIVATION,
        "attention_bias": False,
        **_token_fields(meta, path, vocab_size, [t.name for t in tensors]),
    }
    if arch == "gemma3" and sliding_window is not None and isinstance(pattern, int):
        config["_sliding_window_pattern"] = pattern  # as transformers' Gemma3TextConfig has it
    return config


def _gemma4_config(meta, tensors, path, vocab_size, key, positive_int) -> dict[str, Any]:
    """config.json (Hub spelling) of a Gemma 4 GGUF, from what llama.cpp's Gemma4Model writes.

    Per-layer facts are arrays in the file: head_count_kv (sliding vs full layers),
    feed_forward_length (2x on the KV-sharing layers with use_double_wide_mlp) and
    attention.sliding_window_pattern (True = sliding). key_length is the full layers'
    head_dim, key_length_swa the sliding layers'. attention_k_eq_v shows as full layers
    without attn_v; partial_rotary_factor as the 1.0 entries of rope_freqs.
    """
    def per_layer(name: str, layers: int) -> list[int]:
        value = key(name)
        values = value if isinstance(value, list) else [value] * layers
        if len(values) != layers:
            raise GemmaRefError(f"{path}: gemma4.{name} has {len(values)} entries for {layers} layers")
        return [positive_int(name, v) for v in values]

    layers = positive_int("block_count", key("block_count"))
    pattern = key("attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != layers:
        raise GemmaRefError(f"{path}: gemma4.attention.sliding_window_pattern is not one flag per layer")
    sliding = [bool(p) for p in pattern]
    kv = per_layer("attention.head_count_kv", layers)
    ffn = per_layer("feed_forward_length", layers)
    shared = key("attention.shared_kv_layers", 0)
    head_dim = positive_int("attention.key_length_swa", key("attention.key_length_swa"))
    global_head_dim = positive_int("attention.key_length", key("attention.key_length"))
    full = [i for i in range(layers) if not sliding[i]]
    kv_full = {kv[i] for i in full} or {kv[0]}
    kv_sliding = {kv[i] for i in range(layers) if sliding[i]} or kv_full
    if len(kv_full) > 1 or len(kv_sliding) > 1:
        raise GemmaRefError(f"{path}: gemma4.attention.head_count_kv differs within one kind of layer")
    names = {t.name for t in tensors}
    k_eq_v = bool(full) and all(f"blk.{i}.attn_v.weight" not in names for i in full)
    partial = 1.0
    rope_freqs = next((t for t in tensors if t.name == ROPE_FREQS), None)
    if rope_freqs is not None:
        factors = np.asarray(rope_freqs.data, dtype=np.float32).reshape(-1)
        if factors.size != global_head_dim // 2:
            raise GemmaRefError(f"{path}: {ROPE_FREQS} has {factors.size} entries, not key_length / 2")
        partial = 2 * int((factors == 1.0).sum()) / global_head_dim
    per_layer_input = key("embedding_length_per_layer_input", 0) or 0
    ple_rows = next((int(t.shape[-1]) for t in tensors if t.name == "per_layer_token_embd.weight"), 0)
    experts = key("expert_count", 0) or 0
    softcap = key("final_logit_softcapping", None)

    return {
        "architectures": ["Gemma4ForCausalLM"],
        "model_type": "gemma4_text",
        "vocab_size": vocab_size,
        "hidden_size": positive_int("embedding_length", key("embedding_length")),
        "intermediate_size": min(ffn),
        "num_hidden_layers": layers,
        "num_attention_heads": positive_int("attention.head_count", key("attention.head_count")),
        "num_key_value_heads": kv_sliding.pop(),
        "num_global_key_value_heads": kv_full.pop() if k_eq_v else None,
        "head_dim": head_dim,
        "global_head_dim": global_head_dim,
        "max_position_embeddings": positive_int("context_length", key("context_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "rope_parameters": {
            "full_attention": {"rope_type": "proportional", "partial_rotary_factor": partial,
                               "rope_theta": float(key("rope.freq_base", 1_000_000.0))},
            "sliding_attention": {"rope_type": "default",
                                  "rope_theta": float(key("rope.freq_base_swa", GEMMA3_ROPE_LOCAL_BASE_FREQ))},
        },
        "sliding_window": key("attention.sliding_window", None),
        "layer_types": ["sliding_attention" if f else "full_attention" for f in sliding],
        "final_logit_softcapping": float(softcap) if softcap else None,
        "attention_k_eq_v": k_eq_v,
        "num_kv_shared_layers": shared,
        "use_double_wide_mlp": max(ffn) == 2 * min(ffn) and shared > 0,
        "hidden_size_per_layer_input": per_layer_input,
        "vocab_size_per_layer_input": ple_rows or vocab_size,
        "enable_moe_block": experts > 0,
        "num_experts": experts or None,
        "top_k_experts": key("expert_used_count", None) if experts else None,
        "moe_intermediate_size": key("expert_feed_forward_length", None) if experts else None,
        "hidden_activation": HIDDEN_ACTIVATION,
        "attention_bias": False,
        **_token_fields(meta, path, vocab_size, [t.name for t in tensors]),
    }


def _gemma3n_config(meta, tensors, path, vocab_size, key, positive_int) -> dict[str, Any]:
    """config.json of a Gemma 3n GGUF, from what llama.cpp's Gemma3NModel writes.

    feed_forward_length is per layer; activation_sparsity_scale holds, per layer, the
    standard normal quantile of the target sparsity (-inf for a dense layer), which is
    turned back into the sparsity. The file has no altup_correct_scale flag: llama.cpp
    always scales (the real models set it), so it is True here. laurel_rank and the
    per-layer table's rows come from the tensors' shapes.
    """
    layers = positive_int("block_count", key("block_count"))
    ffn = key("feed_forward_length")
    ffn = ffn if isinstance(ffn, list) else [ffn] * layers
    pattern = key("attention.sliding_window_pattern")
    if not isinstance(pattern, list) or len(pattern) != layers or len(ffn) != layers:
        raise GemmaRefError(f"{path}: gemma3n.feed_forward_length and attention.sliding_window_pattern "
                            f"must have one entry per layer ({layers})")
    scales = key("activation_sparsity_scale", [float("-inf")] * layers)
    scales = scales if isinstance(scales, list) else [scales] * layers
    if len(scales) != layers:
        raise GemmaRefError(f"{path}: gemma3n.activation_sparsity_scale has {len(scales)} entries for {layers} layers")
    shapes = {t.name: [int(n) for n in reversed(t.shape.tolist())] for t in tensors}
    laurel = shapes.get("blk.0.laurel_l.weight", [0])[0]
    heads = positive_int("attention.head_count", key("attention.head_count"))
    head_dim = positive_int("attention.key_length", key("attention.key_length"))
    softcap = key("final_logit_softcapping", None)
    return {
        "architectures": ["Gemma3nForCausalLM"],
        "model_type": "gemma3n_text",
        "vocab_size": vocab_size,
        "hidden_size": positive_int("embedding_length", key("embedding_length")),
        "intermediate_size": [positive_int("feed_forward_length", f) for f in ffn],
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": positive_int("attention.head_count_kv", key("attention.head_count_kv")),
        "head_dim": head_dim,
        "max_position_embeddings": positive_int("context_length", key("context_length")),
        "rms_norm_eps": float(key("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(key("rope.freq_base", 1_000_000.0)),
        "rope_local_base_freq": float(key("rope.freq_base_swa", GEMMA3_ROPE_LOCAL_BASE_FREQ)),
        "sliding_window": key("attention.sliding_window", None),
        "layer_types": ["sliding_attention" if p else "full_attention" for p in pattern],
        "final_logit_softcapping": float(softcap) if softcap else None,
        "num_kv_shared_layers": key("attention.shared_kv_layers", 0),
        "hidden_size_per_layer_input": positive_int("embedding_length_per_layer_input",
                                                    key("embedding_length_per_layer_input")),
        "vocab_size_per_layer_input": shapes.get("per_layer_token_embd.weight", [vocab_size])[0],
        "altup_num_inputs": positive_int("altup.num_inputs", key("altup.num_inputs")),
        "altup_active_idx": key("altup.active_idx"),
        "altup_correct_scale": True,
        "laurel_rank": laurel,
        # cdf(the float32 quantile) is the sparsity to ~1e-8; sparsities are short decimals.
        "activation_sparsity_pattern": [0.0 if math.isinf(z) else round(NormalDist().cdf(z), 6) for z in scales],
        "hidden_activation": HIDDEN_ACTIVATION,
        "attention_bias": False,
        **_token_fields(meta, path, vocab_size, [t.name for t in tensors]),
    }


def _token_fields(meta, path: str, vocab_size: int, tensor_names: list[str]) -> dict[str, Any]:
    """The special token ids (each checked to lie in the vocabulary) and whether the head is tied."""
    def token_id(name: str) -> int | None:
        value = meta(f"tokenizer.ggml.{name}", None)
        if value is not None and not 0 <= value < vocab_size:
            raise GemmaRefError(f"{path}: tokenizer.ggml.{name} = {value} is outside the {vocab_size}-token vocabulary")
        return value

    return {
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": token_id("bos_token_id"),
        "eos_token_id": token_id("eos_token_id"),
        "pad_token_id": token_id("padding_token_id"),
        "unk_token_id": token_id("unknown_token_id"),
    }


def _pattern_layer_types(layers: int, pattern: int) -> list[str]:
    return ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(layers)]


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


def expected_tensors(arch: str, layers: int) -> dict[str, tuple[str, str]]:
    """GGUF name -> (HF key, transformation) for every tensor this architecture may have."""
    table: dict[str, tuple[str, str]] = {}
    for gguf_name, archs, hf_key, transform in TENSOR_NAME_TABLE:
        if arch not in archs:
            continue
        if "{i}" in gguf_name:
            for i in range(layers):
                table[gguf_name.format(i=i)] = (hf_key.format(i=i), transform)
        else:
            table[gguf_name] = (hf_key, transform)
    return table


def expected_shape(hf_key: str, config: dict[str, Any]) -> tuple[int, ...]:
    d, f = config["hidden_size"], config["intermediate_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    leaf = hf_key.split(".")[-2]
    return {
        "embed_tokens": (config["vocab_size"], d),
        "lm_head": (config["vocab_size"], d),
        "q_proj": (q, d),
        "k_proj": (kv, d),
        "v_proj": (kv, d),
        "o_proj": (d, q),
        "gate_proj": (f, d),
        "up_proj": (f, d),
        "down_proj": (d, f),
        "q_norm": (config["head_dim"],),
        "k_norm": (config["head_dim"],),
    }.get(leaf, (d,))  # every other tensor is a hidden-size RMSNorm weight


def unpadded_rows(blocks_from_the_end) -> int:
    """How many rows Gemma 3n's per-layer table has without the all-zero rows llama.cpp's
    converter appends. blocks_from_the_end: (first row, values) of the table's blocks of
    rows, last block first.

    The Hub table has 262144 rows and the vocabulary 262400 (image and audio tokens); the
    converter pads the table to the vocabulary with zeros. transformers gives ids past the
    table row 0, not a zero row, so the padding comes off (a trained row is never all zero).
    """
    for first, block in blocks_from_the_end:
        used = np.flatnonzero(block.any(axis=1))
        if used.size:
            return first + int(used[-1]) + 1
    return 1  # all zero: keep one row
