"""Gemma configuration: one frozen dataclass for every generation.

Field names are the Hugging Face `config.json` keys, so a reader can put our
config beside a checkpoint's and compare line by line. Gemma 1, 2, 3, 3n and 4
differ only in the values of these fields (grep for `model_type` to see each one;
Gemma 3n is like Gemma 4 in the rows below, except that its last layer need not be
full and its RoPE rotates every pair):

    field                      Gemma 1     Gemma 2            Gemma 3             Gemma 4
    sandwich_norms             False       True               True                True
    qk_norm                    False       False              True                True
    norm_offset                1           1                  1                   0 (norms scale by w)
    value_norm                 False       False              False               True (weightless)
    attn_logit_softcapping     None        50.0               None (ignored)      None (ignored)
    final_logit_softcapping    None        30.0               None                30.0
    query_pre_attn_scalar      head_dim    head_dim or 144    head_dim or 168     1 (scores unscaled)
    layer_types                all full    local, full, ...   5 local : 1 full    4 or 5 : 1, last full
    rope_local_base_freq       -           -                  10 000              10 000
    rope_scaling_factor        1           1                  8 on full (4B+)     1
    partial_rotary_factor      1           1                  1                   0.25 on full layers

VaultGemma (model_type "vaultgemma") is Gemma 2 without the norms on attention's and
the MLP's outputs (sandwich_norms False; its MLP's input norm keeps Gemma 2's name,
`mlp_input_norm`); its config.json states all-full `layer_types`.

Gemma 4 adds per-layer shapes (`global_head_dim`, `num_global_key_value_heads`),
keys shared between layers (`num_kv_shared_layers`, `attention_k_eq_v`),
per-layer embeddings (`hidden_size_per_layer_input`) and a mixture of experts
(`enable_moe_block`). Gemma 3n (the first with KV sharing and per-layer
embeddings) adds AltUp streams (`altup_num_inputs`), a LAuReL branch
(`laurel_rank`), sparse activations (`activation_sparsity_pattern`) and an MLP
width per layer (`intermediate_size` as a list). What each layer computes is resolved once, from these
fields, into `GemmaConfig.layers` (one `LayerSpec` per layer): model.py reads
per-layer facts from there and never re-derives them.

`sandwich_norms`, `qk_norm`, `norm_offset`, `value_norm` and `layer_scalar` are
not keys of `config.json`; transformers decides them by model class, so we derive
them from `model_type` when reading config.json (config_json.py, the one place that
does), which also checks every key's type and range, naming the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

from .config_json import FULL, SLIDING, config_fields, load_json
from .errors import GemmaRefError



class Rope(NamedTuple):
    """One RoPE table: angle of pair i at position p = p * theta^(-2i/head_dim) / factor
    for the first `rotated` of the head_dim/2 pairs; the other pairs do not rotate
    (Gemma 4's proportional RoPE: note the exponent's denominator is the full head_dim)."""

    theta: float
    factor: float  # linear position scaling (Gemma 3 4B+ full layers: 8)
    head_dim: int
    rotated: int  # frequency pairs that rotate, <= head_dim / 2


@dataclass(frozen=True)
class LayerSpec:
    """What layer i computes, resolved once from the config (see GemmaConfig.layers)."""

    kind: str  # FULL or SLIDING
    # sliding window: a query sees keys less than `window` before it (None: full attention);
    # bidirectional (EmbeddingGemma) also less than `window` after it, and window is then
    # sliding_window // 2 + 1, the exclusive bound transformers derives from the config's
    window: int | None
    head_dim: int  # H of this layer's heads (Gemma 4 full layers: global_head_dim)
    num_key_value_heads: int  # K of this layer
    kv_source: int  # the layer whose keys/values this one attends with (itself unless shared)
    shares_kv: bool  # later layers attend with this layer's keys/values
    v_proj: bool  # False: values are the raw key projection (attention_k_eq_v)
    intermediate_size: int  # F of its MLP (doubled on shared layers: use_double_wide_mlp)
    rope: Rope  # its RoPE table
    activation_sparsity: float = 0.0  # Gemma 3n: gate activations pass a Gaussian top-k keeping ~1 - this


@dataclass(frozen=True)
class GemmaConfig:
    model_type: str  # "gemma" (Gemma 1), "gemma2", "vaultgemma", "gemma3_text", "gemma3n_text", "gemma4_text"
    vocab_size: int  # rows of the embedding table (may exceed the tokenizer's vocab)
    hidden_size: int  # D
    intermediate_size: int | tuple[int, ...]  # F, the GeGLU width (Gemma 3n: one per layer)
    num_hidden_layers: int  # L
    num_attention_heads: int  # N query heads
    num_key_value_heads: int  # K kv heads (1 = multi-query, N = multi-head)
    head_dim: int  # H, stated by the checkpoint (Gemma 7B: 256, not 3072 / 16)
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0  # RoPE base of full-attention layers
    rope_local_base_freq: float = 10_000.0  # RoPE base of sliding layers (Gemma 3, 4)
    rope_scaling_factor: float = 1.0  # linear RoPE scaling on full layers (Gemma 3 4B+: 8)
    partial_rotary_factor: float = 1.0  # fraction of full layers' RoPE pairs that rotate (Gemma 4: 0.25)
    query_pre_attn_scalar: float | None = None  # queries scaled by this ** -0.5; None = head_dim
    attn_logit_softcapping: float | None = None  # cap * tanh(scores / cap) (Gemma 2)
    final_logit_softcapping: float | None = None  # cap * tanh(logits / cap) (Gemma 2, 4)
    sliding_window: int | None = None  # w: query i sees key j iff 0 <= i - j < w
    layer_types: tuple[str, ...] = ()  # per layer, FULL or SLIDING
    max_position_embeddings: int = 8192
    hidden_activation: str = "gelu_pytorch_tanh"
    # Gemma 4 (defaults: off)
    global_head_dim: int | None = None  # H of full-attention layers (None: head_dim)
    num_global_key_value_heads: int | None = None  # K of full layers (None: num_key_value_heads)
    attention_k_eq_v: bool = False  # full layers have no v_proj: V is the raw K projection
    num_kv_shared_layers: int = 0  # the last this many layers reuse earlier layers' K/V
    use_double_wide_mlp: bool = False  # those shared layers have an MLP of width 2F
    hidden_size_per_layer_input: int = 0  # P of the per-layer embeddings (0: none)
    vocab_size_per_layer_input: int = 0  # rows of the per-layer embedding table
    enable_moe_block: bool = False  # a mixture of experts beside each layer's MLP
    num_experts: int = 0  # E
    top_k_experts: int = 0  # experts per token
    moe_intermediate_size: int = 0  # F of each expert
    # Gemma 3n (defaults: off); it also uses num_kv_shared_layers and the per-layer embeddings.
    # Not read: altup_coef_clip (transformers clamps the coefficients only when training).
    altup_num_inputs: int = 0  # S AltUp streams the residual is split into (0: none, one stream)
    altup_active_idx: int = 0  # the stream the decoder blocks run on
    altup_correct_scale: bool = False  # the corrected active stream is scaled before gating the PLE
    laurel_rank: int = 0  # r of the LAuReL branch beside attention (0: none)
    activation_sparsity_pattern: tuple[float, ...] = ()  # per layer, target sparsity of the gate (0: dense)
    # decided by model class in transformers (config_json._GENERATIONS)
    sandwich_norms: bool = False  # post-attention / pre+post-feedforward norms (Gemma 2, 3, 4)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Gemma 3, 4)
    norm_offset: float = 1.0  # RMSNorm scales by (norm_offset + w): 1 for Gemma 1-3, 0 for Gemma 4
    value_norm: bool = False  # weightless RMSNorm over each head of v (Gemma 4)
    layer_scalar: bool = False  # each layer's output times model.layers.i.layer_scalar (Gemma 4)
    mlp_input_norm: str = "post_attention_layernorm"  # checkpoint name of the MLP's input norm
    # (Gemma 1's; Gemma 2 and later, VaultGemma included: "pre_feedforward_layernorm")
    # EmbeddingGemma (gemma3_text, an encoder): no causal mask; a sliding layer sees the
    # sliding_window // 2 tokens on either side (LayerSpec.window)
    use_bidirectional_attention: bool = False
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
        for key in ("num_key_value_heads", "num_global_key_value_heads"):
            K = getattr(self, key)
            if K is not None and self.num_attention_heads % K:
                raise GemmaRefError(
                    f"config: num_attention_heads ({self.num_attention_heads}) is not a multiple of "
                    f"{key} ({K})"
                )
        if not 0 <= self.num_kv_shared_layers < self.num_hidden_layers:
            raise GemmaRefError(f"config: num_kv_shared_layers ({self.num_kv_shared_layers}) must be "
                                f"in [0, num_hidden_layers = {self.num_hidden_layers})")
        if self.altup_num_inputs and not 0 <= self.altup_active_idx < self.altup_num_inputs:
            raise GemmaRefError(f"config: altup_active_idx ({self.altup_active_idx}) must be in "
                                f"[0, altup_num_inputs = {self.altup_num_inputs})")
        for key in ("intermediate_size", "activation_sparsity_pattern"):
            v = getattr(self, key)
            if isinstance(v, tuple) and v and len(v) != self.num_hidden_layers:
                raise GemmaRefError(f"config: {key} has {len(v)} entries for {self.num_hidden_layers} layers")
        if self.enable_moe_block and not 1 <= self.top_k_experts <= self.num_experts:
            raise GemmaRefError(f"config: top_k_experts ({self.top_k_experts}) must be in "
                                f"[1, num_experts = {self.num_experts}]")
        self.layers  # resolve (and check) the per-layer records now, not at the first forward

    @cached_property
    def layers(self) -> tuple[LayerSpec, ...]:
        """One LayerSpec per layer: shapes, attention span, K/V source, MLP width, RoPE.

        KV sharing (Gemma 3n, 4): the last num_kv_shared_layers layers compute no keys
        or values; each attends with those of the last earlier layer of its own type.
        """
        L, types = self.num_hidden_layers, self.layer_types
        first_shared = L - self.num_kv_shared_layers
        sources = []
        for i, kind in enumerate(types):
            if i < first_shared:
                sources.append(i)
                continue
            own = [j for j in range(first_shared) if types[j] == kind]
            if not own:
                raise GemmaRefError(f"config: layer {i} ({kind}) shares keys/values, but no earlier "
                                    f"layer of that type computes them (num_kv_shared_layers)")
            sources.append(own[-1])
        specs = []
        widths = self.intermediate_size if isinstance(self.intermediate_size, tuple) else (self.intermediate_size,) * L
        for i, kind in enumerate(types):
            full, shared = kind == FULL, sources[i] != i
            H = (self.global_head_dim or self.head_dim) if full else self.head_dim
            K = self.num_key_value_heads
            if full and self.num_global_key_value_heads:
                K = self.num_global_key_value_heads
            rope = Rope(self.rope_local_base_freq, 1.0, H, H // 2)  # sliding layers: all pairs turn
            if full:  # proportional RoPE: the first partial_rotary_factor of the pairs turn
                rope = Rope(self.rope_theta, self.rope_scaling_factor, H, int(self.partial_rotary_factor * H // 2))
            window = self.sliding_window // 2 + 1 if self.use_bidirectional_attention else self.sliding_window
            specs.append(LayerSpec(
                kind=kind, window=None if full else window, head_dim=H,
                num_key_value_heads=K, kv_source=sources[i], shares_kv=i in sources[first_shared:],
                v_proj=not (self.attention_k_eq_v and full),
                intermediate_size=widths[i] * (2 if shared and self.use_double_wide_mlp else 1),
                rope=rope, activation_sparsity=(self.activation_sparsity_pattern or (0.0,) * L)[i]))
        return tuple(specs)

    @cached_property
    def ropes(self) -> tuple[Rope, ...]:
        """The distinct RoPE tables the layers use (one per kind of layer)."""
        return tuple(dict.fromkeys(s.rope for s in self.layers))

    @property
    def query_scale(self) -> float:
        """Queries are multiplied by this: query_pre_attn_scalar ** -0.5."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    @property
    def num_parameters(self) -> int:
        """Parameter count of the text model (tied embedding counted once)."""
        D, N, L = self.hidden_size, self.num_attention_heads, self.num_hidden_layers
        P = self.hidden_size_per_layer_input
        total = self.vocab_size * D + D
        if P:  # per-layer embeddings: table, projection of the embedding, its norm
            total += self.vocab_size_per_layer_input * L * P + D * L * P + P
        for i, s in enumerate(self.layers):
            H, K, F = s.head_dim, s.num_key_value_heads, s.intermediate_size
            total += 2 * D * N * H + 3 * D * F  # q, o; gate, up, down
            if s.kv_source == i:
                total += D * K * H * (2 if s.v_proj else 1) + (H if self.qk_norm else 0)  # k (v), k_norm
            total += (4 if self.sandwich_norms else 2) * D + (H if self.qk_norm else 0)  # norms, q_norm
            total += (1 if self.layer_scalar else 0) + (2 * D * P + D if P else 0)
            if self.enable_moe_block:  # router (proj, scale, per-expert scale), experts, 3 norms
                E, Fm = self.num_experts, self.moe_intermediate_size
                total += E * D + D + E + E * 3 * D * Fm + 3 * D
            if self.altup_num_inputs:  # router and its norm, coefficients, output scale
                S = self.altup_num_inputs
                total += S * D + D + S * S * S + S * S + D
            if self.laurel_rank:  # left, right, norm
                total += 2 * D * self.laurel_rank + D
        if self.altup_num_inputs:  # the streams' projections in and out
            total += 2 * (self.altup_num_inputs - 1) * D * D
        return total

    def summary(self) -> list[str]:
        """What is special about this model, one line each (for `gemma-ref info`)."""
        lines = []
        shapes = sorted({(s.kind, s.head_dim, s.num_key_value_heads) for s in self.layers})
        if len({shape[1:] for shape in shapes}) > 1:
            lines.append("per-layer shapes  " + "; ".join(
                f"{kind.split('_')[0]}: head_dim {H}, {K} kv heads" for kind, H, K in shapes))
        if self.num_kv_shared_layers:
            first = self.num_hidden_layers - self.num_kv_shared_layers
            wide = ", MLP 2x wide" if self.use_double_wide_mlp else ""
            last = self.num_hidden_layers - 1
            span = f"layers {first}-{last}" if first < last else f"layer {first}"
            lines.append(f"shared K/V        {span} attend with the K/V of layer(s) "
                         f"{', '.join(map(str, sorted({s.kv_source for s in self.layers[first:]})))} "
                         f"(no cache of their own{wide})")
        if self.attention_k_eq_v:
            lines.append("K = V             full-attention layers take V from the K projection")
        if self.hidden_size_per_layer_input:
            V, L, P = self.vocab_size_per_layer_input, self.num_hidden_layers, self.hidden_size_per_layer_input
            lines.append(f"per-layer embed.  {V} x {L} x {P} = {V * L * P:,} values "
                         f"(memory-mapped, rows read per token)")
        if self.altup_num_inputs:
            scale = ", output scaled" if self.altup_correct_scale else ""
            lines.append(f"AltUp             {self.altup_num_inputs} streams, blocks run on stream "
                         f"{self.altup_active_idx}; predict/correct around each layer{scale}")
        if self.laurel_rank:
            lines.append(f"LAuReL            rank {self.laurel_rank} residual branch beside attention")
        sparse = [(i, s.activation_sparsity) for i, s in enumerate(self.layers) if s.activation_sparsity]
        if sparse:
            ids = [i for i, _ in sparse]
            where = f"{ids[0]}-{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) else ", ".join(map(str, ids))
            targets = [a for _, a in sparse]  # in the order of the layers named
            lines.append(f"sparse gate       Gaussian top-k on layers {where}, target "
                         f"{', '.join(f'{a:g}' for a in targets)}")
        widths = [s.intermediate_size for s in self.layers]
        if len(set(widths)) > 1:
            lines.append(f"MLP widths        {', '.join(map(str, widths))} (layer 0 to {len(widths) - 1})")
        if self.enable_moe_block:
            lines.append(f"experts           {self.num_experts} per layer, top {self.top_k_experts}, "
                         f"width {self.moe_intermediate_size}, beside a dense MLP of {self.intermediate_size}")
        if not self.sandwich_norms and self.mlp_input_norm == "pre_feedforward_layernorm":
            lines.append("norms             before attention and the MLP only, none on their outputs "
                         "(VaultGemma)")
        if self.partial_rotary_factor != 1.0:
            lines.append(f"RoPE              full layers rotate {self.partial_rotary_factor:g} of their pairs")
        return lines

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "GemmaConfig":
        """Read a Hugging Face config dict (either spelling transformers accepts).

        Every key is checked for its type and range; a bad one raises a GemmaRefError
        that names it (config_json.py).
        """
        return cls(**config_fields(d, source))

    @classmethod
    def from_json(cls, path: str | Path) -> "GemmaConfig":
        return cls.from_dict(load_json(path), source=str(path))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["layer_types"] = list(self.layer_types)
        return d


def _preset(**kw) -> GemmaConfig:
    return GemmaConfig.from_dict(kw, source="preset")


_G1 = dict(model_type="gemma", vocab_size=256_000, head_dim=256)
_G2 = dict(model_type="gemma2", vocab_size=256_000, sliding_window=4096,
           attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
_G3 = dict(model_type="gemma3_text", vocab_size=262_144, head_dim=256, rope_theta=1_000_000.0,
           rope_local_base_freq=10_000.0, query_pre_attn_scalar=256)
_G3_BIG = dict(_G3, vocab_size=262_208, sliding_window=1024,
               rope_scaling={"rope_type": "linear", "factor": 8.0})
# Gemma 4: rope_parameters default to transformers' (sliding: default, 1e4; full:
# proportional, 0.25 of the pairs, 1e6); full layers have head_dim 512.
# Gemma 3n (google/gemma-3n-E2B, -E4B: text_config): 8 heads / 2 kv / 256 wide, 4 AltUp
# streams, LAuReL rank 64, per-layer embeddings 262144 x L x 256, sparse gates on layers 0-9.
_G3N = dict(model_type="gemma3n_text", vocab_size=262_400, vocab_size_per_layer_input=262_144,
            hidden_size=2048, hidden_size_per_layer_input=256, num_attention_heads=8,
            num_key_value_heads=2, head_dim=256, sliding_window=512, max_position_embeddings=32_768,
            rope_theta=1_000_000.0, rope_local_base_freq=10_000.0, final_logit_softcapping=30.0,
            altup_num_inputs=4, laurel_rank=64)
_G4 = dict(model_type="gemma4_text", vocab_size=262_144, head_dim=256, global_head_dim=512,
           final_logit_softcapping=30.0)
_G4_SMALL = dict(_G4, sliding_window=512, max_position_embeddings=131_072, num_attention_heads=8,
                 hidden_size_per_layer_input=256, vocab_size_per_layer_input=262_144)
_G4_BIG = dict(_G4, sliding_window=1024, max_position_embeddings=262_144, attention_k_eq_v=True)


def _every(n: int, L: int) -> list[str]:
    """n - 1 sliding layers, then one full, repeated over L layers."""
    return [FULL if (i + 1) % n == 0 else SLIDING for i in range(L)]


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
    # Gemma 3n (E = "effective": a third of the parameters are the per-layer embedding table)
    "3n-e2b": _preset(**_G3N, intermediate_size=[8192] * 30, num_hidden_layers=30,  # 4.44 B
                      num_kv_shared_layers=10, activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20),
    "3n-e4b": _preset(**_G3N, intermediate_size=[16384] * 35, num_hidden_layers=35,  # 6.84 B
                      num_kv_shared_layers=15, activation_sparsity_pattern=[0.95] * 10 + [0.0] * 25),
    # Gemma 4 (E = "effective": most of E2B's parameters are its per-layer embedding table)
    "4-e2b": _preset(**_G4_SMALL, hidden_size=1536, intermediate_size=6144, num_hidden_layers=35,  # 4.63 B
                     num_key_value_heads=1, num_kv_shared_layers=20, use_double_wide_mlp=True,
                     layer_types=_every(5, 35)),
    "4-e4b": _preset(**_G4_SMALL, hidden_size=2560, intermediate_size=10240, num_hidden_layers=42,  # 7.46 B
                     num_key_value_heads=2, num_kv_shared_layers=18, layer_types=_every(6, 42)),
    "4-26b-a4b": _preset(**_G4_BIG, hidden_size=2816, intermediate_size=2112, num_hidden_layers=30,  # 25.2 B
                         num_attention_heads=16, num_key_value_heads=8, num_global_key_value_heads=2,
                         enable_moe_block=True, num_experts=128, top_k_experts=8,
                         moe_intermediate_size=704, layer_types=_every(6, 30)),
    "4-31b": _preset(**_G4_BIG, hidden_size=5376, intermediate_size=21504, num_hidden_layers=60,  # 30.7 B
                     num_attention_heads=32, num_key_value_heads=16, num_global_key_value_heads=4,
                     layer_types=_every(6, 60)),
}
