"""Images in, Gemma 4: its vision encoder, the embedder, and the processor's steps.

A different design from Gemma 3's SigLIP (vision.py, which this module shares the
image loading and the language model's side with):

    image --resize to a soft-token budget, keeping the aspect ratio--> patches [P, 3p^2]
          with their (x, y) grid positions
          --encoder (Gemma-style blocks, 2-D axial RoPE)--> [P, Dv]
          --pool k x k patches by position, * sqrt(Dv)--> [M, Dv]
          --embedder: weightless RMSNorm, matmul--> soft-token embeddings [M, D]

M (tokens per image) varies with the image's shape, up to max_soft_tokens (70, 140,
280, 560 or 1120). On the language model's side the image's tokens see each other
both ways on sliding layers only (use_bidirectional_attention: "vision").

Axis legend: P patches of one image, Dv vision width, Nv / Kv query / kv heads,
Hv head size, Fv MLP width, k pooling kernel, M soft tokens, D text width.
Follows transformers 5.24, models/gemma4/modeling_gemma4.py (Gemma4VisionModel,
Gemma4MultimodalEmbedder) and image_processing_pil_gemma4.py, processing_gemma4.py.
Keys are the checkpoint's without the leading "model." (`vision_tower.encoder.layers.0...`,
`embed_vision.embedding_projection.weight`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files
from .errors import GemmaRefError
from .model import gelu_tanh, record, rms_norm, rope
from .parallel import linear, split_tokens, threads_for
from .vision import bidirectional_attention, load_image, to_rgb

SOFT_TOKEN_BUDGETS = (70, 140, 280, 560, 1120)  # the image processor accepts only these
IMAGE_MARKER = "<|image|>"  # the image token, which prompts write where an image goes


@dataclass(frozen=True)
class Gemma4VisionConfig:
    """`vision_config` (Gemma4VisionConfig keys and defaults) + the image keys of config.json."""

    hidden_size: int = 768  # Dv
    intermediate_size: int = 3072  # Fv
    num_hidden_layers: int = 16
    num_attention_heads: int = 12  # Nv
    num_key_value_heads: int = 12  # Kv
    head_dim: int = 64  # Hv
    rms_norm_eps: float = 1e-6
    rope_theta: float = 100.0  # of the 2-D axial RoPE (rope_parameters.rope_theta)
    pooling_kernel_size: int = 3  # k: k x k patches pool into one soft token
    patch_size: int = 16  # p
    position_embedding_size: int = 10 * 1024  # rows of each axis' position table
    use_clipped_linears: bool = False  # projections clamp inputs and outputs (stored bounds)
    standardize: bool = False  # features -> (f - std_bias) * std_scale
    image_token_id: int = 258_880  # the soft token
    boi_token_id: int = 255_999
    eoi_token_id: int = 258_882
    bidirectional: str | None = None  # text_config.use_bidirectional_attention: "vision" or None

    @property
    def bidirectional_layers(self) -> str:  # where an image's tokens see each other both ways
        return "sliding" if self.bidirectional == "vision" else "none"

    soft_tokens_embedded_as_pad = True  # transformers' llm_input_ids (model.ImageTokens)

    # Gemma 3's names for the image tokens (what vision.image_tokens and the API read)
    image_token_index = property(lambda self: self.image_token_id)
    boi_token_index = property(lambda self: self.boi_token_id)
    eoi_token_index = property(lambda self: self.eoi_token_id)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "Gemma4VisionConfig | None":
        if d.get("model_type") == "gemma4_unified":  # no encoder: vision_gemma4_unified.py
            from .vision_gemma4_unified import Gemma4UnifiedVisionConfig

            return Gemma4UnifiedVisionConfig.from_dict(d, source)
        if d.get("model_type") != "gemma4" or not d.get("vision_config"):
            return None
        v = d["vision_config"]
        try:
            kw = {k: type(getattr(cls, k))(v[k]) for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "rms_norm_eps", "pooling_kernel_size", "patch_size",
                "position_embedding_size", "use_clipped_linears", "standardize") if v.get(k) is not None}
            rope_params = v.get("rope_parameters") or {}
            if rope_params.get("rope_type", "axial") != "axial":
                raise GemmaRefError(f"{source}: vision RoPE {rope_params['rope_type']!r} is not axial")
            if rope_params.get("rope_theta") is not None:
                kw["rope_theta"] = float(rope_params["rope_theta"])
            kw.update({k: int(d[k]) for k in ("image_token_id", "boi_token_id", "eoi_token_id") if k in d})
            kw["bidirectional"] = (d.get("text_config") or {}).get("use_bidirectional_attention")
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise GemmaRefError(f"{source}: invalid vision_config ({e})") from None

    def preprocess(self, image, p: "Gemma4Preprocessing", source="image"):
        """One image -> its patches and their grid positions (preprocess_one)."""
        return preprocess_one(image, p, source)

    def features(self, patches, xy, W, trace=None):
        """Soft-token embeddings of one preprocessed image (image_features)."""
        return image_features(patches, xy, W, self, trace)

    def expected_shapes(self, text_hidden: int) -> dict[str, tuple[int, ...]]:
        """Every tensor of the encoder and the embedder, with its shape."""
        Dv, Fv, Hv, p = self.hidden_size, self.intermediate_size, self.head_dim, self.patch_size
        N, K = self.num_attention_heads, self.num_key_value_heads
        shapes = {
            "vision_tower.patch_embedder.input_proj.weight": (Dv, 3 * p * p),
            "vision_tower.patch_embedder.position_embedding_table": (2, self.position_embedding_size, Dv),
            "embed_vision.embedding_projection.weight": (text_hidden, Dv),
        }
        if self.standardize:
            shapes["vision_tower.std_bias"] = shapes["vision_tower.std_scale"] = (Dv,)
        projections = {"self_attn.q_proj": (N * Hv, Dv), "self_attn.k_proj": (K * Hv, Dv),
                       "self_attn.v_proj": (K * Hv, Dv), "self_attn.o_proj": (Dv, N * Hv),
                       "mlp.gate_proj": (Fv, Dv), "mlp.up_proj": (Fv, Dv), "mlp.down_proj": (Dv, Fv)}
        for i in range(self.num_hidden_layers):
            pre = f"vision_tower.encoder.layers.{i}."
            for name, shape in projections.items():
                shapes[pre + name + ".linear.weight"] = shape
                if self.use_clipped_linears:
                    for bound in ("input_min", "input_max", "output_min", "output_max"):
                        shapes[pre + name + "." + bound] = ()
            for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                         "post_feedforward_layernorm"):
                shapes[pre + norm + ".weight"] = (Dv,)
            shapes[pre + "self_attn.q_norm.weight"] = shapes[pre + "self_attn.k_norm.weight"] = (Hv,)
        return shapes


# --- the encoder ------------------------------------------------------------------------


def clipped_linear(x, W, name, clipped: bool):
    """x @ w.T, with input and output clamped to stored bounds when the config says so."""
    if clipped:
        x = np.clip(x, W[name + ".input_min"], W[name + ".input_max"])
    y = linear(x, W[name + ".linear.weight"])
    return np.clip(y, W[name + ".output_min"], W[name + ".output_max"]) if clipped else y


def patch_embedding(patches, xy, W, c: Gemma4VisionConfig):
    """Patches in [0, 1] -> 2 * (p - 0.5) @ W_in.T + table_x[x] + table_y[y].

    patches [P, 3*p*p], xy [P, 2] int -> [P, Dv]
    """
    table = W["vision_tower.patch_embedder.position_embedding_table"]  # [2, rows, Dv]
    h = linear(2 * (patches - 0.5), W["vision_tower.patch_embedder.input_proj.weight"])  # [P, Dv]
    return h + table[0][xy[:, 0]] + table[1][xy[:, 1]]


def axial_rope_angles(xy, head_dim, theta, dtype):
    """cos, sin for 2-D RoPE: the first half of a head turns with x, the second with y.

    xy [P, 2] -> 2 x ([1, P, Hv/4], [1, P, Hv/4])  (x angles, y angles)
    """
    half = head_dim // 2  # channels per axis
    inv_freq = (1.0 / theta ** (np.arange(0, half, 2) / half)).astype(dtype)  # [Hv/4]
    angles = xy.astype(dtype)[None, :, :, None] * inv_freq  # [1, P, 2, Hv/4]
    return ((np.cos(angles[:, :, 0]), np.sin(angles[:, :, 0])),
            (np.cos(angles[:, :, 1]), np.sin(angles[:, :, 1])))


def axial_rope(x, angles):
    """Rotate each head's first half by its x angles and second half by its y angles
    (each half as rope() does: halves of the half against each other).

    [1, P, heads, Hv] -> same
    """
    (cos_x, sin_x), (cos_y, sin_y) = angles
    half = x.shape[-1] // 2
    return np.concatenate([rope(x[..., :half], cos_x, sin_x), rope(x[..., half:], cos_y, sin_y)], axis=-1)


def encoder_attention(x, W, pre, c: Gemma4VisionConfig, angles):
    """Bidirectional attention (as vision.py's), q/k RMSNorm (weighted), v RMSNorm (no
    weight), 2-D RoPE, scale 1 (the norms fix the size).             [1, P, Dv] -> [1, P, Dv]"""
    _, P, _ = x.shape
    N, K, Hv, eps = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rms_norm_eps

    def proj(name, heads):  # [1, P, Dv] -> [1, P, heads, Hv]
        return clipped_linear(x, W, pre + name, c.use_clipped_linears).reshape(1, P, heads, Hv)

    q = axial_rope(rms_norm(proj("q_proj", N), W[pre + "q_norm.weight"], eps, 0.0), angles)  # [1, P, N, Hv]
    k = axial_rope(rms_norm(proj("k_proj", K), W[pre + "k_norm.weight"], eps, 0.0), angles)  # [1, P, K, Hv]
    v = rms_norm(proj("v_proj", K), None, eps)  # [1, P, K, Hv]
    # Each kv head serves N / K query heads (repeated: the tower is small beside its scores).
    k, v = np.repeat(k, N // K, axis=2), np.repeat(v, N // K, axis=2)  # [1, P, N, Hv]
    # Each query on its own: split_tokens gives the cores a share of the queries each.
    (out,) = split_tokens(lambda q: (bidirectional_attention(q, k, v, 1.0),), q)  # [1, P, N*Hv]
    return clipped_linear(out, W, pre + "o_proj", c.use_clipped_linears)  # [1, P, Dv]


def encoder_layer(x, W, i, c: Gemma4VisionConfig, angles, trace=None):
    """h = x + norm(attn(norm(x))); out = h + norm(mlp(norm(h))), RMSNorms applied as w."""
    pre, eps = f"vision_tower.encoder.layers.{i}.", c.rms_norm_eps

    def norm(h, name):  # RMSNorm applied as w (no 1 + w in Gemma 4)
        return rms_norm(h, W[pre + name + ".weight"], eps, 0.0)

    def mlp(h, clip=c.use_clipped_linears):  # down(gelu_tanh(gate(h)) * up(h))
        gate, up = (clipped_linear(h, W, pre + f"mlp.{n}_proj", clip) for n in ("gate", "up"))
        return clipped_linear(gelu_tanh(gate) * up, W, pre + "mlp.down_proj", clip)

    x = x + norm(encoder_attention(norm(x, "input_layernorm"), W, pre + "self_attn.", c, angles),
                 "post_attention_layernorm")
    x = x + norm(mlp(norm(x, "pre_feedforward_layernorm")), "post_feedforward_layernorm")
    record(trace, f"vision_tower.encoder.layers.{i}", x[0])
    return x


def pool(h, xy, k, dim):
    """Average each k x k block of patches (by their grid positions), * sqrt(Dv).

    h [P, Dv], xy [P, 2] -> [M, Dv], M = (grid width / k) * (grid height / k), blocks
    in row-major order.
    """
    cols = (xy[:, 0].max() + 1) // k  # blocks per row
    block = xy[:, 0] // k + cols * (xy[:, 1] // k)  # [P]
    M = int(block.max()) + 1
    out = np.zeros((M, h.shape[1]), h.dtype)
    np.add.at(out, block, h / (k * k))
    return out * math.sqrt(dim)


def image_features(patches, xy, W, c: Gemma4VisionConfig, trace=None):
    """Soft-token embeddings of one preprocessed image.   patches [P, 3p^2], xy [P, 2] -> [M, D]"""
    with threads_for(len(patches)):
        x = patch_embedding(np.asarray(patches, W.dtype), xy, W, c)[None]  # [1, P, Dv]
        record(trace, "vision_tower.patch_embedder", x[0])
        angles = axial_rope_angles(xy, c.head_dim, c.rope_theta, W.dtype)
        for i in range(c.num_hidden_layers):
            x = encoder_layer(x, W, i, c, angles, trace)
        h = pool(x[0], xy, c.pooling_kernel_size, c.hidden_size)  # [M, Dv]
        if c.standardize:
            h = (h - W["vision_tower.std_bias"]) * W["vision_tower.std_scale"]
        record(trace, "vision_tower", h)
        out = linear(rms_norm(h, None, c.rms_norm_eps), W["embed_vision.embedding_projection.weight"])
        record(trace, "embed_vision", out)
        return out  # [M, D]


# --- preprocessing (transformers' Gemma4ImageProcessorPil) ------------------------------------


@dataclass(frozen=True)
class Gemma4Preprocessing:
    """The image processor's settings (processor_config.json / preprocessor_config.json)."""

    resample: int = 3  # PIL bicubic
    do_convert_rgb: bool = True
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = False  # Gemma 4 takes pixels in [0, 1]
    image_mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    image_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    patch_size: int = 16
    max_soft_tokens: int = 280
    pooling_kernel_size: int = 3

    @classmethod
    def from_dir(cls, path: Path) -> "Gemma4Preprocessing":
        """From preprocessor_config.json, or the image_processor entry of processor_config.json."""
        d = None
        for name in ("preprocessor_config.json", "processor_config.json"):
            f = Path(path) / name
            if f.exists():
                try:
                    d = json.loads(files.read_bytes(f).decode("utf-8"))
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise GemmaRefError(f"{f}: not valid JSON ({e})") from None
                d = d.get("image_processor", d)
                break
        if d is None:
            raise GemmaRefError(f"{path}: images need the checkpoint's preprocessor_config.json")
        kw = {}
        for f in ("resample", "do_convert_rgb", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
                  "patch_size", "max_soft_tokens", "pooling_kernel_size"):
            if d.get(f) is not None:
                kw[f] = type(getattr(cls, f))(d[f])
        for f in ("image_mean", "image_std"):
            if d.get(f) is not None:
                kw[f] = tuple(float(m) for m in d[f])
        p = cls(**kw)
        if p.max_soft_tokens not in SOFT_TOKEN_BUDGETS:
            raise GemmaRefError(f"{path}: max_soft_tokens must be one of {SOFT_TOKEN_BUDGETS}")
        return p


def target_size(height, width, p: Gemma4Preprocessing) -> tuple[int, int]:
    """The largest size with the image's aspect ratio, sides multiples of k*p, and at most
    max_soft_tokens * k^2 patches (transformers' get_aspect_ratio_preserving_size)."""
    max_patches = p.max_soft_tokens * p.pooling_kernel_size ** 2
    factor = math.sqrt(max_patches * p.patch_size ** 2 / (height * width))
    side = p.pooling_kernel_size * p.patch_size
    h = int(math.floor(factor * height / side)) * side
    w = int(math.floor(factor * width / side)) * side
    if h == 0 and w == 0:
        raise GemmaRefError(f"an image of {height}x{width} resizes to nothing")
    longest = (max_patches // p.pooling_kernel_size ** 2) * side
    if h == 0:  # a very wide image: one block high
        h, w = side, min(int(math.floor(width / height)) * side, longest)
    elif w == 0:
        w, h = side, min(int(math.floor(height / width)) * side, longest)
    return h, w


def preprocess_one(image, p: Gemma4Preprocessing, source="image"):
    """One image -> patches in [0, 1] [P, 3*p*p] (each (row, column, channel)) and their
    grid positions xy [P, 2] (x = column), row-major."""
    from PIL import Image

    pil = load_image(image, source)
    rgb = to_rgb(pil) if p.do_convert_rgb else np.array(pil)
    if p.do_resize:
        h, w = target_size(*rgb.shape[:2], p)
        if (h, w) != rgb.shape[:2]:
            rgb = np.array(Image.fromarray(rgb).resize((w, h), resample=p.resample))
    x = rgb
    if p.do_rescale:
        x = (x.astype(np.float64) * p.rescale_factor).astype(np.float32)
    if p.do_normalize:
        x = (x.astype(np.float32) - np.asarray(p.image_mean, np.float32)) / np.asarray(p.image_std, np.float32)
    x = np.asarray(x, np.float32)
    H, W_, _ = x.shape
    s = p.patch_size
    gh, gw = H // s, W_ // s
    patches = x[:gh * s, :gw * s].reshape(gh, s, gw, s, 3).transpose(0, 2, 1, 3, 4).reshape(gh * gw, s * s * 3)
    gy, gx = np.mgrid[0:gh, 0:gw]
    return patches, np.stack([gx.ravel(), gy.ravel()], axis=-1).astype(np.int64)


def max_patches(p: Gemma4Preprocessing) -> int:
    """Patches the processor pads each image to: max_soft_tokens * k^2."""
    return p.max_soft_tokens * p.pooling_kernel_size ** 2


def pad_patches(images: list, n: int):
    """Images' (patches, xy) -> transformers' processor layout: pixel_values [I, n, 3p^2]
    (zero rows after the image's patches) and image_position_ids [I, n, 2] (-1 there)."""
    pixels = np.zeros((len(images), n, images[0][0].shape[1]), np.float32)
    positions = np.full((len(images), n, 2), -1, np.int64)
    for i, (patches, xy) in enumerate(images):
        pixels[i, :len(patches)], positions[i, :len(xy)] = patches, xy
    return pixels, positions


def unpad_patches(pixels, positions, c: Gemma4VisionConfig) -> list:
    """pixel_values [I, n, 3p^2], image_position_ids [I, n, 2] -> per image (patches, xy),
    the padding rows (position -1) dropped."""
    pixels, positions = np.asarray(pixels), np.asarray(positions)
    p = c.patch_size
    if (pixels.ndim != 3 or pixels.shape[2] != 3 * p * p or positions.shape != pixels.shape[:2] + (2,)
            or positions.dtype.kind not in "iu"):
        raise GemmaRefError(f"Gemma 4 pixel values must be [I, n, {3 * p * p}] with image_position_ids "
                            f"[I, n, 2] (integers), got {pixels.shape} and {positions.shape}")
    out = []
    for k, (px, xy) in enumerate(zip(pixels, positions)):
        real = (xy != -1).all(axis=-1)  # [n]
        if not real.any() or not real[:real.sum()].all():  # patches first, then only padding
            raise GemmaRefError(f"image_position_ids of image {k + 1}: padding (-1) rows must follow "
                                "the patches")
        out.append((px[real], xy[real]))
    return out


# Trace entries per patch ([P, Dv], padded to [I, n, Dv] over images) and per soft token
# ([M, .], concatenated over images, as transformers' vision_tower output)
PATCH_TRACES = ("vision_tower.patch_embedder", "vision_tower.encoder.layers.")
TOKEN_TRACES = ("vision_tower", "embed_vision")


def merge_traces(traces: list[dict], n: int) -> dict:
    """Per-image traces -> one: patch entries [I, n, Dv] (zero rows for padding, as
    scripts/dump_transformers.py stores transformers' own), token entries [sum M, .]."""
    out = {}
    for name in traces[0]:
        values = [t[name] for t in traces]
        if name.startswith(PATCH_TRACES):
            out[name] = np.zeros((len(values), n) + values[0].shape[1:], values[0].dtype)
            for i, v in enumerate(values):
                out[name][i, :len(v)] = v
        else:
            out[name] = np.concatenate(values)
    return out


def expand_prompt(text: str, n_tokens: list[int], c: Gemma4VisionConfig, marker: str, encode) -> list[int]:
    """Token ids of a prompt whose image markers become boi, n x soft token, eoi
    (Gemma4Processor.replace_image_token; no newlines added)."""
    parts = text.split(marker)
    if len(parts) - 1 != len(n_tokens):
        raise GemmaRefError(f"the prompt has {len(parts) - 1} {marker} marker(s) for {len(n_tokens)} "
                            "image(s); give one image per marker")
    ids = encode(parts[0], True)
    for n, piece in zip(n_tokens, parts[1:]):
        ids += [c.boi_token_id] + [c.image_token_id] * n + [c.eoi_token_id] + encode(piece, False)
    return ids
