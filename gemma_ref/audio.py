"""Audio in (Gemma 4 E2B/E4B): waveform -> log-mel -> Conformer -> soft tokens.

Every step follows transformers 5.25: models/gemma4/feature_extraction_gemma4.py
(Gemma4AudioFeatureExtractor), models/gemma4/modeling_gemma4.py (Gemma4AudioModel,
Gemma4MultimodalEmbedder, Gemma4Model.forward's audio merge) and processing_gemma4.py
(replace_audio_token); the decoding of files as transformers.audio_utils.load_audio's
soundfile backend (soundfile + soxr). Axis legend as model.py's, plus:

    A samples   F mel frames (10 ms)   M mel bins   T' tokens (40 ms)   C channels
    Q chunk (queries per block)   X context (keys per block)   R relative positions

The language model does not learn about audio: `audio_tokens` hands it the clips' soft
tokens as model.ImageTokens (embedded as <pad>, their features in place, causal reach).
Parameters keep their transformers names, `audio_tower.*` and `embed_audio.*` (the
loader drops the `model.` of `model.audio_tower.*`).
"""

from __future__ import annotations

import json
import math
import re
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GemmaRefError
from .model import ImageTokens, record, rms_norm
from .parallel import linear
from .vision_gemma4 import clipped_linear

AUDIO_MARKER = "<|audio|>"  # the audio token, which prompts write where a clip goes


# --- configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class AudioConfig:
    """`audio_config` (Gemma4AudioConfig keys and defaults) + the audio keys of config.json."""

    hidden_size: int = 1024  # Da
    num_hidden_layers: int = 12
    num_attention_heads: int = 8  # N (head size Da / N)
    hidden_act: str = "silu"
    subsampling_conv_channels: tuple = (128, 32)  # C0, C1 of the two stride-2 convolutions
    conv_kernel_size: int = 5  # of the causal depthwise convolution
    residual_weight: float = 0.5  # the macaron feed-forward halves
    attention_chunk_size: int = 12  # Q
    attention_context_left: int = 13  # keys reach back context_left - 1 blocks' worth ...
    attention_context_right: int = 0  # ... and forward context_right
    attention_logit_cap: float = 50.0
    attention_invalid_logits_value: float = -1.0e9  # the score of a key not seen
    use_clipped_linears: bool = True  # q/k/v/post/ffw/lconv projections clamp to stored bounds
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10  # activations clamped to +-this at fixed points
    output_proj_dims: int = 1536  # Do: the tower's output width
    audio_token_id: int = 258_881  # the soft token
    boa_token_id: int = 256_000
    eoa_token_index: int = 258_883
    text_hidden_size: int = 0  # D of the language model (embed_audio's output)

    @property
    def head_dim(self) -> int:  # H: Gemma4AudioAttention derives it
        return self.hidden_size // self.num_attention_heads

    @property
    def context_size(self) -> int:  # X: keys each block of Q queries reads
        return self.attention_chunk_size + self.attention_context_left - 1 + self.attention_context_right

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "AudioConfig | None":
        """From config.json; None without an audio tower (audio_config null or absent)."""
        if d.get("model_type") != "gemma4" or not d.get("audio_config"):
            return None
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
        Da, (C0, C1), k = self.hidden_size, self.subsampling_conv_channels, self.conv_kernel_size
        sub = "audio_tower.subsample_conv_projection."
        shapes = {
            sub + "layer0.conv.weight": (C0, 1, 3, 3), sub + "layer0.norm.weight": (C0,),
            sub + "layer1.conv.weight": (C1, C0, 3, 3), sub + "layer1.norm.weight": (C1,),
            sub + "input_proj_linear.weight": (Da, (C0 // 4) * C1),
            "audio_tower.output_proj.weight": (self.output_proj_dims, Da),
            "audio_tower.output_proj.bias": (self.output_proj_dims,),
            "embed_audio.embedding_projection.weight": (self.text_hidden_size, self.output_proj_dims),
        }
        clipped = {"self_attn.q_proj": (Da, Da), "self_attn.k_proj": (Da, Da), "self_attn.v_proj": (Da, Da),
                   "self_attn.post": (Da, Da), "lconv1d.linear_start": (2 * Da, Da),
                   "lconv1d.linear_end": (Da, Da)}
        for ff in ("feed_forward1", "feed_forward2"):
            clipped[ff + ".ffw_layer_1"], clipped[ff + ".ffw_layer_2"] = (4 * Da, Da), (Da, 4 * Da)
        for i in range(self.num_hidden_layers):
            pre = f"audio_tower.layers.{i}."
            for name, shape in clipped.items():
                shapes[pre + name + ".linear.weight"] = shape
                if self.use_clipped_linears:
                    for bound in ("input_min", "input_max", "output_min", "output_max"):
                        shapes[pre + name + "." + bound] = ()
            for norm in ("norm_pre_attn", "norm_post_attn", "norm_out", "lconv1d.pre_layer_norm",
                         "lconv1d.conv_norm", "feed_forward1.pre_layer_norm", "feed_forward1.post_layer_norm",
                         "feed_forward2.pre_layer_norm", "feed_forward2.post_layer_norm"):
                shapes[pre + norm + ".weight"] = (Da,)
            shapes[pre + "self_attn.relative_k_proj.weight"] = (Da, Da)
            shapes[pre + "self_attn.per_dim_scale"] = (self.head_dim,)
            shapes[pre + "lconv1d.depthwise_conv1d.weight"] = (Da, 1, k)
        return shapes


@dataclass(frozen=True)
class AudioFeatures:
    """The feature extractor's settings (Gemma4AudioFeatureExtractor keys and defaults) and
    the processor's token cap (processor_config.json's audio_seq_length)."""

    feature_size: int = 128  # M mel bins
    sampling_rate: int = 16_000
    frame_length_ms: float = 20.0
    hop_length_ms: float = 10.0
    min_frequency: float = 0.0
    max_frequency: float = 8000.0
    preemphasis: float = 0.0
    preemphasis_htk_flavor: bool = True
    fft_overdrive: bool = False
    dither: float = 0.0  # > 0 adds unseeded noise in transformers: refused here
    input_scale_factor: float = 1.0
    mel_floor: float = 1e-3
    per_bin_mean: tuple | None = None
    per_bin_stddev: tuple | None = None
    max_length: int = 480_000  # samples kept (30 s); longer clips are truncated
    pad_to_multiple_of: int = 128  # samples
    audio_seq_length: int = 750  # the processor's cap on tokens per clip
    filters: np.ndarray = field(default=None, repr=False, compare=False)  # [fft/2 + 1, M], made once

    @property
    def frame_length(self) -> int:  # samples per window (320)
        return int(round(self.sampling_rate * self.frame_length_ms / 1000.0))

    @property
    def hop_length(self) -> int:  # samples between windows (160)
        return int(round(self.sampling_rate * self.hop_length_ms / 1000.0))

    @property
    def fft_length(self) -> int:  # the next power of two (512), doubled by fft_overdrive
        return 2 ** math.ceil(math.log2(self.frame_length)) * (2 if self.fft_overdrive else 1)

    def __post_init__(self):
        if self.filters is None:
            object.__setattr__(self, "filters", mel_filter_bank(
                self.fft_length // 2 + 1, self.feature_size, self.min_frequency, self.max_frequency,
                self.sampling_rate))

    @classmethod
    def from_dir(cls, path: Path) -> "AudioFeatures":
        """processor_config.json's feature_extractor entry (and audio_seq_length), else
        preprocessor_config.json if it describes the feature extractor, else the defaults."""
        kw, cap = {}, None
        for name in ("processor_config.json", "preprocessor_config.json"):
            f = Path(path) / name
            if not f.exists():
                continue
            try:
                d = json.loads(f.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise GemmaRefError(f"{f}: not valid JSON ({e})") from None
            cap = d.get("audio_seq_length", cap)
            d = d.get("feature_extractor", d if "feature_extractor_type" in d else None)
            if d is None:
                continue
            try:
                for k in ("feature_size", "sampling_rate", "frame_length_ms", "hop_length_ms", "min_frequency",
                          "max_frequency", "preemphasis", "preemphasis_htk_flavor", "fft_overdrive", "dither",
                          "input_scale_factor", "mel_floor"):
                    if d.get(k) is not None:
                        kw[k] = type(getattr(cls, k))(d[k])
                for k in ("per_bin_mean", "per_bin_stddev"):  # saved as [1, 1, M]
                    if d.get(k) is not None:
                        kw[k] = tuple(np.asarray(d[k], np.float64).ravel().tolist())
            except (TypeError, ValueError) as e:
                raise GemmaRefError(f"{f}: invalid feature extractor settings ({e})") from None
            break
        if cap is not None:
            kw["audio_seq_length"] = int(cap)
        p = cls(**kw)
        if p.dither:
            raise GemmaRefError(f"{path}: the feature extractor's dither ({p.dither}) adds unseeded noise; "
                                "gemma-ref computes features without it (set dither to 0)")
        return p


# --- reading clips ----------------------------------------------------------------------


def read_audio(source, sampling_rate: int, what: str = "audio") -> np.ndarray:
    """One clip as float32 mono samples at `sampling_rate` [A].

    source: a path (WAV, FLAC, MP3, OGG: anything libsndfile reads), or (samples,
    sample_rate) with samples [A] or [A, channels] (float in [-1, 1], or integer PCM).
    As transformers' load_audio (soundfile backend): channels averaged, then resampled
    with soxr's "soxr_hq" when the rate differs, padded or cut to ceil(A * new / old).
    A PCM WAV at the model's rate needs nothing beyond the standard library; other files
    and rates need the `audio` extra (soundfile, soxr).
    """
    if isinstance(source, (str, Path)):
        samples, rate = _decode_file(Path(source), what)
    elif isinstance(source, tuple) and len(source) == 2:
        samples, rate = source
        if not (isinstance(rate, (int, np.integer)) and not isinstance(rate, bool) and rate > 0):
            raise GemmaRefError(f"{what}: the sample rate must be a positive integer, not {rate!r}")
        samples = np.asarray(samples)
        if samples.dtype.kind in "iu":  # integer PCM -> [-1, 1), as soundfile reads it
            samples = samples.astype(np.float64) / (2.0 ** (8 * samples.dtype.itemsize - 1))
        if samples.dtype.kind != "f" or samples.ndim not in (1, 2):
            raise GemmaRefError(f"{what}: samples must be a float array [samples] or [samples, channels], "
                                f"got {samples.dtype} {samples.shape}")
        samples = samples.astype(np.float32)
    else:
        raise GemmaRefError(f"{what}: expected a file path or (samples, sample_rate), not "
                            f"{type(source).__name__}")
    if samples.ndim == 2:  # [A, channels] -> mono, as load_audio: the mean of the channels
        samples = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if samples.size == 0:
        raise GemmaRefError(f"{what}: the clip is empty (no samples)")
    if not np.isfinite(samples).all():
        raise GemmaRefError(f"{what}: the clip has NaN or infinite samples")
    if rate != sampling_rate:
        samples = _resample(samples, int(rate), sampling_rate, what)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _decode_file(path: Path, what: str) -> tuple[np.ndarray, int]:
    """[A, channels] float32 and the file's sample rate: PCM WAV by the standard library's
    `wave`, anything else by soundfile (libsndfile, as transformers decodes)."""
    if not path.is_file():
        raise GemmaRefError(f"{what}: {path}: no such file")
    try:
        return _read_pcm_wav(path)
    except (wave.Error, EOFError, ValueError):
        pass  # not a PCM WAV the standard library reads: soundfile's turn
    try:
        import soundfile
    except ImportError:
        raise GemmaRefError(f"{what}: {path}: gemma-ref reads PCM WAV files by itself; for other formats "
                            "install the audio extra: pip install 'gemma-ref[audio]'") from None
    try:
        with soundfile.SoundFile(str(path)) as f:
            return f.read(dtype="float32", always_2d=True), f.samplerate
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise GemmaRefError(f"{what}: {path}: not an audio file soundfile can read ({e})") from None


def _read_pcm_wav(path: Path) -> tuple[np.ndarray, int]:
    """A PCM WAV (8/16/24/32-bit) as [A, channels] float32 in [-1, 1), as soundfile reads it."""
    with wave.open(str(path), "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:  # unsigned 8-bit
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 3:  # 24-bit little-endian: widen to 32 bits, sign from the top byte
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3)
        x = (b[:, 0].astype(np.int32) << 8 | b[:, 1].astype(np.int32) << 16
             | b[:, 2].astype(np.int8).astype(np.int32) << 24).astype(np.float32) / 2.0 ** 31
    elif width in (2, 4):
        x = np.frombuffer(raw, f"<i{width}").astype(np.float32) / np.float32(2.0 ** (8 * width - 1))
    else:
        raise ValueError(width)
    return x.reshape(-1, channels), rate


def _resample(samples, rate: int, target: int, what: str) -> np.ndarray:
    """soxr "soxr_hq", then padded or cut to ceil(A * target / rate) (transformers' load_audio)."""
    try:
        import soxr
    except ImportError:
        raise GemmaRefError(f"{what}: {rate} Hz audio must be resampled to {target} Hz as transformers "
                            "does it (soxr); install the audio extra: pip install 'gemma-ref[audio]', "
                            f"or give {target} Hz samples") from None
    n = math.ceil(samples.shape[-1] * target / rate)
    out = soxr.resample(samples, rate, target, quality="soxr_hq")
    return np.pad(out, (0, max(0, n - len(out))))[:n]


# --- the feature extractor -----------------------------------------------------------------


def hertz_to_mel(f):
    """HTK mel scale: 2595 log10(1 + f / 700)."""
    return 2595.0 * np.log10(1.0 + f / 700.0)


def mel_filter_bank(n_bins: int, n_mels: int, f_min: float, f_max: float, rate: int) -> np.ndarray:
    """Triangular filters, centres evenly spaced in HTK mels, unnormalised (norm=None),
    float64 (transformers.audio_utils.mel_filter_bank).           -> [n_bins, M]"""
    mels = np.linspace(hertz_to_mel(f_min), hertz_to_mel(f_max), n_mels + 2)  # [M + 2]
    centres = 700.0 * (np.power(10, mels / 2595.0) - 1.0)  # [M + 2] Hz: edges and centres
    freqs = np.linspace(0, rate // 2, n_bins)  # [n_bins] Hz of each FFT bin
    slopes = centres[None, :] - freqs[:, None]  # [n_bins, M + 2]
    down = -slopes[:, :-2] / np.diff(centres)[:-1]  # rising edge of filter m
    up = slopes[:, 2:] / np.diff(centres)[1:]  # falling edge
    return np.maximum(np.zeros(1), np.minimum(down, up))


def pad_clip(samples, p: AudioFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Cut to max_length, pad with zeros to a multiple of pad_to_multiple_of (the
    feature extractor's `pad`); float32.                   [A] -> [A'], valid [A'] bool"""
    samples = samples[:p.max_length]
    n = -(-len(samples) // p.pad_to_multiple_of) * p.pad_to_multiple_of
    valid = np.arange(n) < len(samples)
    return np.pad(samples.astype(np.float32), (0, n - len(samples))), valid


def log_mel(samples, p: AudioFeatures) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features of one clip and which frames are real audio.

    samples [A] float32 -> features [F, M] float32, mask [F] bool. F = (A + W/2 - W - 1) // hop + 1
    windows of W = frame_length samples every hop, the first centred on sample 0
    ("semicausal": W/2 zeros in front). A frame is real iff its window (W + 1 samples,
    the extra one for pre-emphasis) holds no padding; other frames are zeroed.
    """
    x, valid = pad_clip(samples, p)
    W, hop = p.frame_length, p.hop_length
    x = np.pad(x * np.float32(p.input_scale_factor) if p.input_scale_factor != 1.0 else x, (W // 2, 0))
    valid = np.pad(valid, (W // 2, 0))
    F = (len(x) - (W + 1)) // hop + 1
    frames = np.lib.stride_tricks.sliding_window_view(x, W + 1)[::hop][:F]  # [F, W + 1]
    if p.preemphasis > 0.0:
        if p.preemphasis_htk_flavor:  # x[0] (1 - a), then x[t] - a x[t - 1]
            frames = np.concatenate([frames[:, :1] * (1.0 - p.preemphasis),
                                     frames[:, 1:-1] - p.preemphasis * frames[:, :-2]], axis=-1)
        else:
            frames = frames[:, 1:] - p.preemphasis * frames[:, :-1]
    else:
        frames = frames[:, :-1]  # [F, W]
    window = periodic_hann(W).astype(np.float32)  # float32, as the extractor stores it
    # rfft of float32 frames is complex64 (NumPy 2); the filters are float64, so the mel
    # energies and their log are float64, cast to float32 at the end (as transformers).
    magnitude = np.abs(np.fft.rfft(frames * window, n=p.fft_length, axis=-1))  # [F, fft/2 + 1]
    mel = np.log(magnitude @ p.filters + np.float64(p.mel_floor))  # [F, M] float64
    if p.per_bin_mean is not None:
        mel = mel - np.asarray(p.per_bin_mean)
    if p.per_bin_stddev is not None:
        mel = mel / np.asarray(p.per_bin_stddev)
    mask = valid[np.arange(F) * hop + W]  # the last sample of each frame's window
    return mel.astype(np.float32) * mask[:, None], mask


def periodic_hann(n: int) -> np.ndarray:
    """0.5 - 0.5 cos(2 pi k / n), k < n (np.hanning(n + 1) without its last point)."""
    return np.hanning(n + 1)[:-1]


def num_tokens(mask) -> int:
    """Soft tokens of a clip: its valid frames after two stride-2 convolutions (kernel 3,
    padding 1), capped (Gemma4Processor.replace_audio_token, _compute_audio_num_tokens)."""
    for _ in range(2):
        mask = mask[::2]
    return int(mask.sum())


# --- the tower -------------------------------------------------------------------------------


def conv2d_stride2(x, w):
    """3x3 convolution, stride 2, zero padding 1, no bias.   [C_in, F, M], [C, C_in, 3, 3] -> [C, F/2, M/2]"""
    C_in, F, M = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    F2, M2 = (F - 1) // 2 + 1, (M - 1) // 2 + 1
    # patches[c, i, j, f, m] = xp[c, 2f + i, 2m + j]
    patches = np.stack([np.stack([xp[:, i:i + 2 * F2:2, j:j + 2 * M2:2] for j in range(3)], 1)
                        for i in range(3)], 1)  # [C_in, 3, 3, F2, M2]
    return np.einsum("oikl,iklfm->ofm", w, patches, optimize=True)


def layer_norm(x, w, eps):
    """(x - mean) / sqrt(var + eps) * w, over the last axis (no bias)."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + np.float32(eps)) * w


def subsample(features, mask, W, c: AudioConfig, trace=None):
    """Two [conv 3x3 stride 2 -> LayerNorm over channels -> ReLU] blocks, then a linear.

    features [F, M], mask [F] -> [T', Da], mask [T']   (T' = F/4; Gemma4AudioSubSampleConvProjection)
    Each block first zeroes the frames that are not audio.
    """
    pre = "audio_tower.subsample_conv_projection."
    h = features[None]  # [1, F, M]: one input channel
    for i in range(2):
        h = h * mask[None, :, None]
        h = conv2d_stride2(h, W[pre + f"layer{i}.conv.weight"])  # [C, F/2, M/2]
        h = layer_norm(h.transpose(1, 2, 0), W[pre + f"layer{i}.norm.weight"], c.rms_norm_eps)  # [F/2, M/2, C]
        h = np.maximum(h, 0).transpose(2, 0, 1)  # ReLU; [C, F/2, M/2]
        mask = mask[::2]
        record(trace, pre + f"layer{i}", h.transpose(1, 2, 0)[None])  # [1, F', M', C]: time second
    C, T, M4 = h.shape
    h = h.transpose(1, 2, 0).reshape(T, M4 * C)  # [T', M/4 * C]: channels fastest
    h = linear(h, W[pre + "input_proj_linear.weight"])  # [T', Da]
    record(trace, pre + "input_proj_linear", h[None])
    return h, mask


def silu(x):
    """x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def feed_forward(x, W, pre, c: AudioConfig):
    """Half a macaron: x + w_r * norm(clip(ffw2(silu(ffw1(norm(clip(x))))))).   [T', Da] -> [T', Da]"""
    g = np.float32(c.gradient_clipping)
    h = rms_norm(np.clip(x, -g, g), W[pre + "pre_layer_norm.weight"], 1e-6, 0.0)
    h = clipped_linear(h, W, pre + "ffw_layer_1", c.use_clipped_linears)  # [T', 4Da]
    h = clipped_linear(silu(h), W, pre + "ffw_layer_2", c.use_clipped_linears)  # [T', Da]
    h = rms_norm(np.clip(h, -g, g), W[pre + "post_layer_norm.weight"], 1e-6, 0.0)
    return x + h * np.float32(c.residual_weight)


def relative_positions(c: AudioConfig, dtype) -> np.ndarray:
    """Sinusoids of the distances X/2, ..., 1, 0: [sin | cos] of distance * 1e4^(-i/(Da/2-1)).
                                                                      -> [R, Da], R = X/2 + 1"""
    n = c.hidden_size // 2
    inv = np.exp(np.arange(n, dtype=dtype) * dtype(-math.log(1e4) / max(n - 1, 1)))  # [Da/2]
    t = np.arange(c.context_size // 2, -1, -1).astype(dtype)[:, None] * inv  # [R, Da/2]
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
    (or up to right - 1 ahead).                                     mask [T'] -> [B_k, Q, X] bool"""
    Q, X, past = c.attention_chunk_size, c.context_size, c.attention_context_left - 1
    n = -(-len(mask) // Q)
    q = np.arange(n * Q).reshape(n, Q, 1)  # [B_k, Q, 1] query positions
    k = (np.arange(n)[:, None] * Q - past + np.arange(X))[:, None, :]  # [B_k, 1, X] key positions
    real = np.concatenate([mask, np.zeros(past + X + n * Q, bool)])[np.clip(k, 0, None)] & (k >= 0)
    d = q - k
    return real & (((d >= 0) & (d < past)) | ((d < 0) & (-d < c.attention_context_right)))


def self_attention(x, mask, W, pre, c: AudioConfig, rel):
    """Chunked local attention with a relative-position term and a logit soft cap.

    x [T', Da], mask [T'], rel [R, Da] -> [T', Da]
    q = q_proj(x) / sqrt(H) / ln 2 * softplus(per_dim_scale);  k = k_proj(x) * ln(1 + e) / ln 2
    score(i, j) = cap * tanh((q_i . k_j + q_i . r_{i - j}) / cap), r = relative_k_proj(rel);
    keys not visible (key_visible) score attention_invalid_logits_value.
    """
    T, Da = x.shape
    N, H, X, clip = c.num_attention_heads, c.head_dim, c.context_size, c.use_clipped_linears
    q = clipped_linear(x, W, pre + "q_proj", clip).reshape(T, N, H)
    k = clipped_linear(x, W, pre + "k_proj", clip).reshape(T, N, H)
    v = clipped_linear(x, W, pre + "v_proj", clip).reshape(T, N, H)
    softplus = np.log1p(np.exp(W[pre + "per_dim_scale"]))  # [H]
    q = q * np.float32(H ** -0.5 / math.log(2)) * softplus
    k = k * np.float32(math.log(1 + math.e) / math.log(2))
    qb = blocks(q, c).transpose(2, 0, 1, 3)  # [N, B_k, Q, H]
    kb = block_context(k, c).transpose(2, 0, 3, 1)  # [N, B_k, H, X]
    vb = block_context(v, c).transpose(2, 0, 1, 3)  # [N, B_k, X, H]
    r = linear(rel, W[pre + "relative_k_proj.weight"]).reshape(-1, N, H).transpose(1, 2, 0)  # [N, H, R]
    ac = qb @ kb  # [N, B_k, Q, X]  content
    bd = rel_shift(qb @ r[:, None], X)  # [N, B_k, Q, R] -> [N, B_k, Q, X]  position
    cap = np.float32(c.attention_logit_cap)
    scores = np.tanh((ac + bd) / cap) * cap
    scores = np.where(key_visible(mask, c)[None], scores, np.float32(c.attention_invalid_logits_value))
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    out = (e / e.sum(axis=-1, keepdims=True)) @ vb  # [N, B_k, Q, H]
    out = out.transpose(1, 2, 0, 3).reshape(-1, N * H)[:T]  # [T', Da]
    return clipped_linear(out, W, pre + "post", clip)


def light_conv(x, W, pre, c: AudioConfig):
    """The convolution module: x + end(silu(norm(clip(causal_depthwise(glu(start(norm(x)))))))).
                                                                            [T', Da] -> [T', Da]"""
    g, clip, k = np.float32(c.gradient_clipping), c.use_clipped_linears, c.conv_kernel_size
    h = rms_norm(x, W[pre + "pre_layer_norm.weight"], c.rms_norm_eps, 0.0)
    h = clipped_linear(h, W, pre + "linear_start", clip)  # [T', 2Da]
    a, b = np.split(h, 2, axis=-1)
    h = a / (1.0 + np.exp(-b))  # GLU: a * sigmoid(b)   [T', Da]
    w = W[pre + "depthwise_conv1d.weight"][:, 0]  # [Da, k]
    hp = np.pad(h, ((k - 1, 0), (0, 0)))  # causal: k - 1 zeros in front
    h = sum(hp[j:j + len(h)] * w[:, j] for j in range(k))  # out[t] = sum_j w[j] h[t - (k-1) + j]
    h = rms_norm(np.clip(h, -g, g), W[pre + "conv_norm.weight"], c.rms_norm_eps, 0.0)
    return x + clipped_linear(silu(h), W, pre + "linear_end", clip)


def conformer_layer(x, mask, W, i, c: AudioConfig, rel, trace=None):
    """One Conformer block (macaron).                                    [T', Da] -> [T', Da]

    x = x + ff1(x) / 2;  x = x + norm(clip(attn(norm(clip(x)))));  x = x + conv(x);
    x = x + ff2(x) / 2;  out = norm(clip(x))      (Gemma4AudioLayer)
    """
    pre, g = f"audio_tower.layers.{i}.", np.float32(c.gradient_clipping)
    x = feed_forward(x, W, pre + "feed_forward1.", c)
    record(trace, pre + "feed_forward1", x[None])
    h = rms_norm(np.clip(x, -g, g), W[pre + "norm_pre_attn.weight"], 1e-6, 0.0)
    h = self_attention(h, mask, W, pre + "self_attn.", c, rel)
    record(trace, pre + "self_attn", h[None])
    x = x + rms_norm(np.clip(h, -g, g), W[pre + "norm_post_attn.weight"], 1e-6, 0.0)
    x = light_conv(x, W, pre + "lconv1d.", c)
    record(trace, pre + "lconv1d", x[None])
    x = feed_forward(x, W, pre + "feed_forward2.", c)
    x = rms_norm(np.clip(x, -g, g), W[pre + "norm_out.weight"], 1e-6, 0.0)
    record(trace, f"audio_tower.layers.{i}", x[None])
    return x


def audio_tower(features, mask, W, c: AudioConfig, trace=None):
    """Gemma4AudioModel: features [F, M], mask [F] -> [T', Do] and mask [T'] (all tokens,
    padding ones included, as transformers' last_hidden_state)."""
    x, mask = subsample(features, mask, W, c, trace)
    rel = relative_positions(c, np.float32)
    for i in range(c.num_hidden_layers):
        x = conformer_layer(x, mask, W, i, c, rel, trace)
    x = linear(x, W["audio_tower.output_proj.weight"]) + W["audio_tower.output_proj.bias"]
    record(trace, "audio_tower", x[None])
    return x, mask


def embed_audio(x, W, c: AudioConfig):
    """Gemma4MultimodalEmbedder: RMSNorm (no weight), then a projection.   [T', Do] -> [T', D]"""
    return linear(rms_norm(x, None, c.rms_norm_eps), W["embed_audio.embedding_projection.weight"])


def clip_embeddings(features, mask, W, c: AudioConfig, trace=None):
    """A clip's soft tokens: the tower, the embedder, the real tokens only. -> [n, D]"""
    x, mask = audio_tower(features, mask, W, c, trace)
    out = embed_audio(x, W, c)
    record(trace, "embed_audio", out[None])
    return out[mask]


# --- prompts ------------------------------------------------------------------------------


def audio_tokens(ids, rows, c: AudioConfig) -> ImageTokens:
    """model.ImageTokens for the audio soft tokens of a chunk: embedded as <pad>, their
    features in place, each seeing what a text token would (causal)."""
    at = np.asarray(ids) == c.audio_token_id  # [B, T]
    if at.sum() != len(rows):
        raise GemmaRefError(f"the ids hold {int(at.sum())} audio soft tokens, the clips give {len(rows)}")
    return ImageTokens(at=at, embeds=rows, reach=np.zeros(at.shape, np.int64), layers="none",
                       embedded_as_pad=True)


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
    of a chunk for model.forward)."""

    config: AudioConfig
    features: AudioFeatures

    @classmethod
    def from_checkpoint(cls, raw: dict, path: Path) -> "Audio | None":
        """From config.json (as a dict) and the processor files; None without an audio tower."""
        config = AudioConfig.from_dict(raw, str(Path(path) / "config.json"))
        return None if config is None else cls(config, AudioFeatures.from_dir(path))

    def clip_features(self, clip, what: str = "audio") -> tuple[np.ndarray, np.ndarray]:
        """A clip (path or (samples, rate)) -> its log-mel features [F, M] and frame mask [F]."""
        return log_mel(read_audio(clip, self.features.sampling_rate, what), self.features)

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
            pairs = [self.clip_features(c, f"audio {k + 1}") for k, c in enumerate(clips)]
        traces = [{} if trace is not None else None for _ in pairs]
        out = [clip_embeddings(f, m, W, self.config, t) for (f, m), t in zip(pairs, traces)]
        if trace is not None and pairs:  # the clips side by side, as transformers batches them
            for name in traces[0]:
                n = max(t[name].shape[1] for t in traces)
                trace[name] = np.concatenate([np.pad(t[name], [(0, 0), (0, n - t[name].shape[1])]
                                                     + [(0, 0)] * (t[name].ndim - 2)) for t in traces])
        return out

    def block(self, n: int) -> list[int]:
        """A clip's ids in a prompt: boa, n x audio token, eoa."""
        c = self.config
        return [c.boa_token_id] + [c.audio_token_id] * n + [c.eoa_token_index]

    def tokens(self, ids, rows) -> ImageTokens:
        """The audio soft tokens of a chunk of ids, for model.forward (see audio_tokens)."""
        return audio_tokens(ids, rows, self.config)

    @property
    def token_ids(self) -> tuple[int, int, int]:
        c = self.config
        return c.audio_token_id, c.boa_token_id, c.eoa_token_index
