"""Audio clips -> log-mel features, as transformers' feature extractors compute them.

Gemma4AudioFeatureExtractor (models/gemma4/feature_extraction_gemma4.py) and
Gemma3nAudioFeatureExtractor (models/gemma3n/feature_extraction_gemma3n.py), with their
dtype steps; files decoded as transformers.audio_utils.load_audio's soundfile backend does
(soundfile + soxr, the `audio` extra; a PCM WAV at the model's rate needs neither).
The tower that reads the features is audio.py's. Gemma 4 12B Unified has neither mel
features nor a tower: raw_frames cuts the samples into its 40 ms frames
(Gemma4UnifiedAudioFeatureExtractor). Axis legend: A samples, F mel frames (10 ms), M mel
bins, W window samples, N raw frames.
"""

from __future__ import annotations

import json
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import GemmaRefError


@dataclass(frozen=True)
class AudioFeatures:
    """The feature extractor's settings (Gemma4AudioFeatureExtractor keys and defaults) and
    the processor's token cap (processor_config.json's audio_seq_length). Gemma 3n's
    (Gemma3nAudioFeatureExtractor) has other defaults and the steps marked "3n"
    (GEMMA3N_FEATURES)."""

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
    semicausal: bool = True  # frame/2 zeros in front (3n: none)
    mask_by_last_sample: bool = True  # a frame is real iff its last sample is (3n: its first)
    zero_padded_frames: bool = True  # (3n: padded frames keep their values)
    log_of_max: bool = False  # log(mel + floor); 3n: log(max(mel, floor))
    window_float32: bool = False  # the Hann window computed in float64 then cast (3n: in float32)
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
    def from_dir(cls, path: Path, gemma3n: bool = False) -> "AudioFeatures":
        """processor_config.json's feature_extractor entry (and audio_seq_length), else
        preprocessor_config.json if it describes the feature extractor, else the defaults
        (Gemma3nAudioFeatureExtractor's for gemma3n)."""
        kw, cap = (dict(GEMMA3N_FEATURES) if gemma3n else {}), None
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
            if d.get("feature_extractor_type") == "Gemma3nAudioFeatureExtractor":
                kw.update(GEMMA3N_FEATURES)
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


# Gemma3nAudioFeatureExtractor: its defaults and its steps (audio_seq_length: 188 tokens always)
GEMMA3N_FEATURES = dict(frame_length_ms=32.0, min_frequency=125.0, max_frequency=7600.0, preemphasis=0.97,
                        fft_overdrive=True, mel_floor=1e-5, audio_seq_length=188, semicausal=False,
                        mask_by_last_sample=False, zero_padded_frames=False, log_of_max=True, window_float32=True)


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


def pad_clip(samples, p: AudioFeatures, length: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cut to max_length, pad with zeros to `length` (the longest clip of a batch) rounded up
    to a multiple of pad_to_multiple_of (the feature extractor's `pad`); float32.
                                                              [A] -> [A'], valid [A'] bool"""
    samples = samples[:p.max_length]
    n = -(-max(len(samples), min(length, p.max_length)) // p.pad_to_multiple_of) * p.pad_to_multiple_of
    valid = np.arange(n) < len(samples)
    return np.pad(samples.astype(np.float32), (0, n - len(samples))), valid


def raw_frames(samples, samples_per_frame: int) -> tuple[np.ndarray, np.ndarray]:
    """Gemma 4 Unified's features: the samples zero-padded on the right to whole frames and
    cut into them; every frame is real (one soft token each, no cap).
                                           samples [A] -> frames [N, 640], mask [N] all True"""
    x = np.asarray(samples, np.float32)
    if x.ndim != 1 or not len(x):
        raise GemmaRefError(f"audio: expected mono samples [n > 0], got shape {x.shape}")
    x = np.pad(x, (0, -len(x) % samples_per_frame)).reshape(-1, samples_per_frame)
    return x, np.ones(len(x), bool)


def log_mel(samples, p: AudioFeatures, length: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Log-mel features of one clip and which frames are real audio.

    samples [A] float32 -> features [F, M] float32, mask [F] bool. F = (A + W/2 - W - 1) // hop + 1
    windows of W = frame_length samples every hop, the first centred on sample 0
    ("semicausal": W/2 zeros in front; 3n: none, F = (A - W - 1) // hop + 1). A frame is real
    iff its window (W + 1 samples, the extra one for pre-emphasis) holds no padding; other
    frames are zeroed (3n: iff its first sample is real; not zeroed).
    length: pad as if batched with a clip of that many samples (what the processor does).
    """
    x, valid = pad_clip(samples, p, length)
    W, hop = p.frame_length, p.hop_length
    if p.input_scale_factor != 1.0:
        x = x * np.float32(p.input_scale_factor)
    front = W // 2 if p.semicausal else 0
    x, valid = np.pad(x, (front, 0)), np.pad(valid, (front, 0))
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
    window = periodic_hann(W, p.window_float32).astype(np.float32)  # float32, as the extractor stores it
    # rfft of float32 frames is complex64 (NumPy 2); the filters are float64, so the mel
    # energies and their log are float64, cast to float32 at the end (as transformers).
    magnitude = np.abs(np.fft.rfft(frames * window, n=p.fft_length, axis=-1))  # [F, fft/2 + 1]
    mel = magnitude @ p.filters  # [F, M] float64
    mel = np.log(np.maximum(mel, np.float64(p.mel_floor)) if p.log_of_max else mel + np.float64(p.mel_floor))
    if p.per_bin_mean is not None:
        mel = mel - np.asarray(p.per_bin_mean)
    if p.per_bin_stddev is not None:
        mel = mel / np.asarray(p.per_bin_stddev)
    mask = valid[np.arange(F) * hop + (W if p.mask_by_last_sample else 0)]  # a sample of each window
    mel = mel.astype(np.float32)
    return (mel * mask[:, None] if p.zero_padded_frames else mel), mask


def periodic_hann(n: int, float32: bool = False) -> np.ndarray:
    """0.5 - 0.5 cos(2 pi k / n), k < n: np.hanning(n + 1) without its last point, or
    (3n) computed in float32."""
    if float32:
        return 0.5 * (1 - np.cos(2 * np.pi * np.arange(n, dtype=np.float32) / n))
    return np.hanning(n + 1)[:-1]


def num_tokens(mask) -> int:
    """Soft tokens of a clip: its valid frames after two stride-2 convolutions (kernel 3,
    padding 1), capped (Gemma4Processor.replace_audio_token, _compute_audio_num_tokens)."""
    for _ in range(2):
        mask = mask[::2]
    return int(mask.sum())
