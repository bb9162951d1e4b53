"""RecurrentGemma (Griffin, arXiv 2402.19427): recurrent blocks and local attention, in NumPy.

A RecurrentGemma layer is a residual block (transformers' RecurrentGemmaDecoderLayer):

    h   = x + temporal_block(temporal_pre_norm(x))
    out = h + mlp_block(channel_pre_norm(h))

where the temporal block is, by `block_types` (2B, 9B: recurrent, recurrent, attention, ...),

    recurrent:  linear_out( rg_lru(conv_1d(linear_x(x))) * gelu_tanh(linear_y(x)) )
    attention:  local multi-query attention over the last `attention_window_size` tokens,
                RoPE on the first half of each head only

The RG-LRU (Real-Gated Linear Recurrent Unit), per channel:

    r_t = sigmoid(W_a x_t + b_a)                      recurrence gate (block-diagonal W, per head)
    i_t = sigmoid(W_x x_t + b_x)                      input gate
    a_t = exp(-8 r_t softplus(Lambda))                = sigmoid(-Lambda)^(8 r_t), in (0, 1)
    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) (i_t x_t)     (at a sequence's first token: h_t = i_t x_t)

The state a generation keeps (its "cache") is, per recurrent layer, h [B, lru_width] and
the conv's last conv1d_width - 1 inputs; per attention layer, a ring of window keys and
values: its size never depends on how long the text is (new_state, state_nbytes).

Shared pieces come from model.py (rms_norm, rope, attention, gelu_tanh, softcap) and
kv_cache.py (the ring buffer); the tokenizer, chat, sampling and generation are api.Model's
(RecurrentGemma subclasses it and replaces the network: its _network and new_cache hooks).
Parameter names are transformers' checkpoint keys; traces use its module names.

Axis legend as in model.py: B batch, T tokens, D hidden, C lru_width, N heads, K kv heads,
H head_dim, F MLP width, V vocab, W conv1d_width.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from . import api, chat_template
from .config_json import _TANH_GELU_NAMES, _Reader, load_json
from .errors import GemmaRefError
from .kv_cache import LayerCache, attended_kv
from .loader import checkpoint_files, hold_checked, read_safetensors
from .model import attention, gelu_tanh, record, rms_norm, rope, rope_angles, softcap
from .parallel import in_pipeline, layer_turn, linear, threads_for
from .tokenizer import Tokenizer
from .weights import Weights

RECURRENT, ATTENTION = "recurrent", "attention"


# --- config -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RecurrentGemmaConfig:
    """config.json of a RecurrentGemma checkpoint; field names are its keys."""

    vocab_size: int = 256_000
    hidden_size: int = 2560  # D
    intermediate_size: int = 15_360  # transformers' MLP is intermediate_size // 2 wide (F)
    num_hidden_layers: int = 26
    num_attention_heads: int = 10  # N; also the number of diagonal blocks of the RG-LRU gates
    num_key_value_heads: int = 1  # K (the released models: multi-query)
    lru_width: int = 2560  # C, the recurrence's width (null in config.json: hidden_size)
    attention_window_size: int = 2048  # a query sees itself and the window - 1 tokens before it
    conv1d_width: int = 4  # W, taps of the causal depthwise convolution
    logits_soft_cap: float = 30.0
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0
    partial_rotary_factor: float = 0.5  # RoPE turns the first half of each head only
    block_types: tuple = (RECURRENT, RECURRENT, ATTENTION)  # repeated over the layers
    attention_bias: bool = False  # q/k/v biases (o_proj always has one)
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int | tuple = 1
    model_type: str = "recurrent_gemma"

    @property
    def head_dim(self) -> int:
        """H: transformers sets hidden_size // num_attention_heads, whatever config.json says."""
        return self.hidden_size // self.num_attention_heads

    @property
    def layer_types(self) -> tuple[str, ...]:
        return tuple((list(self.block_types) * self.num_hidden_layers)[:self.num_hidden_layers])

    @property
    def max_position_embeddings(self) -> int:
        """No limit: nothing grows with the context (local attention, a fixed-size state)."""
        return 1 << 62

    @property
    def num_parameters(self) -> int:
        """Parameter count (tied embedding counted once)."""
        D, C, F, H = self.hidden_size, self.lru_width, self.intermediate_size // 2, self.head_dim
        N, K, bw = self.num_attention_heads, self.num_key_value_heads, self.lru_width // self.num_attention_heads
        recurrent = 2 * (D * C + C) + C * D + D + C * (self.conv1d_width + 1) + C + 2 * (N * bw * bw + C)
        attention = D * N * H + 2 * D * K * H + N * H * D + D
        if self.attention_bias:
            attention += N * H + 2 * K * H
        per_layer = 2 * D + 3 * D * F + 2 * F + D  # two norms, MLP with biases
        total = self.vocab_size * D + D
        for kind in self.layer_types:
            total += per_layer + (recurrent if kind == RECURRENT else attention)
        return total

    @classmethod
    def from_json(cls, path) -> "RecurrentGemmaConfig":
        return cls.from_dict(load_json(path), str(path))

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "RecurrentGemmaConfig":
        r = _Reader(d, source)
        if r.get("model_type", None) != "recurrent_gemma":
            raise GemmaRefError(f"{source}: model_type must be 'recurrent_gemma', got {d.get('model_type')!r}")
        act = r.get("hidden_activation", "gelu_pytorch_tanh")
        if act not in _TANH_GELU_NAMES:
            raise GemmaRefError(f"{source}: hidden_activation {act!r}: RecurrentGemma uses the tanh GELU")
        if not r.bool("embeddings_scale_by_sqrt_dim", True):  # older configs; transformers always scales
            raise GemmaRefError(f"{source}: embeddings_scale_by_sqrt_dim false: not a RecurrentGemma "
                                "(transformers and Google's package both scale by sqrt(hidden_size))")
        rope = r.obj("rope_parameters")  # transformers >= 5; older files: top-level keys
        if rope.get("rope_type", "default") != "default":
            raise GemmaRefError(f"{source}: rope_parameters.rope_type must be 'default'")
        D = r.int("hidden_size")
        N = r.int("num_attention_heads")
        blocks = r.get("block_types", list(cls.block_types))
        if not (isinstance(blocks, list) and blocks and all(b in (RECURRENT, ATTENTION) for b in blocks)):
            raise GemmaRefError(f"{source}: block_types must be a non-empty list of 'recurrent' / "
                                f"'attention', got {blocks!r}")
        eos = r.get("eos_token_id", 1)
        c = cls(
            vocab_size=r.int("vocab_size"), hidden_size=D, intermediate_size=r.int("intermediate_size"),
            num_hidden_layers=r.int("num_hidden_layers"), num_attention_heads=N,
            num_key_value_heads=r.int("num_key_value_heads", N),
            lru_width=r.int("lru_width", D), attention_window_size=r.int("attention_window_size"),
            conv1d_width=r.int("conv1d_width", 4), logits_soft_cap=r.float("logits_soft_cap", 30.0),
            rms_norm_eps=r.float("rms_norm_eps", 1e-6),
            rope_theta=rope.float("rope_theta", r.float("rope_theta", 10_000.0)),
            partial_rotary_factor=rope.fraction("partial_rotary_factor", r.fraction("partial_rotary_factor", 0.5)),
            block_types=tuple(blocks), attention_bias=r.bool("attention_bias", False),
            pad_token_id=r.int("pad_token_id", 0, minimum=0), bos_token_id=r.int("bos_token_id", 2, minimum=0),
            eos_token_id=tuple(r.int_list("eos_token_id")) if isinstance(eos, list) else r.int("eos_token_id", 1, minimum=0))
        for key, value, divides in (("hidden_size", D, "num_attention_heads"), ("lru_width", c.lru_width,
                                                                                 "num_attention_heads")):
            if value % N:
                raise GemmaRefError(f"{source}: {key} ({value}) must be a multiple of {divides} ({N})")
        if N % c.num_key_value_heads or c.intermediate_size % 2:
            raise GemmaRefError(f"{source}: num_attention_heads must be a multiple of num_key_value_heads, "
                                "and intermediate_size even")
        return c

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["block_types"] = list(self.block_types)
        return d

    def summary(self) -> list[str]:
        """What is special about this model, one line each (for `gemma-ref info`)."""
        n_att = self.layer_types.count(ATTENTION)
        return [f"architecture      Griffin: {self.num_hidden_layers - n_att} recurrent blocks (RG-LRU, "
                f"width {self.lru_width}, conv1d {self.conv1d_width} taps) and {n_att} local attention "
                f"blocks (window {self.attention_window_size}, {self.num_key_value_heads} kv head(s)), "
                f"pattern {', '.join(self.block_types)}",
                f"state             {human(state_nbytes(self, 1))} per sequence in float32, whatever "
                "its length (no KV cache growing with the context)"]


PRESETS = {  # google/recurrentgemma-*: its config.json, as transformers reads it
    "2b": RecurrentGemmaConfig(),  # 2.68B parameters
    "9b": RecurrentGemmaConfig(hidden_size=4096, intermediate_size=24_576, num_hidden_layers=38,
                               num_attention_heads=16, lru_width=4096),  # 8.58B
}


def human(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


# --- the state a generation carries ------------------------------------------------------


@dataclass
class RecurrentState:
    """One recurrent layer's memory of everything before: fixed size, whatever the length."""

    h: np.ndarray  # [B, C] the RG-LRU's state
    conv: np.ndarray  # [B, W-1, C] the conv's last W-1 inputs (zeros before the first token)
    end: int = 0  # one past the highest position seen (any row)

    @property
    def nbytes(self) -> int:
        return self.h.nbytes + self.conv.nbytes


def new_state(config: RecurrentGemmaConfig, batch: int, dtype=np.float32) -> list:
    """The empty cache: a RecurrentState per recurrent layer, a ring of `window` keys and
    values (kv_cache.LayerCache) per attention layer."""
    C, W, K, H = config.lru_width, config.conv1d_width, config.num_key_value_heads, config.head_dim
    S = config.attention_window_size
    return [RecurrentState(np.zeros((batch, C), dtype), np.zeros((batch, W - 1, C), dtype))
            if kind == RECURRENT else
            LayerCache(np.zeros((batch, S, K, H), dtype), np.zeros((batch, S, K, H), dtype),
                       np.full((batch, S), -1, np.int64))
            for kind in config.layer_types]


def state_nbytes(config: RecurrentGemmaConfig, batch: int = 1, dtype=np.float32) -> int:
    """Bytes of new_state(config, batch, dtype): independent of the context length."""
    return sum(c.nbytes for c in new_state(config, batch, dtype))


# --- the equations -----------------------------------------------------------------------


def sigmoid(x):
    """1 / (1 + exp(-x)), as 0.5 (1 + tanh(x / 2)): no overflow for very negative x."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def softplus(x):
    """log(1 + exp(x))."""
    return np.logaddexp(0.0, x)


def embed(W, ids, D: int, dtype):
    """E[ids] * sqrt(D), the scale rounded to bfloat16 first.        [B, T] -> [B, T, D]

    Both references do so whatever the activation dtype: transformers' `normalizer` buffer
    is bfloat16, Google's Embedder.encode casts sqrt(D) to bfloat16 (2B: 50.5, not 50.596).
    """
    scale = np.asarray(float(ml_dtypes.bfloat16(math.sqrt(D))), dtype)
    return W.rows("model.embed_tokens.weight", ids) * scale


def affine(x, W, name, bias=True):
    """x @ W[name.weight].T (+ W[name.bias]).                [..., in] -> [..., out]"""
    y = linear(x, W[name + ".weight"])
    return y + W[name + ".bias"] if bias else y


def mlp(x, W, pre):
    """down(gelu_tanh(gate(x)) * up(x)), each with a bias.          [B, T, D] -> [B, T, D]"""
    return affine(gelu_tanh(affine(x, W, pre + "gate_proj")) * affine(x, W, pre + "up_proj"), W,
                  pre + "down_proj")


def causal_conv1d(x, past, w, b):
    """Depthwise causal convolution over time, with the inputs before x.

    x [B, T, C], past [B, W-1, C] (the W-1 inputs before x), w [C, 1, W] (transformers'
    nn.Conv1d, groups=C), b [C] -> out [B, T, C], the new past [B, W-1, C]
    out[t] = b + sum_k w[:, 0, k] * x[t - (W-1) + k]: tap W-1 weighs the token itself.
    """
    T, W = x.shape[1], w.shape[-1]
    xs = np.concatenate([past, x], axis=1)  # [B, W-1+T, C]
    out = sum(xs[:, k:k + T] * w[:, 0, k] for k in range(W)) + b  # [B, T, C]
    return out, xs[:, T:]


def block_diagonal(x, w, b):
    """One small linear map per head, x @ w[h] + b[h].    [B, T, N*bw], [N, bw, bw], [N, bw] -> [B, T, N*bw]"""
    B, T, _ = x.shape
    N, bw, _ = w.shape
    y = np.einsum("bthi,hij->bthj", x.reshape(B, T, N, bw), w) + b  # [B, T, N, bw]
    return y.reshape(B, T, N * bw)


def rg_lru_gates(x, W, pre):
    """The decay, the gated input and its scale.           [B, T, C] -> 3 x [B, T, C]

    a_t = exp(-8 r_t softplus(Lambda)),  i_t x_t,  sqrt(1 - a_t^2)
    (r_t, i_t the recurrence and input gates). sqrt(1 - a^2) keeps h's scale: a slowly
    decaying channel (a near 1) takes in little of each token.
    """
    r = sigmoid(block_diagonal(x, W[pre + "recurrent_gate_weight"], W[pre + "recurrent_gate_bias"]))
    i = sigmoid(block_diagonal(x, W[pre + "input_gate_weight"], W[pre + "input_gate_bias"]))
    log_a = -8.0 * r * softplus(W[pre + "recurrent_param"])  # [B, T, C]
    return np.exp(log_a), x * i, np.sqrt(1.0 - np.exp(2.0 * log_a))


def rg_lru(x, positions, h, W, pre):
    """The RG-LRU over a chunk of tokens, from state h.      [B, T, C], [B, T], [B, C] -> [B, T, C], [B, C]

    h_t = a_t h_{t-1} + sqrt(1 - a_t^2) i_t x_t. At position 0 the sequence starts:
    h_t = i_t x_t (no decay of the past, no sqrt(1 - a^2)). Padding (position -1)
    leaves h at 0, so a left-padded row starts as if alone.
    """
    a, gated, multiplier = rg_lru_gates(x, W, pre)
    start, pad = (positions == 0)[..., None], (positions < 0)[..., None]  # [B, T, 1]
    inputs = np.where(pad, 0.0, gated * np.where(start, 1.0, multiplier))  # [B, T, C]
    a = np.where(start | pad, 0.0, a)
    out = np.empty_like(inputs)
    for t in range(x.shape[1]):  # the scan: one step per token
        h = a[:, t] * h + inputs[:, t]  # [B, C]
        out[:, t] = h
    return out, h


def recurrent_block(x, positions, state, W, pre, config, trace=None):
    """Griffin's recurrent block.                      [B, T, D] -> [B, T, D]; state updated in place

    linear_out( rg_lru(conv_1d(linear_x(x))) * gelu_tanh(linear_y(x)) )
    """
    y = affine(x, W, pre + "linear_y")  # [B, T, C]
    u = affine(x, W, pre + "linear_x")  # [B, T, C]
    record(trace, pre + "linear_x", u, pre + "linear_y", y)
    y = gelu_tanh(y)
    u = np.where((positions < 0)[..., None], 0.0, u)  # padding feeds the conv nothing
    u, state.conv = causal_conv1d(u, state.conv, W[pre + "conv_1d.weight"], W[pre + "conv_1d.bias"])
    record(trace, pre + "conv_1d", u)  # [B, T, C]; transformers' nn.Conv1d gives [B, C, T + W - 1]
    u, state.h = rg_lru(u, positions, state.h, W, pre + "rg_lru.")
    record(trace, pre + "rg_lru", u)
    state.end = max(state.end, int(positions.max()) + 1)
    return affine(u * y, W, pre + "linear_out")


def partial_rope(x, cos, sin, rotated: int):
    """RoPE on the first `rotated` dims of each head, the rest as they are.   [B, T, n, H] -> [B, T, n, H]"""
    return np.concatenate([rope(x[..., :rotated], cos, sin), x[..., rotated:]], axis=-1)


def attention_block(x, positions, cache, W, pre, config, trace=None):
    """Local multi-query attention.                     [B, T, D] -> [B, T, D]; cache updated in place

    A query sees keys at distances 0 .. window-1 (transformers' sliding window); RoPE turns
    the first partial_rotary_factor of each head (half), with its own frequency ladder.
    """
    B, T, _ = x.shape
    N, K, H = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    bias = config.attention_bias
    q = affine(x, W, pre + "q_proj", bias).reshape(B, T, N, H)
    k = affine(x, W, pre + "k_proj", bias).reshape(B, T, K, H)
    v = affine(x, W, pre + "v_proj", bias).reshape(B, T, K, H)
    R = int(H * config.partial_rotary_factor)  # dims turned by RoPE
    cos, sin = rope_angles(positions, R, config.rope_theta, 1.0, x.dtype)  # [B, T, R/2]
    q, k = partial_rope(q, cos, sin, R), partial_rope(k, cos, sin, R)
    k_all, v_all, k_pos = attended_kv(cache, k, v, positions, ring=True)  # the window's keys
    out = attention(q, k_all, v_all, positions, k_pos, H ** -0.5, window=config.attention_window_size)
    return affine(out, W, pre + "o_proj")  # [B, T, N*H] -> [B, T, D]


def residual_block(x, positions, cache, W, i, config, trace=None):
    """One layer: h = x + temporal(norm(x)); out = h + mlp(norm(h)).      [B, T, D] -> [B, T, D]"""
    pre, eps = f"model.layers.{i}.", config.rms_norm_eps
    h = rms_norm(x, W[pre + "temporal_pre_norm.weight"], eps)  # (1 + w), as Gemma 1-3
    record(trace, pre + "temporal_pre_norm", h)
    block = recurrent_block if config.layer_types[i] == RECURRENT else attention_block
    with layer_turn(i):  # a pipelined prefill's chunks run layer i in order (parallel.py)
        t = block(h, positions, cache[i], W, pre + "temporal_block.", config, trace)
    record(trace, pre + "temporal_block", t)
    x = x + t
    h = rms_norm(x, W[pre + "channel_pre_norm.weight"], eps)
    record(trace, pre + "channel_pre_norm", h)
    m = mlp(h, W, pre + "mlp_block.")
    record(trace, pre + "mlp_block", m)
    return x + m


def forward(weights, config: RecurrentGemmaConfig, ids, positions=None, cache=None, *, images=None,
            last_only=False, n_vocab=None, trace=None, dtype=np.float32):
    """Logits for token ids.                  ids [B, T] -> logits [B, T, V] (or [B, 1, V])

    As model.forward: positions [B, T] (-1 = left padding; default 0..T-1, or after what
    `cache` holds); cache from new_state, read and updated in place (None: a fresh state,
    dropped after); prefill (T > 1) and decode (T = 1) are the same code.
    """
    if images is not None:
        raise GemmaRefError("RecurrentGemma takes no images")
    W = weights if isinstance(weights, Weights) else Weights(weights, dtype)
    ids = np.asarray(ids)
    B, T = ids.shape
    V_table = W.arrays["model.embed_tokens.weight"].shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V_table):
        raise GemmaRefError(f"token id out of range: ids must be in [0, {V_table})")
    if positions is None:
        if in_pipeline():
            raise RuntimeError("a chunk of a pipelined prefill must be given its positions")
        start = 0 if cache is None else max(c.end for c in cache)
        positions = np.broadcast_to(np.arange(start, start + T), (B, T))
    positions = np.asarray(positions, dtype=np.int64)
    if cache is None:
        cache = new_state(config, B, W.dtype)

    x = embed(W, ids, config.hidden_size, W.dtype)  # [B, T, D]
    record(trace, "model.embed_tokens", x)  # scaled, as model.py records it: the input of layer 0
    with threads_for(B * T, W.narrow):
        for i in range(config.num_hidden_layers):
            x = residual_block(x, positions, cache, W, i, config, trace)
            record(trace, f"model.layers.{i}", x)
        if last_only:
            x = x[:, -1:]
        x = rms_norm(x, W["model.final_norm.weight"], config.rms_norm_eps)
        record(trace, "model.final_norm", x)
        E = W["model.embed_tokens.weight"]
        logits = linear(x, E if n_vocab is None else E[:n_vocab])  # tied head   [B, T, V]
    record(trace, "lm_head", logits)
    return softcap(logits, config.logits_soft_cap)


# --- checkpoints ---------------------------------------------------------------------------


def expected_shapes(config: RecurrentGemmaConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the checkpoint (transformers' keys), with its shape."""
    D, C, F, H = config.hidden_size, config.lru_width, config.intermediate_size // 2, config.head_dim
    N, K, bw = config.num_attention_heads, config.num_key_value_heads, config.lru_width // config.num_attention_heads
    shapes = {"model.embed_tokens.weight": (config.vocab_size, D), "model.final_norm.weight": (D,)}
    for i, kind in enumerate(config.layer_types):
        p = f"model.layers.{i}."
        shapes.update({p + "temporal_pre_norm.weight": (D,), p + "channel_pre_norm.weight": (D,)})
        for name, (out, inp) in (("gate_proj", (F, D)), ("up_proj", (F, D)), ("down_proj", (D, F))):
            shapes.update({f"{p}mlp_block.{name}.weight": (out, inp), f"{p}mlp_block.{name}.bias": (out,)})
        t = p + "temporal_block."
        if kind == RECURRENT:
            for name, (out, inp) in (("linear_x", (C, D)), ("linear_y", (C, D)), ("linear_out", (D, C))):
                shapes.update({f"{t}{name}.weight": (out, inp), f"{t}{name}.bias": (out,)})
            shapes.update({t + "conv_1d.weight": (C, 1, config.conv1d_width), t + "conv_1d.bias": (C,),
                           t + "rg_lru.recurrent_param": (C,),
                           t + "rg_lru.input_gate_weight": (N, bw, bw), t + "rg_lru.input_gate_bias": (N, bw),
                           t + "rg_lru.recurrent_gate_weight": (N, bw, bw),
                           t + "rg_lru.recurrent_gate_bias": (N, bw)})
        else:
            shapes.update({t + "q_proj.weight": (N * H, D), t + "k_proj.weight": (K * H, D),
                           t + "v_proj.weight": (K * H, D), t + "o_proj.weight": (D, N * H),
                           t + "o_proj.bias": (D,)})
            if config.attention_bias:
                shapes.update({t + "q_proj.bias": (N * H,), t + "k_proj.bias": (K * H,),
                               t + "v_proj.bias": (K * H,)})
    return shapes


def load_weights(directory: Path, config: RecurrentGemmaConfig, max_memory=None, progress=True) -> dict:
    """The checkpoint's tensors, checked strictly against expected_shapes (loader.hold_checked)."""
    found = {}
    for path in checkpoint_files(directory):
        for name, tensor in read_safetensors(path).items():
            if name in found:
                raise GemmaRefError(f"{directory}: tensor {name} is stored twice")
            found[name] = tensor
    found.pop("lm_head.weight", None)  # the embedding again (tied)
    return hold_checked(found, expected_shapes(config), str(directory), max_memory, progress)


class RecurrentGemma(api.Model):
    """A RecurrentGemma checkpoint: api.Model's generation, chat and sampling, Griffin's network."""

    @classmethod
    def from_checkpoint(cls, path: Path, *, source: str, dtype="float32", max_memory=None,
                        progress=True) -> "RecurrentGemma":
        config = RecurrentGemmaConfig.from_json(path / "config.json")
        weights = load_weights(path, config, max_memory, progress)
        tokenizer = Tokenizer.from_checkpoint(path)
        template = chat_template.load(path, tokenizer, config.model_type)
        model = cls(config, weights, tokenizer, source=source, dtype=dtype,
                    stop_ids=api._generation_config_eos(path), chat_template=template)
        model.checkpoint = path
        return model

    @staticmethod
    def describe(config_file) -> dict:
        """What `gemma-ref info` prints, from config.json alone."""
        config = RecurrentGemmaConfig.from_json(config_file)
        return dict(parameters=config.num_parameters, config=config.to_dict(),
                    chat_template=chat_template.load(Path(config_file).parent, None, config.model_type).source,
                    special=config.summary())

    def _hold_weights(self, weights) -> Weights:
        return Weights(weights, self.dtype)  # nothing stacked: the products are few per layer

    def _network(self, ids, positions=None, cache=None, **kw):
        return forward(self.weights, self.config, ids, positions, cache, n_vocab=self.n_vocab, **kw)

    def new_cache(self, batch: int, max_len: int = 0) -> list:
        """The empty state (new_state); its size does not depend on max_len."""
        return new_state(self.config, batch, self.dtype)

