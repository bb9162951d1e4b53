"""Reading a Hugging Face config.json into GemmaConfig's fields, every key checked.

`config_fields(d)` accepts both spellings transformers does (Gemma 3 `rope_theta` /
`rope_local_base_freq` / `rope_scaling`, transformers 5 `rope_parameters`; Hub
`global_head_dim` / transformers 5 `per_layer_config` for Gemma 4; nested `text_config`
of multimodal checkpoints), derives what transformers decides by model class
(_GENERATIONS), and raises a GemmaRefError naming any key of the wrong type or range.
config.py's GemmaConfig.from_dict / from_json call it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from . import files
from .errors import GemmaRefError

FULL = "full_attention"
SLIDING = "sliding_attention"
LAYER_TYPES = (FULL, SLIDING)


class _Generation(NamedTuple):
    """What transformers decides by model class rather than by config key."""

    sandwich_norms: bool
    qk_norm: bool
    ignores_attn_softcap: bool
    norm_offset: float  # RMSNorm scales by (norm_offset + w)
    value_norm: bool  # weightless RMSNorm over each head of v
    layer_scalar: bool  # each layer's output times a stored scalar
    mlp_input_norm: str = "pre_feedforward_layernorm"  # checkpoint name of the norm before the MLP


_GENERATIONS = {
    "gemma": _Generation(False, False, False, 1.0, False, False, "post_attention_layernorm"),
    "gemma2": _Generation(True, False, False, 1.0, False, False),
    # VaultGemma: Gemma 2 without the norms on attention's and the MLP's outputs (its block
    # is Gemma 1's, with Gemma 2's name for the MLP's input norm)
    "vaultgemma": _Generation(False, False, False, 1.0, False, False),
    "gemma3_text": _Generation(True, True, True, 1.0, False, False),
    "gemma3n_text": _Generation(True, True, True, 0.0, True, False),
    "gemma4_text": _Generation(True, True, True, 0.0, True, True),
    # Gemma 4 12B "Unified": Gemma 4's layer without per-layer embeddings or experts
    "gemma4_unified_text": _Generation(True, True, True, 0.0, True, True),
}
_GEMMA4 = ("gemma4_text", "gemma4_unified_text")  # read alike (the unified config has no PLE/MoE keys)
# Multimodal checkpoints nest the text model's config under "text_config".
_MULTIMODAL = {"gemma3": "gemma3_text", "gemma3n": "gemma3n_text", "gemma4": "gemma4_text",
               "gemma4_unified": "gemma4_unified_text"}
# Activation names that mean GeGLU with the tanh GELU. Old Gemma 1 configs say
# "gelu"; transformers maps that to the tanh form and so do we.
_TANH_GELU_NAMES = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu"}


def config_fields(d: dict, source: str = "config.json") -> dict:
    """GemmaConfig's fields from a Hugging Face config dict (either spelling transformers accepts).

    Every key is checked for its type and range; a bad one raises a GemmaRefError
    that names it.
    """
    r = _Reader(d, source)
    if d.get("model_type") in _MULTIMODAL or "text_config" in d:
        # Multimodal Gemma 3/4 (...ForConditionalGeneration): the text model's config
        # is nested; its model_type may be omitted in older files.
        text = _Reader(d.get("text_config", {}), source, "text_config.").object_itself()
        default_type = _MULTIMODAL.get(d.get("model_type"), "gemma3_text")
        carried = {k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in d}
        d = {"model_type": default_type, **carried, **text}
        r = _Reader(d, source, "text_config.")
    model_type = d.get("model_type")
    if model_type not in _GENERATIONS:
        raise GemmaRefError(
            f"{source}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(_GENERATIONS)}, and multimodal {', '.join(_MULTIMODAL)})"
        )
    gen = _GENERATIONS[model_type]
    gemma4 = model_type in _GEMMA4
    gemma3n = model_type == "gemma3n_text"
    L = r.int("num_hidden_layers")
    activation = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
    if activation not in _TANH_GELU_NAMES:
        raise GemmaRefError(f"{source}: activation {activation!r} is not Gemma's GeGLU")
    # EmbeddingGemma: Gemma 3 with every token seeing every other (no causal mask)
    both_ways = r.bool("use_bidirectional_attention", False) if model_type == "gemma3_text" else False
    if gemma4 and d.get("use_bidirectional_attention") not in (None, "vision"):
        raise GemmaRefError(f"{source}: use_bidirectional_attention "
                            f"{d['use_bidirectional_attention']!r} is not supported (causal text only)")
    full_rope, local_rope = _rope(r, model_type)
    layer_types = _layer_types(r, model_type, L)
    N = r.int("num_attention_heads")
    K = r.int("num_key_value_heads", N)
    H = r.int("head_dim")
    global_head_dim, global_kv = _full_layer_shapes(r, layer_types, H, K) if gemma4 else (None, None)
    moe = r.bool("enable_moe_block", False) if gemma4 else False
    ple = (r.int("hidden_size_per_layer_input", 0, minimum=0) if gemma4 else
           r.int("hidden_size_per_layer_input", 256) if gemma3n else 0)  # transformers' 3n default
    eos = d.get("eos_token_id", 1)
    if isinstance(eos, list):
        eos = tuple(r.int_list("eos_token_id"))
    else:
        eos = r.int("eos_token_id", 1, minimum=0)
    return dict(
        model_type=model_type,
        vocab_size=r.int("vocab_size"),
        hidden_size=r.int("hidden_size"),
        intermediate_size=_widths(r, L) if gemma3n else r.int("intermediate_size"),
        num_hidden_layers=L,
        num_attention_heads=N,
        num_key_value_heads=K,
        head_dim=H,
        rms_norm_eps=r.float("rms_norm_eps", 1e-6),
        rope_theta=full_rope[0],
        rope_scaling_factor=full_rope[1],
        partial_rotary_factor=full_rope[2],
        rope_local_base_freq=local_rope[0],
        # Gemma 4 multiplies scores by 1.0 (transformers' `scaling = 1.0`), whatever
        # query_pre_attn_scalar says: 1 ** -0.5 = 1.
        query_pre_attn_scalar=1.0 if gemma4 or gemma3n else r.opt_float("query_pre_attn_scalar"),
        attn_logit_softcapping=None if gen.ignores_attn_softcap else r.opt_float("attn_logit_softcapping"),
        final_logit_softcapping=(r.float("final_logit_softcapping", 30.0) if gemma3n
                                 else r.opt_float("final_logit_softcapping")),
        sliding_window=r.int("sliding_window", None) if model_type != "gemma" else None,
        layer_types=layer_types,
        max_position_embeddings=r.int("max_position_embeddings", 8192),
        hidden_activation=activation,
        global_head_dim=global_head_dim,
        num_global_key_value_heads=global_kv,
        attention_k_eq_v=r.bool("attention_k_eq_v", False) if gemma4 else False,
        num_kv_shared_layers=(r.int("num_kv_shared_layers", 0, minimum=0) if gemma4 else
                              r.int("num_kv_shared_layers", 15, minimum=0) if gemma3n else 0),
        use_double_wide_mlp=r.bool("use_double_wide_mlp", False) if gemma4 else False,
        hidden_size_per_layer_input=ple,
        vocab_size_per_layer_input=r.int("vocab_size_per_layer_input", 262_144) if ple else 0,
        enable_moe_block=moe,
        num_experts=r.int("num_experts") if moe else 0,
        top_k_experts=r.int("top_k_experts") if moe else 0,
        moe_intermediate_size=r.int("moe_intermediate_size") if moe else 0,
        # Gemma 3n, with transformers' defaults
        altup_num_inputs=r.int("altup_num_inputs", 4) if gemma3n else 0,
        altup_active_idx=r.int("altup_active_idx", 0, minimum=0) if gemma3n else 0,
        altup_correct_scale=r.bool("altup_correct_scale", True) if gemma3n else False,
        laurel_rank=r.int("laurel_rank", 64) if gemma3n else 0,
        activation_sparsity_pattern=_sparsity(r, L) if gemma3n else (),
        sandwich_norms=gen.sandwich_norms,
        qk_norm=gen.qk_norm,
        norm_offset=gen.norm_offset,
        value_norm=gen.value_norm,
        layer_scalar=gen.layer_scalar,
        mlp_input_norm=gen.mlp_input_norm,
        use_bidirectional_attention=both_ways,
        bos_token_id=r.int("bos_token_id", 2, minimum=0),
        eos_token_id=eos,
        pad_token_id=r.int("pad_token_id", 0, minimum=0),
    )


def load_json(path: str | Path) -> dict:
    """The JSON object in a config.json file, or a GemmaRefError saying what is wrong with it."""
    path = Path(path)
    content = files.read_bytes(path, missing="not found (a checkpoint directory needs config.json)")
    try:
        d = json.loads(content.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GemmaRefError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise GemmaRefError(f"{path}: expected a JSON object {{key: value}}, got a "
                            f"{_json_type(d)}")
    return d


# --- reading config.json, checked ---------------------------------------------------

_REQUIRED = object()


def _json_type(v) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null",
            int: "number", float: "number"}.get(type(v), type(v).__name__)


class _Reader:
    """Typed reads of config.json keys: a missing key, a wrong type or an out-of-range
    value raises a GemmaRefError naming the key (`text_config.hidden_size`)."""

    def __init__(self, d, source: str, prefix: str = ""):
        self.d, self.source, self.prefix = d, source, prefix

    def object_itself(self) -> dict:
        if not isinstance(self.d, dict):
            raise GemmaRefError(f"{self.source}: {self.prefix.rstrip('.')} must be a JSON object, "
                                f"got a {_json_type(self.d)}")
        return self.d

    def _bad(self, key, what, value):
        return GemmaRefError(f"{self.source}: {self.prefix}{key} must be {what}, got {value!r}")

    def get(self, key, default=_REQUIRED):
        if key not in self.d or (self.d[key] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise GemmaRefError(f"{self.source}: missing required key {self.prefix}{key!r}")
            return default
        return self.d[key]

    def int(self, key, default=_REQUIRED, minimum=1):
        v = self.get(key, default)
        if v is None and default is None:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise self._bad(key, "a positive integer" if minimum == 1 else f"an integer >= {minimum}", v)
        return v

    def int_list(self, key) -> list[int]:
        v = self.get(key)
        if not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v):
            raise self._bad(key, "an integer or a list of integers >= 0", v)
        return v

    def float(self, key, default=_REQUIRED):
        v = self.get(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or v == float("inf"):
            raise self._bad(key, "a positive number", v)
        return float(v)

    def opt_float(self, key):
        return None if self.d.get(key) is None else self.float(key)

    def fraction(self, key, default):
        v = self.get(key, default)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v <= 1:
            raise self._bad(key, "a number in [0, 1]", v)
        return float(v)

    def bool(self, key, default):
        v = self.get(key, default)
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def obj(self, key) -> "_Reader":
        v = self.get(key, {})
        if not isinstance(v, dict):
            raise self._bad(key, "a JSON object", v)
        return _Reader(v, self.source, f"{self.prefix}{key}.")


def _rope(r: _Reader, model_type: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """(theta, linear factor, rotated fraction) for full layers and for sliding layers.

    transformers 5 writes `rope_parameters` (one dict per layer type for Gemma 3 and 4);
    older files write `rope_theta`, `rope_local_base_freq` and `rope_scaling`.
    """
    params = r.obj("rope_parameters")
    if model_type in _GEMMA4 and not params.d:  # transformers' defaults for Gemma 4
        params = _Reader({FULL: {"rope_type": "proportional", "partial_rotary_factor": 0.25,
                                 "rope_theta": 1_000_000.0},
                          SLIDING: {"rope_type": "default", "rope_theta": 10_000.0}}, r.source,
                         r.prefix + "rope_parameters.")
    if FULL in params.d or SLIDING in params.d:  # per layer type (Gemma 3, 4, transformers >= 5)
        full, local = params.obj(FULL), params.obj(SLIDING)
    elif params.d:  # one dict for every layer (Gemma 1, 2)
        full = local = params
    else:
        full = _Reader({"rope_theta": r.d.get("rope_theta"), **(r.obj("rope_scaling").d)}, r.source, r.prefix)
        local = _Reader({"rope_theta": r.d.get("rope_local_base_freq")}, r.source, r.prefix)
    default_full = 1_000_000.0 if model_type in ("gemma3_text", "gemma3n_text", *_GEMMA4) else 10_000.0
    full_rope = (full.float("rope_theta", default_full), *_scaling(full))
    local_rope = (local.float("rope_theta", 10_000.0), *_scaling(local))
    if local_rope[2] != 1.0:
        raise GemmaRefError(f"{r.source}: partial RoPE on sliding layers is not supported")
    return full_rope, local_rope


def _scaling(p: _Reader) -> tuple[float, float]:
    """(linear factor, fraction of the pairs that rotate) of one rope_parameters dict."""
    kind = p.d.get("rope_type", p.d.get("type", "default"))
    if kind in (None, "default"):
        return 1.0, 1.0
    if kind == "linear":
        return p.float("factor"), 1.0
    if kind == "proportional":  # Gemma 4: the first fraction of the pairs rotate, the rest do not
        return p.float("factor", 1.0), p.fraction("partial_rotary_factor", 1.0)
    raise GemmaRefError(f"{p.source}: RoPE type {kind!r} is not supported "
                        f"(Gemma uses default, linear or proportional)")


def _layer_types(r: _Reader, model_type: str, L: int) -> tuple[str, ...]:
    if r.d.get("layer_types"):
        types = r.d["layer_types"]
        if not isinstance(types, list):
            raise r._bad("layer_types", "a list of layer types", types)
        for i, t in enumerate(types):
            if t not in LAYER_TYPES:
                raise GemmaRefError(f"{r.source}: {r.prefix}layer_types[{i}] is {t!r}; gemma-ref knows "
                                    f"{' and '.join(LAYER_TYPES)}")
        types = tuple(types)
        if model_type in _GEMMA4 and types[-1] != FULL:
            types = types[:-1] + (FULL,)  # as transformers: Gemma 4's last layer is always full
        return types
    if model_type == "gemma":
        return (FULL,) * L
    if model_type in ("gemma2", "vaultgemma"):  # local, global, local, ... (layer 0 local)
        return tuple(SLIDING if i % 2 == 0 else FULL for i in range(L))
    # Gemma 3, 4: every 6th layer is global; Gemma 3n: every 5th
    pattern = r.int("sliding_window_pattern", 5 if model_type == "gemma3n_text" else 6)
    types = tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(L))
    return types[:-1] + (FULL,) if model_type in _GEMMA4 else types


def _full_layer_shapes(r: _Reader, layer_types, H: int, K: int) -> tuple[int, int | None]:
    """(head_dim, kv heads) of Gemma 4's full-attention layers.

    Hub files state `global_head_dim` (default 512) and `num_global_key_value_heads`
    (used only with attention_k_eq_v); transformers >= 5.24 writes instead the
    overrides per layer, `per_layer_config: {"04": {"head_dim": 512}, ...}`.
    Either way every full layer has one shape and every sliding layer the global one.
    """
    if "per_layer_config" not in r.d:
        kv = r.int("num_global_key_value_heads", None) if r.bool("attention_k_eq_v", False) else None
        return r.int("global_head_dim", 512), kv
    per_layer = r.obj("per_layer_config")
    shapes = {}
    for key, over in per_layer.d.items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < len(layer_types)):
            raise per_layer._bad(key, "keyed by a layer index", key)
        if not isinstance(over, dict) or set(over) - {"head_dim", "num_key_value_heads"}:
            raise GemmaRefError(f"{r.source}: {per_layer.prefix}{key}: only head_dim and "
                                f"num_key_value_heads overrides are supported, got {over!r}")
        o = _Reader(over, r.source, f"{per_layer.prefix}{key}.")
        shapes[int(key)] = (o.int("head_dim", H), o.int("num_key_value_heads", K))
    full = {shapes.get(i, (H, K)) for i, t in enumerate(layer_types) if t == FULL}
    sliding = {shapes.get(i, (H, K)) for i, t in enumerate(layer_types) if t == SLIDING}
    if len(full) > 1 or sliding - {(H, K)}:
        raise GemmaRefError(f"{r.source}: {per_layer.prefix.rstrip('.')}: every full-attention layer "
                            f"must have one shape and sliding layers the global one")
    (Hf, Kf), = full or {(H, K)}
    return Hf, Kf


def _widths(r: _Reader, L: int) -> tuple[int, ...]:
    """Gemma 3n's intermediate_size: one for all layers, or a list with one per layer."""
    v = r.get("intermediate_size")
    if not isinstance(v, list):
        return (r.int("intermediate_size"),) * L
    if len(v) != L or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in v):
        raise r._bad("intermediate_size", f"a positive integer or a list of {L}", v)
    return tuple(v)


def _sparsity(r: _Reader, L: int) -> tuple[float, ...]:
    """Gemma 3n's activation_sparsity_pattern; missing: transformers' default, 0.95 on
    the first 10 layers of a model with more than 10 (none otherwise)."""
    v = r.get("activation_sparsity_pattern", None)
    if v is None:
        n = 10 if L > 10 else 0
        return (0.95,) * n + (0.0,) * (L - n)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        v = [v] * L
    if (not isinstance(v, list) or len(v) != L
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in v)):
        raise r._bad("activation_sparsity_pattern", f"a list of {L} numbers in [0, 1)", v)
    return tuple(float(x) for x in v)
