"""Audio in (Gemma 4 E2B/E4B, Gemma 3n E2B/E4B): features -> Conformer -> soft tokens;
Gemma 4 12B Unified: raw 40 ms frames -> soft tokens (no tower: the embedder alone).

One Conformer for both generations, driven by AudioConfig; every step follows
transformers 5.25: models/gemma4/modeling_gemma4.py (Gemma4AudioModel,
Gemma4MultimodalEmbedder, Gemma4Model.forward's audio merge), models/gemma4_unified/
(Gemma4UnifiedModel.get_audio_features), models/gemma3n/modeling_gemma3n.py
(Gemma3nAudioEncoder, Gemma3nMultimodalEmbedder, Gemma3nModel.forward) and the processors
(replace_audio_token). Features come from audio_features.py. Axis legend as model.py's, plus:

    F mel frames (10 ms)   M mel bins   T' tokens (Gemma 4: 40 ms; 3n: 160 ms after the
    reduction)   C channels   Q chunk (queries per block)   X context (keys per block)
    R relative positions

The language model does not learn about audio: `audio_tokens` hands it the clips' soft
tokens as model.ImageTokens (their features in place, causal reach). Parameters keep
their transformers names, `audio_tower.*` and `embed_audio.*` (the loader drops the
`model.` of `model.audio_tower.*`); NAMES maps the two generations' module names.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio_features import GEMMA3N_FEATURES, AudioFeatures, log_mel, raw_frames, read_audio  # noqa: F401 (the API)
from .errors import GemmaRefError
from .model import ImageTokens, record, rms_norm
from .parallel import linear
from .vision_gemma4 import clipped_linear

AUDIO_MARKER = "<|audio|>"  # the audio token, which prompts write where a clip goes
GEMMA3N_AUDIO_MARKER = "<audio_soft_token>"  # Gemma 3n's


# --- configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class AudioConfig:
    """`audio_config` + the audio keys of config.json, in Gemma4AudioConfig's names and
    defaults (E2B/E4B). Gemma 3n's Gemma3nAudioConfig spells them `conf_*` / `sscp_*`
    (from_dict translates) and differs in the fields marked "3n" (gemma3n() sets them)."""

    model_type: str = "gemma4_audio"  # or "gemma3n_audio": which checkpoint names (NAMES)
    hidden_size: int = 1024  # Da (3n: 1536)
    num_hidden_layers: int = 12
    num_attention_heads: int = 8  # N (head size Da / N)
    hidden_act: str = "silu"
    subsampling_conv_channels: tuple = (128, 32)  # C0, C1 of the two stride-2 convolutions
    sscp_conv_kernel_size: tuple = ((3, 3), (3, 3))  # (time, mel) per convolution
    sscp_conv_stride_size: tuple = ((2, 2), (2, 2))
    sscp_norm: str = "layer"  # after each convolution: LayerNorm over channels; 3n: "cumulative_group"
    sscp_norm_eps: float = 1e-6  # Gemma 4: rms_norm_eps; 3n: sscp_conv_group_norm_eps (1e-3)
    sscp_time_padding: str = "centred"  # (1, 1) frames; 3n: "ahead", (0, k - 1) (the mel axis: (1, 1) in both)
    sscp_masks_input: bool = True  # padded frames zeroed before each convolution (3n: False)
    input_feat_size: int = 0  # 3n: mel bins M (Gemma 4's flatten assumes M = C0: 0)
    conv_kernel_size: int = 5  # of the causal depthwise convolution
    conv_masks_input: bool = False  # 3n: padded frames zeroed before the convolution module
    residual_weight: float = 0.5  # the macaron feed-forward halves
    attention_chunk_size: int = 12  # Q
    attention_context_left: int = 13  # a query sees keys up to context_left - 2 back (3n: - 1) ...
    attention_context_right: int = 0  # ... and up to context_right - 1 ahead (3n: context_right)
    context_inclusive: bool = False  # 3n: True (the bounds above one wider)
    relative_positions: str = "half_context"  # distances X/2 .. 0; 3n: "span", left - 1 .. -right
    key_scale: bool = True  # keys * ln(1 + e) / ln 2 (3n: False)
    attention_logit_cap: float = 50.0
    attention_invalid_logits_value: float = -1.0e9  # the score of a key not seen (3n: float32 min)
    use_clipped_linears: bool = True  # projections clamp to stored bounds (3n: plain linears)
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10  # activations clamped to +-this at fixed points
    output_proj_dims: int = 1536  # Do: the tower's output width (3n: 0, no output projection)
    reduction_factor: int = 1  # 3n: every 4th token kept after the Conformer
    audio_token_id: int = 258_881  # the soft token
    boa_token_id: int = 256_000
    eoa_token_index: int = 258_883
    text_hidden_size: int = 0  # D of the language model (embed_audio's output)
    # 3n: a clip is always `soft_tokens` tokens, padded with the embedding of hard audio
    # token `pad_token`; ids >= vocab_offset are hard audio tokens (embed_audio.embedding rows)
    soft_tokens: int = 0
    vocab_offset: int = 0
    vocab_size: int = 0
    pad_token: int = 0
    # Unified: no tower; every frame of this many raw samples (40 ms) is a soft token, embedded
    # directly (hidden_size = output_proj_dims = it, num_hidden_layers 0)
    samples_per_token: int = 0

    @property
    def head_dim(self) -> int:  # H: Gemma4AudioAttention derives it
        return self.hidden_size // self.num_attention_heads

    @property
    def context_size(self) -> int:  # X: keys each block of Q queries reads
        return self.attention_chunk_size + self.attention_context_left - 1 + self.attention_context_right

    @property
    def names(self) -> dict[str, str]:
        return NAMES[self.model_type]

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "AudioConfig | None":
        """From config.json; None without an audio tower (audio_config null or absent)."""
        if d.get("model_type") not in ("gemma4", "gemma3n", "gemma4_unified") or not d.get("audio_config"):
            return None
        if d["model_type"] == "gemma3n":
            return _gemma3n_config(d, source)
        if d["model_type"] == "gemma4_unified":
            return _unified_config(d, source)
        a = d["audio_config"]
        try:
            kw = {k: type(getattr(cls, k))(a[k]) for k in (
                "hidden_size", "num_hidden_layers", "num_attention_heads", "hidden_act", "conv_kernel_size",
                "residual_weight", "attention_chunk_size", "attention_context_left",
                "attention_context_right", "attention_logit_cap", "attention_invalid_logits_value",
                "use_clipped_linears", "rms_norm_eps", "gradient_clipping", "output_proj_dims")
                if a.get(k) is not None}
            if a.get("subsampling_conv_channels") is not None:
                kw["subsampling_conv_channels"] = tuple(int(c) for c in a["subsampling_conv_channels"])
            kw["sscp_norm_eps"] = kw.get("rms_norm_eps", cls.rms_norm_eps)
            kw.update({k: int(d[k]) for k in ("audio_token_id", "boa_token_id", "eoa_token_index")
                       if d.get(k) is not None})
            kw["text_hidden_size"] = int((d.get("text_config") or {})["hidden_size"])
            c = cls(**kw)
        except (TypeError, ValueError, KeyError) as e:
            raise GemmaRefError(f"{source}: invalid audio_config ({e})") from None
        if c.hidden_act != "silu":
            raise GemmaRefError(f"{source}: audio hidden_act {c.hidden_act!r}: only silu is implemented")
        return c

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the tower and the embedder, with its shape."""
        if self.samples_per_token:  # Unified: the embedder's projection only
            return {"embed_audio.embedding_projection.weight": (self.text_hidden_size, self.samples_per_token)}
        Da, (C0, C1), k, n = self.hidden_size, self.subsampling_conv_channels, self.conv_kernel_size, self.names
        (kt0, kf0), (kt1, kf1) = self.sscp_conv_kernel_size
        sub = "audio_tower.subsample_conv_projection."
        shapes = {
            sub + n["conv0"] + ".conv.weight": (C0, 1, kt0, kf0), sub + n["conv0"] + ".norm.weight": (C0,),
            sub + n["conv1"] + ".conv.weight": (C1, C0, kt1, kf1), sub + n["conv1"] + ".norm.weight": (C1,),
            sub + "input_proj_linear.weight": (Da, (subsampled_bins(self) if self.input_feat_size else C0 // 4) * C1),
            "embed_audio.embedding_projection.weight": (self.text_hidden_size, self.output_proj_dims or Da),
        }
        if self.output_proj_dims:
            shapes["audio_tower.output_proj.weight"] = (self.output_proj_dims, Da)
            shapes["audio_tower.output_proj.bias"] = (self.output_proj_dims,)
        if self.vocab_size:  # 3n: the hard tokens' table and the embedder's norms
            shapes["embed_audio.embedding.weight"] = (self.vocab_size, Da)
            shapes["embed_audio.hard_embedding_norm.weight"] = (Da,)
            shapes["embed_audio.soft_embedding_norm.weight"] = (Da,)
        linears = {n["q_proj"]: (Da, Da), n["k_proj"]: (Da, Da), n["v_proj"]: (Da, Da), n["post"]: (Da, Da),
                   "lconv1d.linear_start": (2 * Da, Da), "lconv1d.linear_end": (Da, Da)}
        for ff in (n["ff1"], n["ff2"]):
            linears[ff + ".ffw_layer_1"], linears[ff + ".ffw_layer_2"] = (4 * Da, Da), (Da, 4 * Da)
        for i in range(self.num_hidden_layers):
            pre = n["layer"].format(i=i)
            for name, shape in linears.items():
                shapes[pre + name + n["weight"]] = shape
                if self.use_clipped_linears:
                    for bound in ("input_min", "input_max", "output_min", "output_max"):
                        shapes[pre + name + "." + bound] = ()
            for norm in (n["norm_pre_attn"], n["norm_post_attn"], n["norm_out"], "lconv1d.pre_layer_norm",
                         "lconv1d.conv_norm", n["ff1"] + ".pre_layer_norm", n["ff1"] + ".post_layer_norm",
                         n["ff2"] + ".pre_layer_norm", n["ff2"] + ".post_layer_norm"):
                shapes[pre + norm + ".weight"] = (Da,)
            shapes[pre + n["relative_k_proj"] + ".weight"] = (Da, Da)
            shapes[pre + n["per_dim_scale"]] = (self.head_dim,)
            shapes[pre + "lconv1d.depthwise_conv1d.weight"] = (Da, 1, k)
        return shapes


# The two checkpoints' names for the same parts (transformers' module names).
NAMES = {
    "gemma4_audio": dict(layer="audio_tower.layers.{i}.", conv0="layer0", conv1="layer1", weight=".linear.weight",
                         ff1="feed_forward1", ff2="feed_forward2", norm_pre_attn="norm_pre_attn",
                         norm_post_attn="norm_post_attn", norm_out="norm_out", q_proj="self_attn.q_proj",
                         k_proj="self_attn.k_proj", v_proj="self_attn.v_proj", post="self_attn.post",
                         relative_k_proj="self_attn.relative_k_proj", per_dim_scale="self_attn.per_dim_scale"),
    "gemma3n_audio": dict(layer="audio_tower.conformer.{i}.", conv0="conv_0", conv1="conv_1", weight=".weight",
                          ff1="ffw_layer_start", ff2="ffw_layer_end", norm_pre_attn="attention.pre_attn_norm",
                          norm_post_attn="attention.post_norm", norm_out="norm", q_proj="attention.attn.q_proj",
                          k_proj="attention.attn.k_proj", v_proj="attention.attn.v_proj", post="attention.post",
                          relative_k_proj="attention.attn.relative_position_embedding.pos_proj",
                          per_dim_scale="attention.attn.per_dim_scale"),
}


def _gemma3n_config(d: dict, source: str) -> AudioConfig:
    """Gemma3nAudioConfig (and Gemma3nConfig's audio keys) in AudioConfig's terms."""
    a = d["audio_config"]
    get = lambda k, default: default if a.get(k) is None else a[k]  # noqa: E731
    try:
        c = AudioConfig(
            model_type="gemma3n_audio", hidden_size=int(get("hidden_size", 1536)),
            num_hidden_layers=int(get("conf_num_hidden_layers", 12)),
            num_attention_heads=int(get("conf_num_attention_heads", 8)),
            subsampling_conv_channels=tuple(int(x) for x in get("sscp_conv_channel_size", (128, 32))),
            sscp_conv_kernel_size=tuple(tuple(int(x) for x in k) for k in get("sscp_conv_kernel_size", ((3, 3),) * 2)),
            sscp_conv_stride_size=tuple(tuple(int(x) for x in k) for k in get("sscp_conv_stride_size", ((2, 2),) * 2)),
            sscp_norm="cumulative_group", sscp_norm_eps=float(get("sscp_conv_group_norm_eps", 1e-3)),
            sscp_time_padding="ahead", sscp_masks_input=False, input_feat_size=int(get("input_feat_size", 128)),
            conv_kernel_size=int(get("conf_conv_kernel_size", 5)), conv_masks_input=True,
            residual_weight=float(get("conf_residual_weight", 0.5)),
            attention_chunk_size=int(get("conf_attention_chunk_size", 12)),
            attention_context_left=int(get("conf_attention_context_left", 13)),
            attention_context_right=int(get("conf_attention_context_right", 0)),
            context_inclusive=True, relative_positions="span", key_scale=False,
            attention_logit_cap=float(get("conf_attention_logit_cap", 50.0)),
            attention_invalid_logits_value=float(np.finfo(np.float32).min), use_clipped_linears=False,
            rms_norm_eps=float(get("rms_norm_eps", 1e-6)), gradient_clipping=float(get("gradient_clipping", 1e10)),
            output_proj_dims=0, reduction_factor=int(get("conf_reduction_factor", 4)),
            audio_token_id=int(d.get("audio_token_id", 262_273)), boa_token_id=int(d.get("boa_token_id", 256_000)),
            eoa_token_index=int(d.get("eoa_token_id", 262_272)),
            text_hidden_size=int((d.get("text_config") or {})["hidden_size"]),
            soft_tokens=int(d.get("audio_soft_tokens_per_image") or 188),
            vocab_offset=int(get("vocab_offset", 262_144 + 128)), vocab_size=int(get("vocab_size", 128)),
            pad_token=int((d.get("text_config") or {}).get("vocab_size", 262_400)) - 1)
    except (TypeError, ValueError, KeyError) as e:
        raise GemmaRefError(f"{source}: invalid audio_config ({e})") from None
    if get("hidden_act", "silu") not in ("silu", "swish"):
        raise GemmaRefError(f"{source}: audio hidden_act {a['hidden_act']!r}: only silu is implemented")
    return c


def _unified_config(d: dict, source: str) -> AudioConfig:
    """Gemma4UnifiedAudioConfig: audio_embed_dim (samples per token) and rms_norm_eps."""
    a = d["audio_config"]
    try:
        n = int(a.get("audio_embed_dim") or 640)
        return AudioConfig(
            model_type="gemma4_unified_audio", hidden_size=n, num_hidden_layers=0, output_proj_dims=n,
            samples_per_token=n, rms_norm_eps=float(a.get("rms_norm_eps") or 1e-6),
            text_hidden_size=int((d.get("text_config") or {})["hidden_size"]),
            **{k: int(d[k]) for k in ("audio_token_id", "boa_token_id", "eoa_token_index") if d.get(k) is not None})
    except (TypeError, ValueError, KeyError) as e:
        raise GemmaRefError(f"{source}: invalid audio_config ({e})") from None


def subsampled_bins(c: AudioConfig) -> int:
    """3n: mel bins left after the two convolutions (frequency padding 1 each side)."""
    M = c.input_feat_size
    for (_, kf), (_, sf) in zip(c.sscp_conv_kernel_size, c.sscp_conv_stride_size):
        M = (M + 2 - kf) // sf + 1
    return M


# --- the tower -------------------------------------------------------------------------------


def conv2d(x, w, stride, padding):
    """2-D convolution, no bias.         [C_in, F, M], [C, C_in, kt, kf] -> [C, F', M']
    stride (st, sf); padding ((before, after) in time, (before, after) in mel), zeros."""
    C_in, F, M = x.shape
    kt, kf = w.shape[2:]
    (st, sf), (pt, pf) = stride, padding
    xp = np.pad(x, ((0, 0), pt, pf))
    F2, M2 = (xp.shape[1] - kt) // st + 1, (xp.shape[2] - kf) // sf + 1
    # patches[c, i, j, f, m] = xp[c, st f + i, sf m + j]
    patches = np.stack([np.stack([xp[:, i:i + st * (F2 - 1) + 1:st, j:j + sf * (M2 - 1) + 1:sf]
                                  for j in range(kf)], 1) for i in range(kt)], 1)  # [C_in, kt, kf, F', M']
    return np.einsum("oikl,iklfm->ofm", w, patches, optimize=True)


def conv2d_stride2(x, w):
    """Gemma 4's: 3x3, stride 2, zero padding 1.           [C_in, F, M] -> [C, F/2, M/2]"""
    return conv2d(x, w, (2, 2), ((1, 1), (1, 1)))


def layer_norm(x, w, eps):
    """(x - mean) / sqrt(var + eps) * w, over the last axis (no bias)."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + np.float32(eps)) * w


def cumulative_group_norm(x, w, eps):
    """Gemma 3n: normalised by the mean and variance of everything up to each time step.

    x [T, M', C] -> [T, M', C]; mean_t = sum(x[:t+1]) / n_t, var_t = sum over s <= t of
    sum((x_s - mean_s)^2) / n_t (each step's deviations from its own running mean), n_t the
    values counted (Gemma3nAudioCumulativeGroupNorm, no mask).
    """
    n = np.cumsum(np.full(len(x), x[0].size, np.float32))[:, None, None]  # [T, 1, 1]
    mean = np.cumsum(x.sum(axis=(1, 2), keepdims=True), axis=0) / n
    var = np.cumsum(((x - mean) ** 2).sum(axis=(1, 2), keepdims=True), axis=0) / n
    return (x - mean) / np.sqrt(var + np.float32(eps)) * w


def subsample(features, mask, W, c: AudioConfig, trace=None):
    """Two [conv (stride 2) -> norm -> ReLU] blocks, then a linear.

    features [F, M], mask [F] -> [T', Da], mask [T']   (T' = F/4; Gemma4AudioSubSampleConvProjection)
    Gemma 4: 3x3 convolutions padded 1 all round, LayerNorm over channels, each block first
    zeroes the frames that are not audio, the mask halved with each. 3n: the time axis
    padded (0, k - 1) (a frame reads the ones after it), the cumulative group norm, no
    zeroing; the mask is the frames at every 4th step.
    """
    pre, n = "audio_tower.subsample_conv_projection.", c.names
    h = features[None]  # [1, F, M]: one input channel
    frames = np.arange(len(mask))
    for i in range(2):
        if c.sscp_masks_input:  # Gemma 4: the frames of this resolution that are audio
            h = h * mask[frames][None, :, None]
        w = W[pre + n[f"conv{i}"] + ".conv.weight"]  # [C, C_in, kt, kf]
        kt = w.shape[2]
        time_pad = (1, 1) if c.sscp_time_padding == "centred" else (0, kt - 1)
        h = conv2d(h, w, c.sscp_conv_stride_size[i], (time_pad, (1, 1)))  # [C, F/2, M/2]
        norm = layer_norm if c.sscp_norm == "layer" else cumulative_group_norm
        h = norm(h.transpose(1, 2, 0), W[pre + n[f"conv{i}"] + ".norm.weight"], c.sscp_norm_eps)  # [F/2, M/2, C]
        h = np.maximum(h, 0).transpose(2, 0, 1)  # ReLU; [C, F/2, M/2]
        frames = frames[::c.sscp_conv_stride_size[i][0]]
        record(trace, pre + n[f"conv{i}"], h.transpose(1, 2, 0)[None])  # [1, F', M', C]: time second
    C, T, M4 = h.shape
    h = h.transpose(1, 2, 0).reshape(T, M4 * C)  # [T', M/4 * C]: channels fastest
    h = linear(h, W[pre + "input_proj_linear.weight"])  # [T', Da]
    record(trace, pre + "input_proj_linear", h[None])
    if c.sscp_masks_input:  # Gemma 4: mask[::2][::2]
        return h, mask[frames[:T]]
    stride = np.prod([s for s, _ in c.sscp_conv_stride_size])  # 3n: the frame at each token's start
    return h, mask[np.minimum(np.arange(T) * stride, len(mask) - 1)]


def silu(x):
    """x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def project(x, W, name, c: AudioConfig):
    """x @ w.T: Gemma 4's clippable linears (inputs and outputs clamped to stored bounds),
    3n's plain ones."""
    if c.model_type == "gemma4_audio":
        return clipped_linear(x, W, name, c.use_clipped_linears)
    return linear(x, W[name + ".weight"])


def feed_forward(x, W, pre, c: AudioConfig):
    """Half a macaron: x + w_r * norm(clip(ffw2(silu(ffw1(norm(clip(x))))))).   [T', Da] -> [T', Da]"""
    g = np.float32(c.gradient_clipping)
    h = rms_norm(np.clip(x, -g, g), W[pre + "pre_layer_norm.weight"], 1e-6, 0.0)
    h = project(h, W, pre + "ffw_layer_1", c)  # [T', 4Da]
    h = project(silu(h), W, pre + "ffw_layer_2", c)  # [T', Da]
    h = rms_norm(np.clip(h, -g, g), W[pre + "post_layer_norm.weight"], 1e-6, 0.0)
    return x + h * np.float32(c.residual_weight)


def relative_positions(c: AudioConfig, dtype) -> np.ndarray:
    """Sinusoids of the distances X/2, ..., 1, 0 (3n: left - 1, ..., -right): [sin | cos] of
    distance * 1e4^(-i/(Da/2-1)).                                    -> [R, Da], R = X/2 + 1"""
    n = c.hidden_size // 2
    inv = np.exp(np.arange(n, dtype=dtype) * dtype(-math.log(1e4) / max(n - 1, 1)))  # [Da/2]
    first, last = ((c.context_size // 2, 0) if c.relative_positions == "half_context"
                   else (max(0, c.attention_context_left - 1), -c.attention_context_right))
    t = np.arange(first, last - 1, -1).astype(dtype)[:, None] * inv  # [R, Da/2]
    return np.concatenate([np.sin(t), np.cos(t)], axis=-1)


def blocks(x, c: AudioConfig):
    """Queries in blocks of Q (zero-padded).                 [T', N, H] -> [B_k, Q, N, H]"""
    Q = c.attention_chunk_size
    n = -(-len(x) // Q)
    return np.pad(x, ((0, n * Q - len(x)), (0, 0), (0, 0))).reshape(n, Q, *x.shape[1:])


def block_context(x, c: AudioConfig):
    """For block b, the X keys at b*Q - (left - 1) ... b*Q + Q - 1 + right (zeros outside).
                                                                    [T', N, H] -> [B_k, X, N, H]"""
    Q, X, past = c.attention_chunk_size, c.context_size, c.attention_context_left - 1
    n = -(-len(x) // Q)
    xp = np.pad(x, ((past, c.attention_context_right + Q - 1), (0, 0), (0, 0)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, X, axis=0)[::Q][:n]  # [B_k, N, H, X], a view
    return np.moveaxis(windows, -1, 1)


def rel_shift(bd, X: int):
    """Transformer-XL's shift (arXiv 1901.02860 app. B): scores against relative positions
    [.., Q, R] become scores against the block's keys [.., Q, X]: row i moves right by i
    (entry j takes relative position j - i; zero where that is outside 0..R-1 or, for
    large blocks, the previous row's tail, exactly as transformers' pad-and-reshape)."""
    *lead, Q, R = bd.shape
    bd = np.pad(bd, [(0, 0)] * len(lead) + [(0, 0), (0, X + 1 - R)])  # [.., Q, X + 1]
    return bd.reshape(*lead, Q * (X + 1))[..., :Q * X].reshape(*lead, Q, X)


def key_visible(mask, c: AudioConfig) -> np.ndarray:
    """Which of its block's X keys each query sees: a real frame, 0 <= q - k < left - 1
    (or up to right - 1 ahead); 3n: -right <= q - k <= left - 1.   mask [T'] -> [B_k, Q, X] bool"""
    Q, X, past = c.attention_chunk_size, c.context_size, c.attention_context_left - 1
    n = -(-len(mask) // Q)
    q = np.arange(n * Q).reshape(n, Q, 1)  # [B_k, Q, 1] query positions
    k = (np.arange(n)[:, None] * Q - past + np.arange(X))[:, None, :]  # [B_k, 1, X] key positions
    real = np.concatenate([mask, np.zeros(past + X + n * Q, bool)])[np.clip(k, 0, None)] & (k >= 0)
    d = q - k
    if c.context_inclusive:  # Gemma3nAudioAttention.local_causal_valid_mask
        return real & (d <= past) & (-d <= c.attention_context_right)
    return real & (((d >= 0) & (d < past)) | ((d < 0) & (-d < c.attention_context_right)))


def self_attention(x, mask, W, pre, c: AudioConfig, rel):
    """Chunked local attention with a relative-position term and a logit soft cap.

    x [T', Da], mask [T'], rel [R, Da] -> [T', Da]
    q = q_proj(x) / sqrt(H) / ln 2 * softplus(per_dim_scale);  k = k_proj(x) * ln(1 + e) / ln 2
    (3n: k unscaled; its 1 / softplus(0) is the same 1 / ln 2);
    score(i, j) = cap * tanh((q_i . k_j + q_i . r_{i - j}) / cap), r = relative_k_proj(rel);
    keys not visible (key_visible) score attention_invalid_logits_value. `pre`: the layer's.
    """
    T, Da = x.shape
    N, H, X, n = c.num_attention_heads, c.head_dim, c.context_size, c.names
    q = project(x, W, pre + n["q_proj"], c).reshape(T, N, H)
    k = project(x, W, pre + n["k_proj"], c).reshape(T, N, H)
    v = project(x, W, pre + n["v_proj"], c).reshape(T, N, H)
    softplus = np.log1p(np.exp(W[pre + n["per_dim_scale"]]))  # [H]
    q = q * np.float32(H ** -0.5 / math.log(2)) * softplus
    if c.key_scale:
        k = k * np.float32(math.log(1 + math.e) / math.log(2))
    qb = blocks(q, c).transpose(2, 0, 1, 3)  # [N, B_k, Q, H]
    kb = block_context(k, c).transpose(2, 0, 3, 1)  # [N, B_k, H, X]
    vb = block_context(v, c).transpose(2, 0, 1, 3)  # [N, B_k, X, H]
    r = linear(rel, W[pre + n["relative_k_proj"] + ".weight"]).reshape(-1, N, H).transpose(1, 2, 0)  # [N, H, R]
    ac = qb @ kb  # [N, B_k, Q, X]  content
    bd = rel_shift(qb @ r[:, None], X)  # [N, B_k, Q, R] -> [N, B_k, Q, X]  position
    cap = np.float32(c.attention_logit_cap)
    scores = np.tanh((ac + bd) / cap) * cap
    scores = np.where(key_visible(mask, c)[None], scores, np.float32(c.attention_invalid_logits_value))
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    out = (e / e.sum(axis=-1, keepdims=True)) @ vb  # [N, B_k, Q, H]
    out = out.transpose(1, 2, 0, 3).reshape(-1, N * H)[:T]  # [T', Da]
    return project(out, W, pre + n["post"], c)


def light_conv(x, W, pre, c: AudioConfig):
    """The convolution module: x + end(silu(norm(clip(causal_depthwise(glu(start(norm(x)))))))).
                                                                            [T', Da] -> [T', Da]"""
    g, k = np.float32(c.gradient_clipping), c.conv_kernel_size
    h = rms_norm(x, W[pre + "pre_layer_norm.weight"], c.rms_norm_eps, 0.0)
    h = project(h, W, pre + "linear_start", c)  # [T', 2Da]
    a, b = np.split(h, 2, axis=-1)
    h = a / (1.0 + np.exp(-b))  # GLU: a * sigmoid(b)   [T', Da]
    w = W[pre + "depthwise_conv1d.weight"][:, 0]  # [Da, k]
    hp = np.pad(h, ((k - 1, 0), (0, 0)))  # causal: k - 1 zeros in front
    h = sum(hp[j:j + len(h)] * w[:, j] for j in range(k))  # out[t] = sum_j w[j] h[t - (k-1) + j]
    h = rms_norm(np.clip(h, -g, g), W[pre + "conv_norm.weight"], c.rms_norm_eps, 0.0)
    return x + project(silu(h), W, pre + "linear_end", c)


def conformer_layer(x, mask, W, i, c: AudioConfig, rel, trace=None):
    """One Conformer block (macaron).                                    [T', Da] -> [T', Da]

    x = x + ff1(x) / 2;  x = x + norm(clip(attn(norm(clip(x)))));  x = x + conv(x);
    x = x + ff2(x) / 2;  out = norm(clip(x))      (Gemma4AudioLayer, Gemma3nAudioConformerBlock;
    3n zeroes the padded frames before conv)
    """
    n, g = c.names, np.float32(c.gradient_clipping)
    pre = n["layer"].format(i=i)
    x = feed_forward(x, W, pre + n["ff1"] + ".", c)
    record(trace, pre + n["ff1"], x[None])
    h = rms_norm(np.clip(x, -g, g), W[pre + n["norm_pre_attn"] + ".weight"], 1e-6, 0.0)
    h = self_attention(h, mask, W, pre, c, rel)
    record(trace, pre + n["post"], h[None])
    x = x + rms_norm(np.clip(h, -g, g), W[pre + n["norm_post_attn"] + ".weight"], 1e-6, 0.0)
    if c.conv_masks_input:
        x = x * mask[:, None]
    x = light_conv(x, W, pre + "lconv1d.", c)
    record(trace, pre + "lconv1d", x[None])
    x = feed_forward(x, W, pre + n["ff2"] + ".", c)
    x = rms_norm(np.clip(x, -g, g), W[pre + n["norm_out"] + ".weight"], 1e-6, 0.0)
    record(trace, pre[:-1], x[None])
    return x


def audio_tower(features, mask, W, c: AudioConfig, trace=None):
    """Gemma4AudioModel / Gemma3nAudioEncoder: features [F, M], mask [F] -> [T', Do] and
    mask [T'] (all tokens, padding ones included, as transformers' last_hidden_state).
    Gemma 4 ends with a projection; 3n keeps every 4th token and zeroes padded ones."""
    x, mask = subsample(features, mask, W, c, trace)
    rel = relative_positions(c, np.float32)
    for i in range(c.num_hidden_layers):
        x = conformer_layer(x, mask, W, i, c, rel, trace)
    if c.output_proj_dims:
        x = linear(x, W["audio_tower.output_proj.weight"]) + W["audio_tower.output_proj.bias"]
    if c.reduction_factor > 1:
        x, mask = x[::c.reduction_factor] * mask[::c.reduction_factor, None], mask[::c.reduction_factor]
    record(trace, "audio_tower", x[None])
    return x, mask


def embed_audio(x, W, c: AudioConfig):
    """Soft tokens into the language model.                          [T', Do] -> [T', D]

    Gemma4MultimodalEmbedder (and Unified's): RMSNorm (no weight), then a projection. Gemma3nMultimodalEmbedder:
    RMSNorm (soft_embedding_norm), the projection, RMSNorm (no weight)."""
    if not c.vocab_size:
        return linear(rms_norm(x, None, c.rms_norm_eps), W["embed_audio.embedding_projection.weight"])
    return _embed_3n(rms_norm(x, W["embed_audio.soft_embedding_norm.weight"], c.rms_norm_eps, 0.0), W, c)


def embed_hard_audio(ids, W, c: AudioConfig):
    """3n: hard audio tokens (ids >= vocab_offset) through their table.        [n] -> [n, D]
    RMSNorm (hard_embedding_norm), the projection, RMSNorm (no weight)."""
    rows = W["embed_audio.embedding.weight"][np.asarray(ids) - c.vocab_offset]  # [n, Da]
    return _embed_3n(rms_norm(rows, W["embed_audio.hard_embedding_norm.weight"], c.rms_norm_eps, 0.0), W, c)


def _embed_3n(normed, W, c: AudioConfig):
    return rms_norm(linear(normed, W["embed_audio.embedding_projection.weight"]), None, c.rms_norm_eps)


def clip_embeddings(features, mask, W, c: AudioConfig, trace=None):
    """A clip's soft tokens: the tower, the embedder; the real tokens only (Gemma 4), or
    (3n) always soft_tokens of them, padding ones and the rest the pad token's embedding.
    Unified: no tower, the features are the raw frames [N, 640] the embedder reads.
                                                                          -> [n, D]"""
    x = features
    if not c.samples_per_token:
        x, mask = audio_tower(features, mask, W, c, trace)
    out = embed_audio(x, W, c)
    record(trace, "embed_audio", out[None])
    if not c.soft_tokens:
        return out[mask]
    pad = embed_hard_audio([c.pad_token], W, c)  # [1, D]
    out = np.where(mask[:, None], out, pad)[:c.soft_tokens]
    return np.concatenate([out, np.repeat(pad, c.soft_tokens - len(out), axis=0)])


# --- prompts ------------------------------------------------------------------------------


def audio_tokens(ids, rows, W, c: AudioConfig) -> ImageTokens:
    """model.ImageTokens for the audio tokens of a chunk, each seeing what a text token
    would (causal). Gemma 4: the soft tokens, embedded as <pad>, their features in place.
    3n: every id >= vocab_offset: the soft tokens' features, and the hard audio tokens
    (<eoa> is one) embedded by embed_audio's own table (Gemma3nModel.forward)."""
    ids = np.asarray(ids)
    soft = ids == c.audio_token_id  # [B, T]
    if soft.sum() != len(rows):
        raise GemmaRefError(f"the ids hold {int(soft.sum())} audio soft tokens, the clips give {len(rows)}")
    if not c.vocab_size:
        return ImageTokens(at=soft, embeds=rows, reach=np.zeros(soft.shape, np.int64), layers="none",
                           embedded_as_pad=True)
    at = ids >= c.vocab_offset  # [B, T]
    full = np.zeros(ids.shape + (c.text_hidden_size,), np.float32)
    full[soft] = rows
    hard = at & ~soft
    if hard.any():
        full[hard] = embed_hard_audio(ids[hard], W, c)
    return ImageTokens(at=at, embeds=full[at], reach=np.zeros(at.shape, np.int64), layers="none")


def merge(a: ImageTokens | None, b: ImageTokens | None) -> ImageTokens | None:
    """Image and audio soft tokens of one chunk as one ImageTokens (image a's reach and layers)."""
    if a is None or b is None:
        return a if b is None else b
    B, T = a.at.shape
    full = np.zeros((B, T, a.embeds.shape[-1]), a.embeds.dtype)
    full[a.at], full[b.at] = a.embeds, b.embeds
    at = a.at | b.at
    return ImageTokens(at=at, embeds=full[at], reach=a.reach, layers=a.layers,
                       embedded_as_pad=a.embedded_as_pad)


def expand_markers(text: str, blocks: dict[str, list[list[int]]], encode) -> list[int]:
    """Token ids of a prompt whose markers (image and audio) become their blocks of ids,
    in order of appearance; the text between them is encoded (bos before the first piece)."""
    pattern = "|".join(re.escape(m) for m in sorted(blocks, key=len, reverse=True))
    pieces = re.split(f"({pattern})", text)  # text, marker, text, marker, ..., text
    found = pieces[1::2]
    for marker, bs in blocks.items():
        if found.count(marker) != len(bs):
            what = "audio clip(s)" if marker == AUDIO_MARKER or "audio" in marker else "image(s)"
            raise GemmaRefError(f"the prompt has {found.count(marker)} {marker} marker(s) for {len(bs)} "
                                f"{what}; give one per marker")
    left = {m: iter(bs) for m, bs in blocks.items()}
    ids = encode(pieces[0], True)
    for marker, piece in zip(pieces[1::2], pieces[2::2]):
        ids += next(left[marker]) + encode(piece, False)
    return ids


@dataclass(frozen=True)
class Audio:
    """The audio seam of a model: its tower's config, its feature extractor, and what the
    API asks of them (clips -> soft tokens, the ids of a clip's block, the soft tokens
    of a chunk for model.forward). Gemma 4 12B Unified has no tower: its features are raw
    40 ms frames (config.samples_per_token), its "tower" the embedder alone."""

    config: AudioConfig
    features: AudioFeatures

    @classmethod
    def from_checkpoint(cls, raw: dict, path: Path) -> "Audio | None":
        """From config.json (as a dict) and the processor files; None without an audio tower."""
        config = AudioConfig.from_dict(raw, str(Path(path) / "config.json"))
        if config is None:
            return None
        features = AudioFeatures.from_dir(path, gemma3n=config.model_type == "gemma3n_audio")
        if config.samples_per_token:  # Unified: no mel features; a "feature" is a frame of samples
            features = dataclasses.replace(features, feature_size=config.samples_per_token)
        return cls(config, features)

    @property
    def marker(self) -> str:
        """What a prompt writes where a clip goes when the tokenizer does not say: the
        audio token's spelling (Gemma 4 <|audio|>, 3n <audio_soft_token>)."""
        return GEMMA3N_AUDIO_MARKER if self.config.model_type == "gemma3n_audio" else AUDIO_MARKER

    def clip_features(self, clip, what: str = "audio", length: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """A clip (path or (samples, rate)) -> its log-mel features [F, M] and frame mask [F]
        (length: pad as in a batch with a clip of that many samples); Unified: its frames."""
        return self._features(read_audio(clip, self.features.sampling_rate, what), length)

    def _features(self, samples, length: int) -> tuple[np.ndarray, np.ndarray]:
        if self.config.samples_per_token:  # a batch's padding only adds frames that are not real
            return raw_frames(samples, self.config.samples_per_token)
        return log_mel(samples, self.features, length)

    def batch_features(self, clips) -> list[tuple[np.ndarray, np.ndarray]]:
        """The clips' features as one processor call makes them: each clip's samples padded
        to the longest's (for 3n that changes the last frames a convolution reads)."""
        samples = [read_audio(c, self.features.sampling_rate, f"audio {k + 1}") for k, c in enumerate(clips)]
        longest = max((len(x) for x in samples), default=0)
        return [self._features(x, longest) for x in samples]

    def wrap(self, prompt: str, marker: str) -> str:
        """3n: the processor writes "\n\n" on both sides of a clip's block (as text)."""
        return prompt if self.config.model_type != "gemma3n_audio" else prompt.replace(marker, f"\n\n{marker}\n\n")

    def embed(self, clips, W, trace: dict | None = None) -> list[np.ndarray]:
        """Soft-token embeddings of clips, one [n_i, D] per clip.

        clips: paths or (samples, rate) pairs; or the processor's features, a dict with
        `input_features` [I, F, M] and `input_features_mask` [I, F] (padded frames False).
        The trace holds the tower's steps under transformers' module names, [I, T', ...]
        (a shorter clip's padded with zeros; the subsampling convolutions' [I, F', M', C],
        time second, where transformers' module outputs are [I, C, F', M'])."""
        if isinstance(clips, dict):
            if set(clips) != {"input_features", "input_features_mask"}:
                raise GemmaRefError("audio as a dict: the processor's 'input_features' and "
                                    f"'input_features_mask', not {sorted(clips)}")
            feats = np.asarray(clips["input_features"], np.float32)
            masks = np.asarray(clips["input_features_mask"], bool)
            M = self.features.feature_size
            if feats.ndim != 3 or feats.shape[-1] != M or masks.shape != feats.shape[:2]:
                raise GemmaRefError(f"input_features must be [clips, frames, {M}] with a mask [clips, frames], "
                                    f"got {feats.shape} and {masks.shape}")
            pairs = list(zip(feats, masks))
        else:
            if isinstance(clips, (str, Path)) or (isinstance(clips, tuple) and len(clips) == 2
                                                  and not isinstance(clips[1], (tuple, str, Path))):
                clips = [clips]
            pairs = self.batch_features(clips)
        traces = [{} if trace is not None else None for _ in pairs]
        out = [clip_embeddings(f, m, W, self.config, t) for (f, m), t in zip(pairs, traces)]
        if trace is not None and pairs:  # the clips side by side, as transformers batches them
            for name in traces[0]:
                n = max(t[name].shape[1] for t in traces)
                trace[name] = np.concatenate([np.pad(t[name], [(0, 0), (0, n - t[name].shape[1])]
                                                     + [(0, 0)] * (t[name].ndim - 2)) for t in traces])
        return out

    def block(self, n: int) -> list[int]:
        """A clip's ids in a prompt: boa, n x audio token, eoa (3n: n is always 188)."""
        c = self.config
        return [c.boa_token_id] + [c.audio_token_id] * n + [c.eoa_token_index]

    def tokens(self, ids, rows, W) -> ImageTokens:
        """The audio tokens of a chunk of ids, for model.forward (see audio_tokens)."""
        return audio_tokens(ids, rows, W, self.config)

    @property
    def token_ids(self) -> tuple[int, int, int]:
        c = self.config
        return c.audio_token_id, c.boa_token_id, c.eoa_token_index
