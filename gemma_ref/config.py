"""Gemma configuration: one frozen dataclass for every generation.

Field names are the Hugging Face `config.json` keys, so a reader can put our
config beside a checkpoint's and compare line by line. Gemma 1, 2 and 3 differ
only in the values of these fields (grep for `model_type` to see each one):

    field                      Gemma 1     Gemma 2            Gemma 3
    sandwich_norms             False       True               True
    qk_norm                    False       False              True
    attn_logit_softcapping     None        50.0               None (ignored)
    final_logit_softcapping    None        30.0               None
    query_pre_attn_scalar      head_dim    head_dim or 144    head_dim or 168
    layer_types                all full    local, full, ...   5 local : 1 full
    rope_local_base_freq       -           -                  10 000 (local layers)
    rope_scaling_factor        1           1                  8 on full layers (4B+)

`sandwich_norms` and `qk_norm` are not keys of `config.json`; transformers
decides them by model class, so we derive them from `model_type` in
`GemmaConfig.from_dict` (the one place that does).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import GemmaRefError

FULL = "full_attention"
SLIDING = "sliding_attention"

# model_type -> (sandwich_norms, qk_norm, ignores attn_logit_softcapping)
_GENERATIONS = {
    "gemma": (False, False, False),
    "gemma2": (True, False, False),
    "gemma3_text": (True, True, True),
}
# Activation names that mean GeGLU with the tanh GELU. Old Gemma 1 configs say
# "gelu"; transformers maps that to the tanh form and so do we.
_TANH_GELU_NAMES = {"gelu_pytorch_tanh", "gelu_new", "gelu_fast", "gelu"}


@dataclass(frozen=True)
class GemmaConfig:
    model_type: str  # "gemma" (Gemma 1), "gemma2", "gemma3_text"
    vocab_size: int  # rows of the embedding table (may exceed the tokenizer's vocab)
    hidden_size: int  # D
    intermediate_size: int  # F, the GeGLU width
    num_hidden_layers: int  # L
    num_attention_heads: int  # N query heads
    num_key_value_heads: int  # K kv heads (1 = multi-query, N = multi-head)
    head_dim: int  # H, stated by the checkpoint (Gemma 7B: 256, not 3072 / 16)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0  # RoPE base of full-attention layers
    rope_local_base_freq: float = 10_000.0  # RoPE base of sliding layers (Gemma 3)
    rope_scaling_factor: float = 1.0  # linear RoPE scaling on full layers (Gemma 3 4B+: 8)
    query_pre_attn_scalar: float | None = None  # queries scaled by this ** -0.5; None = head_dim
    attn_logit_softcapping: float | None = None  # cap * tanh(scores / cap) (Gemma 2)
    final_logit_softcapping: float | None = None  # cap * tanh(logits / cap) (Gemma 2)
    sliding_window: int | None = None  # w: query i sees key j iff 0 <= i - j < w
    layer_types: tuple[str, ...] = ()  # per layer, FULL or SLIDING
    max_position_embeddings: int = 8192
    hidden_activation: str = "gelu_pytorch_tanh"
    sandwich_norms: bool = False  # post-attention / pre+post-feedforward norms (Gemma 2, 3)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Gemma 3)
    bos_token_id: int = 2
    eos_token_id: int | tuple[int, ...] = 1
    pad_token_id: int = 0

    def __post_init__(self):
        if len(self.layer_types) != self.num_hidden_layers:
            raise GemmaRefError(
                f"config: layer_types has {len(self.layer_types)} entries for "
                f"{self.num_hidden_layers} layers"
            )
        if SLIDING in self.layer_types and not self.sliding_window:
            raise GemmaRefError("config: sliding layers need a sliding_window")
        if self.num_attention_heads % self.num_key_value_heads:
            raise GemmaRefError(
                f"config: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @property
    def query_scale(self) -> float:
        """Queries are multiplied by this: query_pre_attn_scalar ** -0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def num_parameters(self) -> int:
        """Parameter count of the text model (tied embedding counted once)."""
        D, F, H = self.hidden_size, self.intermediate_size, self.head_dim
        N, K, L = self.num_attention_heads, self.num_key_value_heads, self.num_hidden_layers
        attn = D * N * H + 2 * D * K * H + N * H * D
        norms = (4 if self.sandwich_norms else 2) * D + (2 * H if self.qk_norm else 0)
        return self.vocab_size * D + L * (attn + 3 * D * F + norms) + D

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "GemmaConfig":
        """Read a Hugging Face config dict (either spelling transformers accepts)."""
        if d.get("model_type") == "gemma3" or "text_config" in d:
            # Multimodal Gemma 3 (Gemma3ForConditionalGeneration): the text model's
            # config is nested; its model_type may be omitted in older files.
            d = {"model_type": "gemma3_text", **d.get("text_config", {})}
        model_type = d.get("model_type")
        if model_type not in _GENERATIONS:
            raise GemmaRefError(
                f"{source}: model_type {model_type!r} is not supported "
                f"(supported: {', '.join(_GENERATIONS)}, and multimodal 'gemma3')"
            )
        sandwich, qk_norm, ignores_attn_cap = _GENERATIONS[model_type]
        try:
            L = int(d["num_hidden_layers"])
            activation = d.get("hidden_activation") or d.get("hidden_act") or "gelu_pytorch_tanh"
            if activation not in _TANH_GELU_NAMES:
                raise GemmaRefError(f"{source}: activation {activation!r} is not Gemma's GeGLU")
            full_rope, local_rope = _rope(d, model_type)
            eos = d.get("eos_token_id", 1)
            return cls(
                model_type=model_type,
                vocab_size=int(d["vocab_size"]),
                hidden_size=int(d["hidden_size"]),
                intermediate_size=int(d["intermediate_size"]),
                num_hidden_layers=L,
                num_attention_heads=int(d["num_attention_heads"]),
                num_key_value_heads=int(d.get("num_key_value_heads") or d["num_attention_heads"]),
                head_dim=int(d["head_dim"]),
                rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
                rope_theta=full_rope[0],
                rope_scaling_factor=full_rope[1],
                rope_local_base_freq=local_rope[0],
                query_pre_attn_scalar=d.get("query_pre_attn_scalar"),
                attn_logit_softcapping=None if ignores_attn_cap else d.get("attn_logit_softcapping"),
                final_logit_softcapping=d.get("final_logit_softcapping"),
                sliding_window=d.get("sliding_window") if model_type != "gemma" else None,
                layer_types=_layer_types(d, model_type, L),
                max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
                hidden_activation=activation,
                sandwich_norms=sandwich,
                qk_norm=qk_norm,
                bos_token_id=int(d.get("bos_token_id", 2)),
                eos_token_id=tuple(eos) if isinstance(eos, list) else int(eos),
                pad_token_id=int(d.get("pad_token_id") or 0),
            )
        except KeyError as e:
            raise GemmaRefError(f"{source}: missing required key {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            raise GemmaRefError(f"{source}: invalid value ({e})") from None

    @classmethod
    def from_json(cls, path: str | Path) -> "GemmaConfig":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise GemmaRefError(f"{path}: not found (a checkpoint directory needs config.json)") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GemmaRefError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, source=str(path))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d


def _rope(d: dict, model_type: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """(theta, linear factor) for full layers and for sliding layers.

    transformers 5 writes `rope_parameters` (one dict per layer type for Gemma 3);
    older files write `rope_theta`, `rope_local_base_freq` and `rope_scaling`.
    """
    params = d.get("rope_parameters")
    if params and FULL in params:  # per layer type (Gemma 3, transformers >= 5)
        full, local = params[FULL], params.get(SLIDING, {})
    elif params:  # one dict for every layer (Gemma 1, 2)
        full = local = params
    else:
        full = {"rope_theta": d.get("rope_theta"), **(d.get("rope_scaling") or {})}
        local = {"rope_theta": d.get("rope_local_base_freq")}
    default_full = 1_000_000.0 if model_type == "gemma3_text" else 10_000.0
    return (
        (float(full.get("rope_theta") or default_full), _linear_factor(full)),
        (float(local.get("rope_theta") or 10_000.0), _linear_factor(local)),
    )


def _linear_factor(p: dict) -> float:
    kind = p.get("rope_type", p.get("type", "default"))
    if kind in (None, "default"):
        return 1.0
    if kind != "linear":
        raise GemmaRefError(f"config: RoPE type {kind!r} is not supported (Gemma uses default or linear)")
    return float(p["factor"])


def _layer_types(d: dict, model_type: str, L: int) -> tuple[str, ...]:
    if d.get("layer_types"):
        return tuple(d["layer_types"])
    if model_type == "gemma":
        return (FULL,) * L
    if model_type == "gemma2":  # local, global, local, ... (layer 0 local)
        return tuple(SLIDING if i % 2 == 0 else FULL for i in range(L))
    pattern = int(d.get("sliding_window_pattern", 6))  # Gemma 3: every 6th layer is global
    return tuple(FULL if (i + 1) % pattern == 0 else SLIDING for i in range(L))


def _preset(**kw) -> GemmaConfig:
    return GemmaConfig.from_dict(kw, source="preset")


_G1 = dict(model_type="gemma", vocab_size=256_000, head_dim=256)
_G2 = dict(model_type="gemma2", vocab_size=256_000, sliding_window=4096,
           attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
_G3 = dict(model_type="gemma3_text", vocab_size=262_144, head_dim=256, rope_theta=1_000_000.0,
           rope_local_base_freq=10_000.0, query_pre_attn_scalar=256)
_G3_BIG = dict(_G3, vocab_size=262_208, sliding_window=1024,
               rope_scaling={"rope_type": "linear", "factor": 8.0})

# Architecture presets (the text model). Parameter counts from `num_parameters`.
PRESETS: dict[str, GemmaConfig] = {
    "2b": _preset(**_G1, hidden_size=2048, intermediate_size=16384, num_hidden_layers=18,  # 2.51 B
                  num_attention_heads=8, num_key_value_heads=1),
    "7b": _preset(**_G1, hidden_size=3072, intermediate_size=24576, num_hidden_layers=28,  # 8.54 B
                  num_attention_heads=16, num_key_value_heads=16),
    "2-2b": _preset(**_G2, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,  # 2.61 B
                    num_attention_heads=8, num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256),
    "2-9b": _preset(**_G2, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,  # 9.24 B
                    num_attention_heads=16, num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256),
    "2-27b": _preset(**_G2, hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,  # 27.2 B
                     num_attention_heads=32, num_key_value_heads=16, head_dim=128, query_pre_attn_scalar=144),
    "3-270m": _preset(**_G3, hidden_size=640, intermediate_size=2048, num_hidden_layers=18,  # 268 M
                      num_attention_heads=4, num_key_value_heads=1, sliding_window=512),
    "3-1b": _preset(**_G3, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26,  # 1.00 B
                    num_attention_heads=4, num_key_value_heads=1, sliding_window=512),
    "3-4b": _preset(**_G3_BIG, hidden_size=2560, intermediate_size=10240, num_hidden_layers=34,  # 3.88 B
                    num_attention_heads=8, num_key_value_heads=4),
    "3-12b": _preset(**_G3_BIG, hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,  # 11.8 B
                     num_attention_heads=16, num_key_value_heads=8),
    "3-27b": _preset(**dict(_G3_BIG, query_pre_attn_scalar=168, head_dim=128),  # 27.0 B
                     hidden_size=5376, intermediate_size=21504, num_hidden_layers=62,
                     num_attention_heads=32, num_key_value_heads=16),
}
