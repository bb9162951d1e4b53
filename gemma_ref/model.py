"""The Gemma forward pass, in NumPy, for every generation (1, 2, 3, 3n, 4).

One function per equation, each with its shapes. Generations differ only by
config values (see config.py); what differs between the layers of one model
(head size, kv heads, K/V source, MLP width, RoPE table) is read from its
`config.layers[i]` record. Axis legend, used everywhere:

    B batch   T query length   S key length   D hidden   N query heads
    K kv heads   G = N / K   H head_dim   F ffn width   V vocab   C cache slots
    L layers   P per-layer embedding width (Gemma 3n, 4)   E experts   M tokens (B*T)

Parameters are a mapping from Hugging Face checkpoint keys to arrays
(`model.layers.3.self_attn.q_proj.weight`, shape [out, in]). Precision: the
activations are float32 (or float64, for ground truth); weights stored in a
narrower type are widened as they are used (weights.py's `Weights`: matrices block by
block inside the products, parallel.widen_into). Keys and values of earlier tokens live
in kv_cache.py's cache. Images (Gemma 3 4B+, Gemma 4) arrive as `ImageTokens` made by
vision.py / vision_gemma4.py: embeddings for the image soft tokens and a wider reach
for their attention; no pixels here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .config import GemmaConfig
from .errors import GemmaRefError
from .kv_cache import attended_kv
from .parallel import (FEW_ROWS, dense, in_pipeline, layer_turn, linear, reuse_freed_memory,
                       sharded_attention, sharded_geglu, split_tokens, threads_for)
from .weights import Weights


# --- primitives -------------------------------------------------------------


def rms_norm(x, w, eps, offset=1.0):
    """x / sqrt(mean(x^2) + eps) * (offset + w).        [..., D], [D] -> [..., D]

    offset is 1 for Gemma 1-3 (weights stored as w, applied as 1 + w) and 0 for
    Gemma 4 (applied as w). w None: no weight (Gemma 4's value and router norms).
    Computed in x's dtype, which is float32 or wider (never float16).
    """
    # mean(x^2) as np.mean computes it (a float32 sum, then / D), minus np.mean's Python
    # overhead (~20 us a call; a decoding step of Gemma 3 270M makes 109 calls).
    mean_sq = np.add.reduce(x * x, axis=-1, keepdims=True) / x.shape[-1]  # [..., 1]
    normed = x / np.sqrt(mean_sq + eps)
    return normed if w is None else normed * (offset + w)


def gelu_tanh(x):
    """GELU, tanh approximation (Gemma never uses the exact erf form).   [...] -> [...]"""
    # Python floats, not NumPy float64 scalars, so float32 inputs stay float32;
    # x * x * x rather than x**3, which NumPy computes with a 5x slower pow().
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


def geglu(x, w_gate, w_up, w_down):
    """down(gelu_tanh(gate(x)) * up(x)).                 [B, T, D] -> [B, T, D]

    dense(x, w) is x @ w.T (parallel.py says why it is spelled so).
    """
    return dense(gelu_tanh(dense(x, w_gate)) * dense(x, w_up), w_down)  # [B,T,F] -> [B,T,D]


def geglu_fused(x, w_gate_up, w_down):
    """geglu with gate and up stacked in one [2F, D] matrix: one product for both.

    [B, T, D] -> [B, T, D]; w_gate_up = concat(w_gate, w_up) (Weights.fuse).
    """
    gate_up = dense(x, w_gate_up)  # [B, T, 2F]
    F = w_gate_up.shape[0] // 2
    return dense(gelu_tanh(gate_up[..., :F]) * gate_up[..., F:], w_down)


def softcap(x, cap):
    """cap * tanh(x / cap): squashes x smoothly into (-cap, cap) (Gemma 2)."""
    return cap * np.tanh(x / cap)


def softmax(x):
    """Softmax over the last axis, in x's dtype (float32 or wider)."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def rope_angles(positions, head_dim, theta, scaling_factor, dtype, rotated=None):
    """cos, sin of position * theta^(-2i/H) / factor.   [B, T] -> 2 x [B, T, H/2]

    Only the first `rotated` pairs i turn (default: all H/2); the others get angle 0
    (cos 1, sin 0): Gemma 4's proportional RoPE, whose exponent keeps the full H.
    Computed in the activation dtype, as transformers does in float32: at long
    positions a float64 angle would differ from the float32 one by ~1e-4 rad.
    """
    rotated = head_dim // 2 if rotated is None else rotated
    inv_freq = np.zeros(head_dim // 2)  # [H/2]
    inv_freq[:rotated] = theta ** -(np.arange(0, 2 * rotated, 2) / head_dim) / scaling_factor
    angles = positions.astype(dtype)[..., None] * inv_freq.astype(dtype)  # [B, T, H/2]
    return np.cos(angles), np.sin(angles)


def rope(x, cos, sin):
    """Rotate the first half of each head against the second half (not interleaved).

    [B, T, heads, H], 2 x [B, T, H/2] -> [B, T, heads, H]
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]  # broadcast over heads
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def visible(q_pos, k_pos, window=None, reach=None):
    """Which keys each query sees.                     [B, T], [B, S] -> [B, T, S] bool

    A key is visible iff it exists (k_pos >= 0), is not in the future, and for a
    sliding layer lies within the window: 0 <= q_pos - k_pos < window.
    reach [B, T]: the last position each query sees, if not its own: the tokens of
    one image see each other both ways (ImageTokens.reach; still only back to
    q_pos - window + 1 on sliding layers).
    reach [B, T, 2]: a block [first, last] of keys each query sees whatever the window,
    beside its causal ones (PaliGemma's prefix: transformers ORs the block onto the
    sliding-window mask); a query outside any block has first > last.
    """
    if reach is not None and reach.ndim == 3:
        first, last = reach[..., :1], reach[..., 1:]  # [B, T, 1] each
        block = (k_pos[:, None, :] >= np.maximum(first, 0)) & (k_pos[:, None, :] <= last)  # [B, T, S]
        return visible(q_pos, k_pos, window) | block
    reach = q_pos if reach is None else reach
    seen = (k_pos[:, None, :] >= 0) & (k_pos[:, None, :] <= reach[:, :, None])  # [B, T, S]
    if window is not None:
        seen &= q_pos[:, :, None] - k_pos[:, None, :] < window
    return seen


def both_ways_reach(positions, window):
    """Bidirectional attention (EmbeddingGemma): the last position each token sees. [B, T] -> [B, T]

    On a full layer every key; on a sliding layer those less than `window` after it,
    as visible keeps those less than `window` before it: |q_pos - k_pos| < window.
    """
    if window is None:
        return np.full_like(positions, np.iinfo(positions.dtype).max)
    return positions + (window - 1)


def attention(q, k, v, q_pos, k_pos, scale, window=None, cap=None, reach=None, mask=None):
    """Causal (optionally sliding-window) grouped-query attention, K/V not copied per group.

    q [B, T, N, H], k and v [B, S, K, H], q_pos [B, T], k_pos [B, S] -> [B, T, N*H]
    Query t attends to the keys visible(q_pos, k_pos, window, reach)[:, t] marks, or
    mask[:, t] when a mask [B, T, S] bool is given (an encoder-decoder's bidirectional
    and cross-attention masks, t5gemma.py).
    """
    B, T, N, H = q.shape
    K = k.shape[2]
    # Query heads in K groups of G; each group reads one kv head (a view, no copy).
    q = q.reshape(B, T, K, N // K, H).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, H]
    kT = k.transpose(0, 2, 3, 1)[:, :, None]  # [B, K, 1, H, S]
    v = v.transpose(0, 2, 1, 3)[:, :, None]  # [B, K, 1, S, H]
    scores = (q @ kT) * scale  # [B, K, G, T, S]   einsum("bkgth,bkhs->bkgts")
    if cap is not None:
        scores = softcap(scores, cap)
    # Masked scores get the dtype's most negative value (as transformers does), so a
    # row with nothing visible (a padding query) is uniform rather than NaN.
    mask = visible(q_pos, k_pos, window, reach) if mask is None else mask  # [B, T, S]
    scores = np.where(mask[:, None, None], scores, np.finfo(scores.dtype).min)
    probs = softmax(scores)  # [B, K, G, T, S]
    out = probs @ v  # [B, K, G, T, H]   einsum("bkgts,bksh->bkgth")
    return out.transpose(0, 3, 1, 2, 4).reshape(B, T, N * H)


# --- Gemma 3n: AltUp streams, LAuReL, sparse activations -----------------------
# S = altup_num_inputs streams; the decoder blocks run on stream `altup_active_idx`.
# Gemma 3n's norms scale by w itself (rms_norm offset 0), these included.


def magnitude_matched(y, target_rms):
    """y rescaled to a root-mean-square of target_rms per token.   [..., D], [..., 1] -> [..., D]"""
    rms = np.sqrt(np.maximum(np.mean(y * y, axis=-1, keepdims=True), 1e-5))  # [..., 1]
    return y * target_rms / rms


def altup_streams(x, projections):
    """The AltUp streams made from the embedding.          [B, T, D] -> [S, B, T, D]

    Stream 0 is x; stream s is x @ projections[s-1].T, rescaled to x's magnitude.
    """
    target = np.sqrt(np.mean(x * x, axis=-1, keepdims=True))  # [B, T, 1]
    return np.stack([x] + [magnitude_matched(dense(x, w), target) for w in projections])


def altup_merge(xs, unembed_projections):
    """The streams merged into one at the end.             [S, B, T, D] -> [B, T, D]

    mean(stream 0, and stream s @ unembed_projections[s-1].T rescaled to stream 0's magnitude)
    """
    target = np.sqrt(np.mean(xs[0] * xs[0], axis=-1, keepdims=True))  # [B, T, 1]
    outs = [xs[0]] + [magnitude_matched(dense(x, w), target) for x, w in zip(xs[1:], unembed_projections)]
    return np.mean(np.stack(outs), axis=0)


def altup_router(x, w_norm, w_router, eps):
    """Mixing weights of the streams, read from one stream.    [B, T, D] -> [B, T, S]

    tanh(modality_router(router_norm(x) / D))
    """
    h = rms_norm(x, w_norm, eps, 0.0) * np.asarray(1.0 / x.shape[-1], x.dtype)  # [B, T, D]
    return np.tanh(dense(h, w_router))  # [B, T, S]


def altup_predict(xs, modalities, w_prediction):
    """Each stream predicted from all of them.    [S, B, T, D], [B, T, S], [S*S, S] -> [S, B, T, D]

    prediction_s = xs_s + sum_r c[s, r] xs_r,  c = (modalities @ w_prediction.T) as [S, S] per token.
    """
    S = xs.shape[0]
    c = dense(modalities, w_prediction).reshape(*modalities.shape[:-1], S, S)  # [B, T, S, S]
    return xs + np.einsum("btsr,rbtd->sbtd", c, xs)


def altup_correct(predictions, activated, modalities, w_correction, active):
    """Every stream corrected by what the block changed.  [S, B, T, D], [B, T, D], [B, T, S], [S, S]
                                                                                 -> [S, B, T, D]
    corrected_s = prediction_s + (1 + c_s) (activated - prediction_active),  c = modalities @ w_correction.T
    """
    coefs = dense(modalities, w_correction) + 1.0  # [B, T, S]
    innovation = activated - predictions[active]  # [B, T, D]
    return innovation * coefs.transpose(2, 0, 1)[..., None] + predictions


def laurel(h, w_left, w_right, w_norm, eps):
    """LAuReL, a low-rank residual branch: h + norm(right(left(h))).   [B, T, D] -> [B, T, D]"""
    low = dense(dense(h, w_left), w_right)  # [B, T, D] -> [B, T, r] -> [B, T, D]
    return h + rms_norm(low, w_norm, eps, 0.0)


def gaussian_top_k(g, sparsity):
    """Keep what lies above a per-token cutoff, shifted down by it.      [..., F] -> [..., F]

    relu(g - (mean(g) + z std(g))), z = the standard normal's quantile at `sparsity`:
    were g Gaussian, a fraction `sparsity` of it would fall below the cutoff.
    """
    z = np.asarray(NormalDist().inv_cdf(sparsity), g.dtype)
    cutoff = np.mean(g, axis=-1, keepdims=True) + np.std(g, axis=-1, keepdims=True) * z  # [..., 1]
    return np.maximum(g - cutoff, 0)


def sparse_geglu(x, w_gate, w_up, w_down, sparsity):
    """geglu with the gate passed through gaussian_top_k first (Gemma 3n).  [B, T, D] -> [B, T, D]"""
    g = gaussian_top_k(dense(x, w_gate), sparsity)  # [B, T, F]
    return dense(gelu_tanh(g) * dense(x, w_up), w_down)


# --- images ------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageTokens:
    """The images of a chunk of tokens, as the language model sees them (vision.py makes it).

    Their soft tokens' embeddings are replaced by `embeds` (image features, not
    scaled by sqrt(D)), and each of their tokens sees keys up to `reach`.
    """

    at: np.ndarray  # [B, T] bool: the image soft tokens
    embeds: np.ndarray  # [n, D] their embeddings, row by row in order (n = at.sum())
    reach: np.ndarray  # [B, T] last position each token sees: its own, or its image's last
    # (or [B, T, 2], a block of keys seen whatever the window: see visible)
    layers: str = "all"  # where reach applies: "all" (Gemma 3), "sliding" (Gemma 4), "none"
    # What the soft tokens are embedded as before their features replace them, as in
    # transformers: <pad> (Gemma 4) or their own id (Gemma 3). Only traces see it.
    embedded_as_pad: bool = False

    def sees_both_ways(self, spec) -> bool:
        """Whether an image's tokens see each other both ways on a layer (config.LayerSpec)."""
        return self.layers == "all" or (self.layers == "sliding" and spec.window is not None)


# --- the network --------------------------------------------------------------


def qkv(x, cos, sin, W, pre, config, spec, own_kv=True, trace=None):
    """Queries, keys and values of each token, normed (Gemma 3, 4) and rotated.

    x [B, T, D], cos/sin [B, T, H/2] -> q [B, T, N, H], k and v [B, T, K, H]
    (k, v None when the layer attends with another layer's: not own_kv).
    Gemma 4: v is normed without a weight, and with attention_k_eq_v (no v_proj)
    v is the raw key projection, before k's norm and RoPE.
    """
    B, T, _ = x.shape
    N, K, H = config.num_attention_heads, spec.num_key_value_heads, spec.head_dim
    eps, off = config.rms_norm_eps, config.norm_offset
    # linear: split between cores when that pays (big narrow weights; inside a prefill's
    # split_tokens shard it runs on the shard's thread).
    decoding = x.size // x.shape[-1] <= FEW_ROWS  # a few rows: one product for q, k, v
    stacked = W.fused.get(pre + "qkv") if own_kv and trace is None and decoding else None
    k = v = None
    if stacked is not None:  # q, k, v in one product (Weights.fuse)
        qkv_out = linear(x, stacked)  # [B, T, (N + 2K) H] (N + K without v_proj)
        q = qkv_out[..., :N * H].reshape(B, T, N, H)
        k = qkv_out[..., N * H:(N + K) * H].reshape(B, T, K, H)
        v = qkv_out[..., (N + K) * H:].reshape(B, T, K, H) if spec.v_proj else k
    else:
        q = linear(x, W[pre + "q_proj.weight"]).reshape(B, T, N, H)  # [B, T, N, H]
    if own_kv and stacked is None:
        k = linear(x, W[pre + "k_proj.weight"]).reshape(B, T, K, H)  # [B, T, K, H]
        v = linear(x, W[pre + "v_proj.weight"]).reshape(B, T, K, H) if spec.v_proj else k
        record(trace, pre + "k_proj", k, pre + "v_proj", v)
    record(trace, pre + "q_proj", q)
    if config.qk_norm:  # Gemma 3, 4: RMSNorm over each head, before RoPE
        q = rms_norm(q, W[pre + "q_norm.weight"], eps, off)
        record(trace, pre + "q_norm", q)
        if own_kv:
            k = rms_norm(k, W[pre + "k_norm.weight"], eps, off)
            record(trace, pre + "k_norm", k)
    if own_kv and config.value_norm:  # Gemma 4
        v = rms_norm(v, None, eps)
        record(trace, pre + "v_norm", v)
    q = rope(q, cos, sin)
    record(trace, pre + "q_rope", q)
    if own_kv:
        k = rope(k, cos, sin)
        record(trace, pre + "k_rope", k)
    return q, k, v


def attention_block(x, W, i, config, cos_sin, positions, cache, shared, trace, keep=slice(None),
                    reach=None):
    """Self-attention of layer i.                     [B, T, D] -> [B, T', D]

    Every token's keys and values are computed (and cached); outputs only for the
    queries x[:, keep] (T' of them). A layer that shares keys and values (Gemma 4)
    computes queries only and attends over what its source layer, earlier in this
    pass, left in `shared` (layer -> k, v, positions). reach: see visible (images);
    None = causal.

    split_tokens / sharded_attention / linear compute the same values on all
    cores when that pays (parallel.py).
    """
    pre, spec = f"model.layers.{i}.self_attn.", config.layers[i]
    own_kv = spec.kv_source == i
    if trace is None:  # token by token, so the prompt's tokens are split between cores
        q, k, v = split_tokens(lambda x, cos, sin: qkv(x, cos, sin, W, pre, config, spec, own_kv),
                               x, *cos_sin)
    else:
        q, k, v = qkv(x, *cos_sin, W, pre, config, spec, own_kv, trace)

    if own_kv:
        with layer_turn(i):  # a pipelined prefill's chunks write layer i's cache in order
            kv = attended_kv(None if cache is None else cache[i], k, v, positions, spec.window is not None)
        if spec.shares_kv:
            shared[i] = kv
    else:
        kv = shared[spec.kv_source]  # [B, S, K, H] x 2, [B, S]: the source layer's span
    k_all, v_all, k_pos = kv
    q, q_pos = q[:, keep], positions[:, keep]
    reach = None if reach is None else reach[:, keep]
    out = sharded_attention(attention, visible, q, k_all, v_all, q_pos, k_pos, config.query_scale,
                            window=spec.window, cap=config.attn_logit_softcapping,
                            reach=reach)  # [B, T', N*H], on all cores
    record(trace, pre + "attn", out)
    out = linear(out, W[pre + "o_proj.weight"])  # [B, T', N*H] -> [B, T', D]
    record(trace, pre + "o_proj", out)
    return out


def route(x, w_router, scale, per_expert_scale, top_k, eps):
    """Which experts each token goes to, and with what weight.    [M, D] -> 2 x [M, top_k]

    p = softmax(W_r (rms(x) * scale / sqrt(D)))              over all E experts
    experts = the top_k largest p;  weight = p / sum(p of those) * per_expert_scale
    """
    D = x.shape[-1]
    h = rms_norm(x, None, eps) * scale * D ** -0.5  # [M, D]
    p = softmax(dense(h, w_router))  # [M, E]
    experts = np.argpartition(-p, top_k - 1, axis=-1)[:, :top_k]  # [M, top_k] (any order)
    weights = np.take_along_axis(p, experts, axis=-1)  # [M, top_k]
    return experts, weights / weights.sum(axis=-1, keepdims=True) * per_expert_scale[experts]


def moe(x, experts, weights, gate_up, down):
    """sum over k of weights[m, k] * expert_{experts[m, k]}(x[m]).        [M, D] -> [M, D]

    expert_e(x) = down_e(gelu_tanh(gate_e x) * up_e x), gate_e and up_e fused in
    gate_up(e) [2F, D]; down(e) [D, F]. Each token goes through its top_k experts
    only, and tokens are batched by expert: one product per expert used.
    """
    out = np.zeros_like(x)
    for e in np.unique(experts):
        rows, k = np.nonzero(experts == e)  # the tokens routed to e, and which of their picks it is
        gate, up = np.split(dense(x[rows], gate_up(e)), 2, axis=-1)  # [m, F] x 2
        out[rows] += dense(gelu_tanh(gate) * up, down(e)) * weights[rows, k, None]  # [m, D]
    return out


def moe_block(x, W, pre, config, trace=None):
    """Gemma 4's mixture of experts, beside the dense MLP.          [B, T, D] -> [B, T, D]

    The router reads the residual stream x; the experts, pre_feedforward_layernorm_2(x).
    """
    B, T, D = x.shape
    flat = x.reshape(B * T, D)  # [M, D]
    experts, weights = route(flat, W[pre + "router.proj.weight"], W[pre + "router.scale"],
                             W[pre + "router.per_expert_scale"], config.top_k_experts, config.rms_norm_eps)
    h = rms_norm(flat, W[pre + "pre_feedforward_layernorm_2.weight"], config.rms_norm_eps, config.norm_offset)
    record(trace, pre + "pre_feedforward_layernorm_2", h)
    out = moe(h, experts, weights, lambda e: W.rows(pre + "experts.gate_up_proj", e),
              lambda e: W.rows(pre + "experts.down_proj", e))  # [M, D]
    record(trace, pre + "experts", out)
    return out.reshape(B, T, D)


def per_layer_inputs(W, config, ids, x):
    """Gemma 3n's and 4's per-layer embeddings (PLE): a small input for each layer.

    ids [B, T], x [B, T, D] (the scaled embeddings) -> [B, T, L, P]
    (rms_norm(x W_p / sqrt(D)) + E_p[ids] * sqrt(P)) / sqrt(2)
    E_p is a [V, L*P] table (E2B: 2.35 G values, more than the rest of the model): only
    the rows of `ids` are read from it and widened; it stays stored, memory-mapped.
    Ids past the table (Gemma 3n's 256 audio and image ids above 262144) read row 0.
    """
    B, T, D = x.shape
    L, P = config.num_hidden_layers, config.hidden_size_per_layer_input
    ids = np.where(ids < config.vocab_size_per_layer_input, ids, 0)  # [B, T]
    # sqrt(P) rounded to the activation dtype first, as for the main embedding
    rows = W.rows("model.embed_tokens_per_layer.weight", ids) * np.asarray(math.sqrt(P), x.dtype)
    proj = dense(x, W["model.per_layer_model_projection.weight"]) * D ** -0.5  # [B, T, L*P]
    proj = rms_norm(proj.reshape(B, T, L, P), W["model.per_layer_projection_norm.weight"],
                    config.rms_norm_eps, config.norm_offset)  # [B, T, L, P]
    return (proj + rows.reshape(B, T, L, P)) * 2 ** -0.5


def per_layer_mix(x, ple, W, pre):
    """What a layer takes from its per-layer input.          [B, T, D], [B, T, P] -> [B, T, D]

    per_layer_projection(gelu_tanh(per_layer_input_gate(x)) * ple)
    """
    g = gelu_tanh(dense(x, W[pre + "per_layer_input_gate.weight"])) * ple  # [B, T, P]
    return dense(g, W[pre + "per_layer_projection.weight"])  # [B, T, D]


def decoder_layer(x, W, i, config, cos_sin, positions, cache, shared, trace, keep=slice(None),
                  ple=None, reach=None):
    """One block.                                     [B, T, D] -> [B, T', D]

    Gemma 1:   h = x + attn(norm(x));                out = h + mlp(norm(h))   (VaultGemma too)
    Gemma 2/3: h = x + norm(attn(norm(x)));          out = h + norm(mlp(norm(h)))
    Gemma 4:   as Gemma 3, where (26B) mlp(norm(h)) becomes
               norm(mlp(norm(h))) + norm(moe(norm(h)));  then (E2B, E4B)
               out += norm(per_layer_mix(out, ple)); and out *= layer_scalar
    Gemma 3n:  h = (x + norm(attn(norm(x))) + laurel(norm(x))) / sqrt(2);  the MLP's gate
               may pass a Gaussian top-k; the rest is altup_layer's (around this block)

    Outputs for the tokens x[:, keep] only (all of them by default). ple [B, T, P]:
    this layer's per-layer input (Gemma 4), or None.
    """
    pre, eps, off = f"model.layers.{i}.", config.rms_norm_eps, config.norm_offset

    def norm(h, name):  # RMSNorm with this layer's weight `name`, traced under that name
        h = rms_norm(h, W[pre + name + ".weight"], eps, off)
        record(trace, pre + name, h)
        return h

    h = norm(x, "input_layernorm")
    a = attention_block(h, W, i, config, cos_sin, positions, cache, shared, trace, keep, reach)
    if config.sandwich_norms:
        a = norm(a, "post_attention_layernorm")
    x = x[:, keep] + a  # from here on, the tokens x[:, keep] only
    if config.laurel_rank:  # Gemma 3n: a low-rank branch beside attention, from the same norm(x)
        lr = laurel(h[:, keep], W[pre + "laurel.linear_left.weight"], W[pre + "laurel.linear_right.weight"],
                    W[pre + "laurel.post_laurel_norm.weight"], eps)
        record(trace, pre + "laurel", lr)
        x = (x + lr) / math.sqrt(2)
    h = norm(x, config.mlp_input_norm)  # Gemma 1 calls it "post_attention_layernorm"
    mlp = [W[pre + "mlp.gate_proj.weight"], W[pre + "mlp.up_proj.weight"], W[pre + "mlp.down_proj.weight"]]
    gate_up = W.fused.get(pre + "mlp.gate_up")
    if config.layers[i].activation_sparsity:  # Gemma 3n; its cutoff needs whole rows of F: one thread
        m = sparse_geglu(h, *mlp, config.layers[i].activation_sparsity)
    elif gate_up is not None and h.size // h.shape[-1] <= FEW_ROWS:  # decoding: one product for both
        m = geglu_fused(h, gate_up, mlp[2])
    else:
        m = sharded_geglu(geglu, h, *mlp)  # geglu(h, ...) on all cores
    record(trace, pre + "mlp", m)
    if config.enable_moe_block:
        m = norm(m, "post_feedforward_layernorm_1") + norm(moe_block(x, W, pre, config, trace),
                                                           "post_feedforward_layernorm_2")
    if config.sandwich_norms:
        m = norm(m, "post_feedforward_layernorm")
    x = x + m
    if ple is not None:
        x = x + norm(per_layer_mix(x, ple[:, keep], W, pre), "post_per_layer_input_norm")
    if config.layer_scalar:
        x = x * W[pre + "layer_scalar"]
    record(trace, f"model.layers.{i}", x)
    return x


def altup_layer(xs, W, i, config, cos_sin, positions, cache, shared, trace, keep=slice(None),
                ple=None, reach=None):
    """Gemma 3n: one layer on the AltUp streams.          [S, B, T, D] -> [S, B, T', D]

    Every stream is predicted from all of them, decoder_layer runs on the active one,
    every stream is corrected by what the block changed, and the per-layer input, gated
    by the (scaled) corrected active stream, is added to streams 1..S-1 (in transformers,
    `corrected_predictions[1:]`, whichever stream is active). ple [B, T, P].
    """
    pre, a, eps = f"model.layers.{i}.", config.altup_active_idx, config.rms_norm_eps
    norm_w, router_w = W[pre + "altup.router_norm.weight"], W[pre + "altup.modality_router.weight"]
    predictions = altup_predict(xs, altup_router(xs[a], norm_w, router_w, eps),
                                W[pre + "altup.prediction_coefs.weight"])  # [S, B, T, D]
    record(trace, pre + "altup.predict", predictions)
    out = decoder_layer(predictions[a], W, i, config, cos_sin, positions, cache, shared, trace, keep,
                        reach=reach)
    xs = altup_correct(predictions[:, :, keep], out, altup_router(out, norm_w, router_w, eps),
                       W[pre + "altup.correction_coefs.weight"], a)  # [S, B, T', D]
    record(trace, pre + "altup.correct", xs)
    gate = xs[a] * W[pre + "altup.correct_output_scale"] if config.altup_correct_scale else xs[a]
    mix = rms_norm(per_layer_mix(gate, ple[:, keep], W, pre), W[pre + "post_per_layer_input_norm.weight"],
                   eps, config.norm_offset)  # [B, T', D]
    record(trace, pre + "post_per_layer_input_norm", mix)
    xs[1:] += mix
    record(trace, f"model.layers.{i}", xs)
    return xs


def forward(weights, config: GemmaConfig, ids, positions=None, cache=None, *, images=None,
            last_only=False, n_vocab=None, trace=None, dtype=np.float32, lm_head=True, return_hidden=False):
    """Logits for token ids.                     ids [B, T] -> logits [B, T, V] (or [B, 1, V])

    weights:   HF key -> array (any float dtype; widened to `dtype` as used).
    positions: [B, T] position of each token, -1 for padding; default 0..T-1, or
               continuing after what `cache` holds.
    cache:     list of LayerCache from `new_cache`, read and then updated in place;
               None attends within `ids` only. Prefill (T > 1) and decode (T = 1)
               are the same code.
    images:    ImageTokens for the images among `ids` (each image wholly inside this
               call), or None.
    last_only: compute logits for the last position only (generation).
    n_vocab:   keep the first n_vocab logits (embedding tables may have padding rows).
    trace:     a dict to receive named intermediates (HF module names), or None.
    lm_head:   False: return the hidden states after the final norm [B, T, D] instead of
               logits (an encoder: EmbeddingGemma).
    return_hidden: also return the last hidden state, after the final norm (what the
               head reads; a Gemma 4 assistant drafts from it): (logits, [B, T, D]).
    """
    W = weights if isinstance(weights, Weights) else Weights(weights, dtype)
    dtype = W.dtype
    ids = np.asarray(ids)
    B, T = ids.shape
    if positions is None:
        if in_pipeline():  # the chunks before this one may not have written the cache yet
            raise RuntimeError("a chunk of a pipelined prefill must be given its positions")
        start = 0 if cache is None else cache[0].end
        positions = np.broadcast_to(np.arange(start, start + T), (B, T))
    positions = np.asarray(positions, dtype=np.int64)
    V_table = W.arrays["model.embed_tokens.weight"].shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= V_table):
        raise GemmaRefError(f"token id out of range: ids must be in [0, {V_table})")
    if cache is not None:
        full = [c for c, s in zip(cache, config.layers) if c is not None and s.window is None]
        if full and positions.max() >= full[0].pos.shape[1]:
            raise GemmaRefError(
                f"context too long: position {int(positions.max())} does not fit a cache of "
                f"{full[0].pos.shape[1]} positions")

    # Embedding, scaled by sqrt(D); the scale is rounded to the activation dtype first.
    E = W["model.embed_tokens.weight"]  # [V, D] (as stored, when held narrow)
    tok = ids if images is None or not images.embedded_as_pad else np.where(images.at, config.pad_token_id, ids)
    x = W.rows("model.embed_tokens.weight", tok) * np.asarray(np.sqrt(config.hidden_size), dtype)  # [B, T, D]
    record(trace, "model.embed_tokens", x)
    if images is not None:  # image soft tokens: the image features, unscaled
        x[images.at] = images.embeds
        record(trace, "model.inputs_embeds", x)  # the input of layer 0 (transformers' argument name)
    reach = None if images is None else images.reach
    ple = None
    if config.hidden_size_per_layer_input:  # image tokens take the padding token's PLE row
        ple_ids = ids if images is None else np.where(images.at, config.pad_token_id, ids)
        ple = per_layer_inputs(W, config, ple_ids, x)
    S = config.altup_num_inputs
    if S:  # Gemma 3n: the residual is S streams, made from the embedding
        x = altup_streams(x, [W[f"model.altup_projections.{s}.weight"] for s in range(S - 1)])  # [S, B, T, D]
        record(trace, "model.altup_projections", x)
    layer = altup_layer if S else decoder_layer

    # RoPE tables, one per kind of layer (config.layers[i].rope).
    rope_tables = {r: rope_angles(positions, r.head_dim, r.theta, r.factor, dtype, r.rotated)
                   for r in config.ropes}
    shared = {}  # layer -> (k, v, positions) that later layers attend with (Gemma 4)
    reuse_freed_memory()  # once per process: fewer page faults (parallel.py)
    with threads_for(B * T, W.narrow):  # prefill: our threads split the products; decoding: BLAS's (parallel.py)
        last = len(config.layers) - 1
        first_shared = config.num_hidden_layers - config.num_kv_shared_layers
        for i, spec in enumerate(config.layers):
            if last_only and trace is None and i == first_shared and 0 < i <= last:
                # From here on no layer computes keys or values (they reuse earlier
                # layers'), so for the last position's logits only the last token
                # goes on (as transformers does).
                x, positions = x[..., -1:, :], positions[:, -1:]
                ple = None if ple is None else ple[:, -1:]
                reach = None if reach is None else reach[:, -1:]
                rope_tables = {r: (cos[:, -1:], sin[:, -1:]) for r, (cos, sin) in rope_tables.items()}
            # For last_only, the last layer needs every token's keys and values (for its
            # attention and the cache) but the rest of its work for the last token only.
            keep = slice(-1, None) if last_only and i == last and trace is None else slice(None)
            if config.use_bidirectional_attention:  # an encoder: tokens see later ones too
                layer_reach = both_ways_reach(positions, spec.window)
            else:
                layer_reach = reach if images is not None and images.sees_both_ways(spec) else None
            x = layer(x, W, i, config, rope_tables[spec.rope], positions, cache, shared, trace,
                      keep, None if ple is None else ple[:, :, i], layer_reach)

        if last_only:
            x = x[..., -1:, :]
        if S:  # Gemma 3n: the streams merged back into one
            x = altup_merge(x, [W[f"model.altup_unembed_projections.{s}.weight"] for s in range(S - 1)])
            record(trace, "model.altup_unembed_projections", x)
        x = rms_norm(x, W["model.norm.weight"], config.rms_norm_eps, config.norm_offset)  # [B, T, D]
        record(trace, "model.norm", x)
        if not lm_head:
            return x
        head = E if n_vocab is None else E[:n_vocab]  # tied output head
        logits = linear(x, head)  # [B, T, D] -> [B, T, V]
    record(trace, "lm_head", logits)  # as transformers' lm_head hook: before the softcap
    if config.final_logit_softcapping is not None:
        logits = softcap(logits, config.final_logit_softcapping)
    return (logits, x) if return_hidden else logits


def record(trace, *pairs):
    """trace[name] = value for each (name, value) pair, when tracing."""
    if trace is not None:
        for name, value in zip(pairs[::2], pairs[1::2]):
            trace[name] = value.copy()
