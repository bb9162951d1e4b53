"""Cross-check Gemma 4's audio path against a second reference: Google's JAX `gemma` 4.0.1.

Takes the committed tiny Gemma 4 audio checkpoints (tests/data/audio/gemma4-audio, -b,
made by transformers), maps their audio tower and audio embedder onto the parameter
tree of gemma's Flax modules (gm/nn/gemma4/audio/_modules.py), runs

  * gemma's mel filterbank (GemaxMelFilterbank) on the clips' samples, and
  * gemma's encoder (SubSamplingBlock, ConformerLayer x N, output_projection, exactly
    as AudioTokenizer.__call__ chains them after the filterbank) and its audio embedder
    (Embedder.encode_audio) on the transformers features stored in golden.npz,

and prints max |delta| against the transformers goldens per clip: (A) gemma as it is,
(B) gemma with transformers' attention window and embedder order (diagnostics that
localise the differences; docs/AUDIO.md explains them). With --gemma-ref
PYTHON it also saves the JAX outputs and asks a separate process (that Python, with
gemma-ref importable; this script never imports gemma_ref) for gemma-ref's tower on
the same features, and prints max |delta| JAX vs gemma-ref.

What is adapted to the tiny checkpoints (gemma hard-codes the real sizes): the mel
bins (16, AudioTokenizer passes 128), the subsampling channels (the config's, the
module's default is (128, 32)) and the attention chunk (the config's attention_chunk_size,
LocalDotProductAttention.block_size is 12): each by a subclass that changes only that
default. Nothing numerical in gemma's code is touched.

Usage (gemma 4.0.1 needs Python >= 3.12; from the repository root):

    python3.12 -m venv venv && venv/bin/pip install 'jax[cpu]' flax safetensors jaxtyping typeguard etils einops
    venv/bin/pip install --no-deps gemma==4.0.1 kauldron clu tensorflow wrapt six gast astunparse \
        termcolor packaging flatbuffers requests urllib3 idna certifi lark
    (what gemma's Flax modules and kauldron.typing import; `pip install gemma==4.0.1` with its
    full dependencies was still resolving after 10 minutes here)
    venv/bin/python scripts/check_audio_jax.py --gemma-ref python3.11 [--keep tests/data/audio/jax-gemma-4.0.1.npz]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util
from gemma.gm.nn.gemma4 import _layers
from gemma.gm.nn.gemma4.audio import _model as audio_model
from gemma.gm.nn.gemma4.audio import _modules as am

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "audio"
VARIANTS = ["gemma4-audio", "gemma4-audio-b"]
# clip -> the golden's case and index holding its features / tower / soft tokens
CLIPS = {"tone.wav": ("one", 0), "short.wav": ("two", 0), "silence.wav": ("two", 1),
         "stereo44k.wav": ("stereo", 0), "long": ("long", 0)}


def long_clip() -> np.ndarray:
    """scripts/make_audio_goldens.long_clip: 31 s at 16 kHz, past the 30 s cap."""
    t = np.arange(31 * 16000) / 16000.0
    return (0.25 * np.sin(2 * np.pi * (220 + 40 * t) * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))).astype(np.float32)


def read_wav16k(name: str) -> np.ndarray | None:
    """A mono 16 kHz 16-bit clip as transformers' load_audio gives it (int16 / 32768);
    None for clips that need resampling or a downmix (their features come from the golden)."""
    if name == "long":
        return long_clip()
    with wave.open(str(DATA / "clips" / name)) as w:
        if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
            return None
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0


def tiny_classes(cfg: dict, mel_bins: int):
    """gemma's modules with the tiny checkpoint's sizes as their defaults."""
    class Mel(am.GemaxMelFilterbank):
        num_mel_bins: float = mel_bins  # AudioTokenizer: n_mels=128 (the matrix reads num_mel_bins)

    class MelPeriodicHann(Mel):  # diagnostic only: transformers' window instead of gemma's
        def hann_window(self, window_length, periodic, nonzero=False):
            return super().hann_window(window_length, periodic, False)

    class Subsampling(am.SubSamplingBlock):
        filters_list: tuple[int, ...] = tuple(cfg["subsampling_conv_channels"])

    class Attention(am.LocalDotProductAttention):
        block_size: int = cfg["attention_chunk_size"]

    am.LocalDotProductAttention = Attention  # AttentionBlock and AudioTokenizer look it up here
    return Mel, MelPeriodicHann, Subsampling


def conformer_config(cfg: dict) -> am.ConformerConfig:
    return am.ConformerConfig(
        num_layers=cfg["num_hidden_layers"], model_dims=cfg["hidden_size"], lm_model_dims=cfg["output_proj_dims"],
        atten_num_heads=cfg["num_attention_heads"], atten_left_context=cfg["attention_context_left"],
        atten_right_context=cfg["attention_context_right"], conv_kernel_size=cfg["conv_kernel_size"],
        gradient_clipping=cfg["gradient_clipping"])


class EncoderFromFeatures(nn.Module):
    """AudioTokenizer.__call__ after its filterbank line (same module names), then
    Embedder.encode_audio (audio_input_projection, audio_soft_embedding_norm)."""

    config: am.ConformerConfig
    subsampling: type
    text_dims: int
    transformers_mask: bool = False  # diagnostic: hide the key at distance left - 1, as transformers does
    norm_first: bool = False  # diagnostic: transformers' embedder order (RMSNorm, then the projection)

    @nn.compact
    def __call__(self, x, mask):  # x [B, F, M] features, mask [B, F] True = real frame
        x = jnp.where(mask[:, :, None], x, 0.0)
        x, mask = self.subsampling(output_proj_dim=self.config.model_dims, name="feature")(x, mask)
        causal_valid_mask = audio_model.AudioTokenizer._compute_causal_valid_mask(self.config)  # [Q, X]
        if self.transformers_mask:  # key c of query w sits at distance w + (left - 1) - c: drop c == w
            Q, X = causal_valid_mask.shape
            causal_valid_mask = causal_valid_mask & (jnp.arange(X)[None, :] != jnp.arange(Q)[:, None])
        for i in range(self.config.num_layers):
            x = am.ConformerLayer(config=self.config, name=f"conformer/stacked_layers_{i}", layer_idx=i)(
                x, mask, causal_valid_mask)
        x = nn.Dense(features=self.config.lm_model_dims, use_bias=True, name="output_projection")(x)
        tower = jnp.where(mask[:, :, None], x, 0.0)
        project = _layers.Einsum((self.config.lm_model_dims, self.text_dims), name="audio_input_projection")
        norm = _layers.RMSNorm(with_scale=False, name="audio_soft_embedding_norm")
        soft = project("...tm,md->...td", norm(tower)) if self.norm_first else norm(project("...tm,md->...td", tower))
        return tower, soft, mask


def hf_to_flax(W: dict, cfg: dict) -> dict:
    """transformers' audio_tower / embed_audio tensors under gemma's flattened names."""
    D, N = cfg["hidden_size"], cfg["num_attention_heads"]
    H = D // N
    t = "model.audio_tower."
    out = {}

    def clipped(dst, src, kernel):
        out[dst + ("kernel",)] = kernel
        for a, b in [("input_min", "clip_input_min"), ("input_max", "clip_input_max"),
                     ("output_min", "clip_output_min"), ("output_max", "clip_output_max")]:
            if src + a in W:
                out[dst + (b,)] = W[src + a]

    s = t + "subsample_conv_projection."
    for k in range(2):  # torch Conv2d [O, I, kT, kF] -> flax [kT, kF, I, O]
        out[("feature", f"subsampling_{k}", "kernel")] = W[s + f"layer{k}.conv.weight"].transpose(2, 3, 1, 0)
        out[("feature", f"norm_{k}", "scale")] = W[s + f"layer{k}.norm.weight"]
    C = cfg["subsampling_conv_channels"][-1]
    w = W[s + "input_proj_linear.weight"]  # [D, F'*C], torch flattens (F', C) as F'-major
    out[("feature", "input_proj", "kernel")] = w.T.reshape(-1, C, D)
    for i in range(cfg["num_hidden_layers"]):
        p, L = f"{t}layers.{i}.", (f"conformer/stacked_layers_{i}",)  # one flax name
        for hf, jx in [("feed_forward1", "fflayer_start"), ("feed_forward2", "fflayer_end")]:
            out[L + (jx, "pre_layer_norm", "scale")] = W[p + hf + ".pre_layer_norm.weight"]
            out[L + (jx, "post_layer_norm", "scale")] = W[p + hf + ".post_layer_norm.weight"]
            for k in (1, 2):
                q = f"{p}{hf}.ffw_layer_{k}."
                clipped(L + (jx, f"ffn_layer{k}"), q, W[q + "linear.weight"].T)
        A = L + ("trans_atten",)
        out[A + ("pre_norm", "scale")] = W[p + "norm_pre_attn.weight"]
        out[A + ("post_norm", "scale")] = W[p + "norm_post_attn.weight"]
        for hf, jx in [("q_proj", "query"), ("k_proj", "key"), ("v_proj", "value")]:
            q = f"{p}self_attn.{hf}."
            clipped(A + ("self_atten", jx), q, W[q + "linear.weight"].T)
        out[A + ("self_atten", "per_dim_scale")] = W[p + "self_attn.per_dim_scale"]
        out[A + ("self_atten", "relative_position_embedding", "pos_proj", "kernel")] = \
            W[p + "self_attn.relative_k_proj.weight"].T.reshape(D, N, H)
        q = p + "self_attn.post."
        clipped(A + ("post",), q, W[q + "linear.weight"].T.reshape(N, H, D))
        C1 = L + ("lconv",)
        out[C1 + ("ln", "scale")] = W[p + "lconv1d.pre_layer_norm.weight"]
        out[C1 + ("conv_norm", "scale")] = W[p + "lconv1d.conv_norm.weight"]
        out[C1 + ("depthwise_conv1d", "kernel")] = W[p + "lconv1d.depthwise_conv1d.weight"].transpose(2, 1, 0)
        for k in ("linear_start", "linear_end"):
            q = f"{p}lconv1d.{k}."
            clipped(C1 + (k,), q, W[q + "linear.weight"].T)
        out[L + ("final_ln", "scale")] = W[p + "norm_out.weight"]
    out[("output_projection", "kernel")] = W[t + "output_proj.weight"].T
    out[("output_projection", "bias")] = W[t + "output_proj.bias"]
    out[("audio_input_projection", "w")] = W["model.embed_audio.embedding_projection.weight"].T
    return out


def fill(init: dict, mapped: dict) -> dict:
    """Every parameter of gemma's tree from the checkpoint, shapes equal; only the
    clip bounds may keep their +-inf defaults (checkpoints without clipped linears)."""
    flat = traverse_util.flatten_dict(init["params"])
    unused = set(mapped) - set(flat)
    assert not unused, f"not in gemma's tree: {sorted(unused)[:5]}"
    for k, v in flat.items():
        if k in mapped:
            assert tuple(np.shape(mapped[k])) == tuple(v.shape), (k, np.shape(mapped[k]), v.shape)
            flat[k] = jnp.asarray(mapped[k], jnp.float32)
        else:
            assert k[-1].startswith("clip_"), f"no checkpoint tensor for {k}"
    return {"params": traverse_util.unflatten_dict(flat)}


def run_variant(name: str) -> dict:
    d = DATA / name
    cfg_all = json.loads((d / "config.json").read_text())
    cfg, text_dims = cfg_all["audio_config"], cfg_all["text_config"]["hidden_size"]
    g = np.load(d / "golden.npz")
    W = load_file(str(d / "model.safetensors"))
    M = g["one.features_0"].shape[-1]
    Mel, MelPeriodicHann, Subsampling = tiny_classes(cfg, M)
    model = EncoderFromFeatures(conformer_config(cfg), Subsampling, text_dims)
    as_transformers = model.clone(transformers_mask=True, norm_first=True)
    params = fill(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 40, M)), jnp.ones((1, 40), bool)),
                  hf_to_flax(W, cfg))
    fe = json.loads((d / "processor_config.json").read_text())["feature_extractor"]
    same_mel = all(fe.get(k) == v for k, v in GEMMA_MEL.items())
    print(f"== {name}: audio_config {json.dumps({k: cfg[k] for k in ('hidden_size', 'num_hidden_layers', 'attention_chunk_size', 'attention_context_left', 'conv_kernel_size', 'use_clipped_linears')})}, {M} mel bins")
    print("  (A) gemma as is; (B) gemma with transformers' attention mask and embedder order; max |delta| vs transformers")
    saved, worst = {}, {}
    if not same_mel:
        print(f"  features not compared: its feature extractor is not the one gemma hard-codes ({GEMMA_MEL})")
    for clip, (case, k) in CLIPS.items():
        if f"{case}.features_{k}" not in g:
            continue
        feats, fmask = g[f"{case}.features_{k}"], g[f"{case}.features_mask_{k}"]
        want_t, want_s, n = g[f"{case}.tower_{k}"], g[f"{case}.soft_{k}"], len(g[f"{case}.tower_{k}"])
        row = {}
        for tag, m in (("A", model), ("B", as_transformers)):
            tower, soft, _ = m.apply(params, jnp.asarray(feats[None]), jnp.asarray(fmask[None]))
            tower, soft = np.asarray(tower[0])[:n], np.asarray(soft[0])[:n]
            row[f"tower {tag}"], row[f"soft {tag}"] = np.abs(tower - want_t).max(), np.abs(soft - want_s).max()
            saved[f"{clip}.tower_{tag}"], saved[f"{clip}.soft_{tag}"] = tower, soft
        samples = read_wav16k(clip) if same_mel else None
        if samples is not None:  # transformers prepends frame_length // 2 = 160 zeros (semicausal); gemma does not
            m = int(fmask.sum())
            raw = np.asarray(Mel().apply({}, jnp.asarray(samples[None]))[0])
            padded = np.pad(samples, (160, 0))[None]
            row["features A"] = np.abs(raw[:m - 1] - feats[1:m]).max()  # gemma frame i = transformers' i + 1
            hann = np.asarray(MelPeriodicHann().apply({}, jnp.asarray(padded))[0])
            row["features B"] = np.abs(hann[:m] - feats[:m]).max()
            row["frames"] = f"{len(raw)}/{m}"
            saved[f"{clip}.features_A"] = raw
        for key, v in row.items():
            if key != "frames":
                worst[key] = max(worst.get(key, 0.0), float(v))
        print(f"  {clip:14s} tokens {n:4d}  " + "  ".join(
            f"{key} {v}" if key == "frames" else f"{key} {v:.2e}" for key, v in row.items()))
    print("  worst: " + "  ".join(f"{key} {v:.2e}" for key, v in worst.items()))
    print("  (frames: gemma's / transformers' real mel frames; features: mono 16 kHz clips only, A compares gemma's"
          " frame i with transformers' i + 1, B prepends 160 zeros and uses transformers' periodic Hann window)")
    return saved


GEMMA_REF_STEP = r"""
import dataclasses, sys, numpy as np
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from gemma_ref import Model, audio
DATA, CLIPS = Path(sys.argv[1]) / "tests/data/audio", eval(sys.argv[3])
print("gemma-ref (this checkout) in Python " + sys.version.split()[0] + ": max |delta| vs JAX")
print("  B: gemma-ref as is vs gemma with transformers' mask and embedder order (tower, soft tokens)")
print("  A: gemma-ref with gemma's mask (left keys incl. the query: context_inclusive) and relative distances"
      " (left - 1 .. 0: relative_positions='span') vs gemma as is (tower)")
for name in sys.argv[4:]:
    jx, g = np.load(sys.argv[2] + f".{name}.npz"), np.load(DATA / name / "golden.npz")
    model = Model.from_pretrained(DATA / name, progress=False)
    c, W = model.audio.config, model.weights
    as_gemma = dataclasses.replace(c, context_inclusive=True, relative_positions="span")
    worst = [0.0, 0.0, 0.0]
    for clip, (case, k) in CLIPS.items():
        if clip + ".tower_B" not in jx:
            continue
        f, m = g[f"{case}.features_{k}"], g[f"{case}.features_mask_{k}"]
        n = len(jx[clip + ".tower_B"])
        trace = {}
        soft = model.embed_audio({"input_features": f[None], "input_features_mask": m[None]}, trace=trace)[0]
        d = [float(np.abs(trace["audio_tower"][0][:n] - jx[clip + ".tower_B"]).max()),
             float(np.abs(soft - jx[clip + ".soft_B"]).max()),
             float(np.abs(audio.audio_tower(f, m, W, as_gemma)[0][:n] - jx[clip + ".tower_A"]).max())]
        worst = [max(a, b) for a, b in zip(worst, d)]
        print(f"  {name:15s} {clip:14s} tower B {d[0]:.2e}  soft B {d[1]:.2e}  tower A {d[2]:.2e}")
    print(f"  {name:15s} worst          tower B {worst[0]:.2e}  soft B {worst[1]:.2e}  tower A {worst[2]:.2e}")
"""

KEEP = "tone.wav"  # the clip whose JAX outputs --keep commits (tests/test_audio_jax.py)
GEMMA_MEL = {"fft_length": 512, "min_frequency": 0.0, "max_frequency": 8000.0, "mel_floor": 0.001,
             "preemphasis": 0.0, "per_bin_mean": None, "per_bin_stddev": None, "frame_length": 320,
             "hop_length": 160, "input_scale_factor": 1.0, "dither": 0.0}  # what GemaxMelFilterbank fixes


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", nargs="*", default=VARIANTS)
    ap.add_argument("--gemma-ref", metavar="PYTHON", help="a Python with gemma-ref's requirements: compare it with JAX")
    ap.add_argument("--save", metavar="PREFIX", help="save JAX outputs to PREFIX.<variant>.npz")
    ap.add_argument("--keep", metavar="NPZ", help=f"save JAX's outputs for {KEEP} (every variant) to NPZ, for the tests")
    a = ap.parse_args(argv)
    print(f"gemma {__import__('importlib.metadata').metadata.version('gemma')}, jax {jax.__version__}, "
          f"flax {__import__('importlib.metadata').metadata.version('flax')}, numpy {np.__version__}, Python {sys.version.split()[0]}")
    prefix = a.save or str(Path(tempfile.mkdtemp()) / "jax")
    kept = {}
    for name in a.variants:
        out = run_variant(name)
        np.savez(f"{prefix}.{name}.npz", **out)
        kept.update({f"{name}.{k}": v for k, v in out.items() if k.split(".wav.")[0] + ".wav" == KEEP
                     and not k.endswith("features_A")})
    if a.keep:
        np.savez_compressed(a.keep, **kept)
    if a.gemma_ref:
        subprocess.run([a.gemma_ref, "-c", GEMMA_REF_STEP, str(ROOT), prefix, repr(CLIPS), *a.variants], check=True)


if __name__ == "__main__":
    main()
