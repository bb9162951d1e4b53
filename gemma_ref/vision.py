"""Images in: Gemma 3's SigLIP vision tower, its projector, and the processor's steps.

The language model never sees pixels. This module turns images into embeddings
(one row per `<image_soft_token>`) and expands the prompt's `<start_of_image>`
markers into image blocks; model.forward puts the embeddings in place of the soft
tokens and lets each image's tokens see each other (see `image_reach`).

    image --preprocess--> pixels [3, S, S] --tower--> patches [P, Dv]
          --project--> soft-token embeddings [M, D]

Axis legend (the text model's is in model.py): I images, P patches per image
(= (S / p)^2 for image size S and patch size p), Dv vision width, Nv vision
heads, Hv = Dv / Nv, Fv vision MLP width, M = mm_tokens_per_image, D text width.

Parameters are the checkpoint's keys. transformers >= 5 saves the tower as
`vision_tower.*`; the Hub checkpoints (older transformers) have
`vision_tower.vision_model.*`; the loader reads both (VISION_KEY_PREFIXES).
Every step follows transformers 5.24: models/siglip/modeling_siglip.py
(SiglipVisionModel), models/gemma3/modeling_gemma3.py (Gemma3MultiModalProjector,
the mask), models/gemma3/image_processing_pil_gemma3.py and processing_gemma3.py.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import files
from .errors import GemmaRefError
from .model import gelu_tanh, record, rms_norm
from .parallel import linear, split_tokens, threads_for

IMAGE_MARKER = "<start_of_image>"  # what a prompt says where an image goes (the processor's boi_token)

# Checkpoint key prefix -> our key prefix (our keys are transformers 5's saved layout).
VISION_KEY_PREFIXES = {
    "vision_tower.vision_model.": "vision_tower.",  # Hub checkpoints (transformers 4)
    "model.vision_tower.": "vision_tower.",  # transformers 5, in-memory names
    "vision_tower.": "vision_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "multi_modal_projector.": "multi_modal_projector.",
    "model.embed_vision.": "embed_vision.",  # Gemma 4 (vision_gemma4.py)
}


# --- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class VisionConfig:
    """`vision_config` (SiglipVisionConfig keys, its defaults) + Gemma3Config's image keys."""

    hidden_size: int = 768  # Dv (Gemma 3: 1152)
    intermediate_size: int = 3072  # Fv (Gemma 3: 4304)
    num_hidden_layers: int = 12  # (Gemma 3: 27)
    num_attention_heads: int = 12  # Nv (Gemma 3: 16)
    num_channels: int = 3
    image_size: int = 224  # S: images are resized to S x S (Gemma 3: 896)
    patch_size: int = 16  # p: one patch is p x p pixels (Gemma 3: 14)
    layer_norm_eps: float = 1e-6  # LayerNorms of the tower and the projector's RMSNorm
    hidden_act: str = "gelu_pytorch_tanh"
    mm_tokens_per_image: int = 256  # M: soft tokens per image (a square number)
    image_token_index: int = 262_144  # <image_soft_token>
    boi_token_index: int = 255_999  # <start_of_image>
    eoi_token_index: int = 256_000  # <end_of_image>

    bidirectional_layers = "all"  # an image's tokens see each other both ways on every layer
    soft_tokens_embedded_as_pad = False  # see model.ImageTokens.embedded_as_pad

    def expected_shapes(self, text_hidden: int) -> dict[str, tuple[int, ...]]:
        return expected_vision_shapes(self, text_hidden)

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_side(self) -> int:
        return math.isqrt(self.mm_tokens_per_image)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "VisionConfig | None":
        """The image half of a Gemma3ForConditionalGeneration config.json; None for text-only
        models (and Gemma 4, whose vision encoder is another design)."""
        if "vision_config" not in d or d.get("model_type", "gemma3") != "gemma3":
            return None
        try:
            image_keys = {k: int(d[k]) for k in ("mm_tokens_per_image", "image_token_index",
                                                  "boi_token_index", "eoi_token_index") if k in d}
        except (TypeError, ValueError) as e:
            raise GemmaRefError(f"{source}: invalid image token keys ({e})") from None
        config = cls.of_tower(d["vision_config"] or {}, source, **image_keys)
        g, t = config.patches_per_side, config.tokens_per_side
        if t * t != config.mm_tokens_per_image or g % t or config.image_size % config.patch_size:
            raise GemmaRefError(
                f"{source}: image_size {config.image_size} / patch_size {config.patch_size} does not "
                f"pool evenly to mm_tokens_per_image {config.mm_tokens_per_image}")
        return config

    @classmethod
    def of_tower(cls, v: dict, source: str = "config.json", **image_keys) -> "VisionConfig":
        """The SigLIP tower's keys of a `vision_config` (+ the caller's image keys)."""
        try:
            kw = {k: type(getattr(cls, k))(v[k]) for k in (
                "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_channels", "image_size", "patch_size", "layer_norm_eps", "hidden_act") if k in v}
            config = cls(**kw, **image_keys)
        except (TypeError, ValueError) as e:
            raise GemmaRefError(f"{source}: invalid vision_config ({e})") from None
        if v.get("vision_use_head"):
            raise GemmaRefError(f"{source}: vision_use_head is true; a SigLIP tower without its "
                                "pooling head is expected")
        if config.hidden_act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"):
            raise GemmaRefError(f"{source}: vision hidden_act {config.hidden_act!r} is not tanh GELU")
        if config.image_size % config.patch_size:
            raise GemmaRefError(f"{source}: image_size {config.image_size} is not a multiple of "
                                f"patch_size {config.patch_size}")
        return config


def expected_vision_shapes(c: VisionConfig, text_hidden: int) -> dict[str, tuple[int, ...]]:
    """Every tensor of the tower and Gemma 3's projector, with its shape."""
    return {**tower_shapes(c),
            "multi_modal_projector.mm_soft_emb_norm.weight": (c.hidden_size,),
            "multi_modal_projector.mm_input_projection_weight": (c.hidden_size, text_hidden)}  # x @ W


def tower_shapes(c: VisionConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of the SigLIP tower (Gemma 3's, PaliGemma's), with its shape."""
    Dv, Fv, p = c.hidden_size, c.intermediate_size, c.patch_size
    shapes = {
        "vision_tower.embeddings.patch_embedding.weight": (Dv, c.num_channels, p, p),
        "vision_tower.embeddings.patch_embedding.bias": (Dv,),
        "vision_tower.embeddings.position_embedding.weight": (c.patches_per_side ** 2, Dv),
        "vision_tower.post_layernorm.weight": (Dv,),
        "vision_tower.post_layernorm.bias": (Dv,),
    }
    for i in range(c.num_hidden_layers):
        pre = f"vision_tower.encoder.layers.{i}."
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[pre + norm + ".weight"] = shapes[pre + norm + ".bias"] = (Dv,)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[pre + f"self_attn.{proj}.weight"] = (Dv, Dv)
            shapes[pre + f"self_attn.{proj}.bias"] = (Dv,)
        shapes[pre + "mlp.fc1.weight"], shapes[pre + "mlp.fc1.bias"] = (Fv, Dv), (Fv,)
        shapes[pre + "mlp.fc2.weight"], shapes[pre + "mlp.fc2.bias"] = (Dv, Fv), (Dv,)
    return shapes


# --- the tower and the projector ------------------------------------------------


def layer_norm(x, w, b, eps):
    """(x - mean) / sqrt(var + eps) * w + b over the last axis.     [..., Dv] -> [..., Dv]"""
    mean = x.mean(axis=-1, keepdims=True)
    var = np.square(x - mean).mean(axis=-1, keepdims=True)  # biased, as torch's LayerNorm
    return (x - mean) / np.sqrt(var + eps) * w + b


def patchify(pixels, p):
    """Cut images into p x p patches, each flattened as (channel, row, column).

    [I, C, S, S] -> [I, P, C*p*p], patches in row-major grid order (the conv's output order).
    """
    I, C, S, _ = pixels.shape
    g = S // p
    x = pixels.reshape(I, C, g, p, g, p)  # [I, C, gy, py, gx, px]
    return x.transpose(0, 2, 4, 1, 3, 5).reshape(I, g * g, C * p * p)


def patch_embedding(pixels, w, b, pos):
    """Conv2d(kernel = stride = p) as a matmul on patches, + learned positions.

    [I, C, S, S], w [Dv, C, p, p], b [Dv], pos [P, Dv] -> [I, P, Dv]
    """
    patches = patchify(pixels, w.shape[-1])  # [I, P, C*p*p]
    return linear(patches, w.reshape(w.shape[0], -1)) + b + pos  # [I, P, Dv]


def bidirectional_attention(q, k, v, scale):
    """Softmax attention where every query sees every key (no mask).

    q [I, T, Nv, Hv], k and v [I, P, Nv, Hv] -> [I, T, Nv*Hv]
    """
    I, T, Nv, Hv = q.shape
    # Heads first, each contiguous: BLAS takes the strided views slowly (2x here).
    q = np.ascontiguousarray(q.transpose(0, 2, 1, 3))  # [I, Nv, T, Hv]
    kT = np.ascontiguousarray(k.transpose(0, 2, 3, 1))  # [I, Nv, Hv, P]
    v = np.ascontiguousarray(v.transpose(0, 2, 1, 3))  # [I, Nv, P, Hv]
    out = np.empty((I, Nv, T, Hv), np.result_type(q, k, v))
    block = 128  # queries at a time: the [Nv, block, P] scores stay small (896 px: P = 4096)
    for a in range(0, T, block):
        scores = q[:, :, a:a + block] @ kT  # [I, Nv, t, P]   einsum("inth,inhp->intp")
        scores *= scale
        out[:, :, a:a + block] = softmax_in_place(scores) @ v  # [I, Nv, t, Hv]
    return out.transpose(0, 2, 1, 3).reshape(I, T, Nv * Hv)


def softmax_in_place(x):
    """softmax(x) over the last axis, computed in x's memory (the scores of 4096 patches
    are large: new arrays for each step cost more than the arithmetic)."""
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def vision_attention(x, W, pre, heads):
    """Multi-head self-attention over an image's patches, biased projections, scale Hv^-0.5.

    [I, P, Dv] -> [I, P, Dv]
    """
    I, P, Dv = x.shape
    Hv = Dv // heads

    def project(name):  # [I, P, Dv] -> [I, P, Nv, Hv]
        return (linear(x, W[pre + name + ".weight"]) + W[pre + name + ".bias"]).reshape(I, P, heads, Hv)

    q, k, v = project("q_proj"), project("k_proj"), project("v_proj")
    # Each query on its own: split_tokens gives the cores a share of the queries each.
    (out,) = split_tokens(lambda q: (bidirectional_attention(q, k, v, Hv ** -0.5),), q)  # [I, P, Dv]
    return linear(out, W[pre + "out_proj.weight"]) + W[pre + "out_proj.bias"]  # [I, P, Dv]


def vision_mlp(x, W, pre):
    """fc2(gelu_tanh(fc1(x))), biased.                    [I, P, Dv] -> [I, P, Fv] -> [I, P, Dv]"""
    h = gelu_tanh(linear(x, W[pre + "fc1.weight"]) + W[pre + "fc1.bias"])
    return linear(h, W[pre + "fc2.weight"]) + W[pre + "fc2.bias"]


def encoder_layer(x, W, i, c: VisionConfig, trace=None):
    """Pre-LayerNorm block: h = x + attn(ln1(x)); out = h + mlp(ln2(h)).   [I, P, Dv] -> same"""
    pre, eps = f"vision_tower.encoder.layers.{i}.", c.layer_norm_eps
    h = layer_norm(x, W[pre + "layer_norm1.weight"], W[pre + "layer_norm1.bias"], eps)
    x = x + vision_attention(h, W, pre + "self_attn.", c.num_attention_heads)
    h = layer_norm(x, W[pre + "layer_norm2.weight"], W[pre + "layer_norm2.bias"], eps)
    x = x + vision_mlp(h, W, pre + "mlp.")
    record(trace, f"vision_tower.encoder.layers.{i}", x)
    return x


def vision_tower(pixels, W, c: VisionConfig, trace=None):
    """SigLIP's vision transformer (no pooling head).          [I, C, S, S] -> [I, P, Dv]"""
    e = "vision_tower.embeddings."
    x = patch_embedding(pixels, W[e + "patch_embedding.weight"], W[e + "patch_embedding.bias"],
                        W[e + "position_embedding.weight"])  # [I, P, Dv]
    record(trace, "vision_tower.embeddings", x)
    for i in range(c.num_hidden_layers):
        x = encoder_layer(x, W, i, c, trace)
    x = layer_norm(x, W["vision_tower.post_layernorm.weight"], W["vision_tower.post_layernorm.bias"],
                   c.layer_norm_eps)
    record(trace, "vision_tower.post_layernorm", x)
    return x


def avg_pool(x, g, t):
    """Average the g x g patch grid down to t x t tokens (kernel = stride = g / t).

    [I, g*g, Dv] -> [I, t*t, Dv], tokens in row-major grid order.
    """
    I, _, Dv = x.shape
    k = g // t
    x = x.reshape(I, t, k, t, k, Dv)  # [I, ty, ky, tx, kx, Dv]
    return x.mean(axis=(2, 4)).reshape(I, t * t, Dv)


def project(x, W, c: VisionConfig, trace=None):
    """Gemma 3's projector: pool, RMSNorm (1 + w), matmul.      [I, P, Dv] -> [I, M, D]"""
    pooled = avg_pool(x, c.patches_per_side, c.tokens_per_side)  # [I, M, Dv]
    normed = rms_norm(pooled, W["multi_modal_projector.mm_soft_emb_norm.weight"], c.layer_norm_eps)
    out = normed @ W["multi_modal_projector.mm_input_projection_weight"]  # [I, M, Dv] @ [Dv, D]
    record(trace, "multi_modal_projector", out)
    return out


def image_features(pixels, W, c: VisionConfig, trace=None):
    """Soft-token embeddings of preprocessed images.   [I, C, S, S] -> [I, M, D]

    Not scaled by sqrt(D): they replace the scaled token embeddings as they are.
    """
    pixels = np.asarray(pixels, dtype=W.dtype)
    with threads_for(pixels.shape[0] * c.patches_per_side ** 2):  # many rows: our threads split
        return project(vision_tower(pixels, W, c, trace), W, c, trace)


# --- preprocessing (transformers' Gemma3ImageProcessorPil) --------------------------


@dataclass(frozen=True)
class Preprocessing:
    """preprocessor_config.json of a Gemma 3 checkpoint; null values take the processor's defaults.

    The pan-and-scan settings are honoured as Gemma3ImageProcessor honours them. (Called
    through Gemma3Processor, transformers 5.24 passes the processor's own defaults, off /
    256 / 4 / 1.2, over them on every call; the Hub configs leave them null anyway.)
    """

    size: tuple[int, int]  # (height, width) to resize to
    resample: int = 2  # PIL filter number (2 = bilinear)
    do_convert_rgb: bool = True
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    do_pan_and_scan: bool = False  # also feed crops of images with an extreme aspect ratio
    pan_and_scan_min_crop_size: int = 256
    pan_and_scan_max_num_crops: int = 4
    pan_and_scan_min_ratio_to_activate: float = 1.2

    @classmethod
    def from_json(cls, path: Path) -> "Preprocessing":
        content = files.read_bytes(path, missing="not found (images need the checkpoint's "
                                                  "preprocessor_config.json)")
        try:
            d = json.loads(content.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise GemmaRefError(f"{path}: not valid JSON ({e})") from None
        try:
            size = d["size"]
            kw = {"size": (int(size["height"]), int(size["width"]))}
            for f in ("resample", "do_convert_rgb", "do_resize", "do_rescale", "rescale_factor",
                      "do_normalize", "do_pan_and_scan", "pan_and_scan_min_crop_size",
                      "pan_and_scan_max_num_crops", "pan_and_scan_min_ratio_to_activate"):
                if d.get(f) is not None:  # null: the processor's default
                    kw[f] = type(getattr(cls, f))(d[f])
            for f in ("image_mean", "image_std"):
                if d.get(f) is not None:
                    kw[f] = tuple(float(m) for m in d[f])
            return cls(**kw)
        except (KeyError, TypeError, ValueError) as e:
            raise GemmaRefError(f"{path}: invalid preprocessor config ({e!r})") from None


def load_image(image, source: str = "image"):
    """A PIL image from a path, a PIL image, or a uint8 array [H, W, 3] (or [H, W], [H, W, 4]).

    A path is read as transformers' load_image reads one: EXIF orientation applied,
    then converted to RGB by PIL (so an alpha channel is dropped, not composited).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (str, Path)):
        files.check_file(image, "image file")  # missing, a directory, a FIFO, unreadable
        try:
            with Image.open(image) as f:
                f.load()
                return ImageOps.exif_transpose(f).convert("RGB")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise GemmaRefError(f"{image}: cannot read the image ({e})") from None
    a = np.asarray(image) if isinstance(image, (np.ndarray, list)) else None
    if a is None or a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        what = f"{a.dtype} array of shape {a.shape}" if a is not None else type(image).__name__
        raise GemmaRefError(f"{source}: expected a file path, a PIL image or a uint8 array "
                            f"[H, W, 3], got {what}")
    return Image.fromarray(a, mode={2: "L", 3: "RGB", 4: "RGBA"}[a.ndim if a.ndim == 2 else a.shape[2]])


def to_rgb(image) -> np.ndarray:
    """transformers' convert_to_rgb: RGB as is, grey replicated, transparency composited
    onto white.                                         PIL image -> uint8 [H, W, 3]"""
    from PIL import Image

    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(image.convert("RGB"))


def pan_and_scan(rgb, p: Preprocessing) -> list[np.ndarray]:
    """Crops of an image whose aspect ratio is extreme enough; [] otherwise.

    uint8 [H, W, 3] -> list of uint8 [h, w, 3]: 2 to max_num_crops crops side by side
    along the long edge (about one per aspect-ratio unit, each >= min_crop_size).
    """
    H, W = rgb.shape[:2]
    long, short = max(H, W), min(H, W)
    if long / short < p.pan_and_scan_min_ratio_to_activate:
        return []
    n = int(math.floor(long / short + 0.5))  # half rounds up
    n = min(int(math.floor(long / p.pan_and_scan_min_crop_size)), n)
    n = min(p.pan_and_scan_max_num_crops, max(2, n))
    n_w, n_h = (n, 1) if W >= H else (1, n)
    crop_w, crop_h = int(math.ceil(W / n_w)), int(math.ceil(H / n_h))
    if min(crop_w, crop_h) < p.pan_and_scan_min_crop_size:
        return []
    return [rgb[y:y + crop_h, x:x + crop_w] for y in range(0, crop_h * n_h, crop_h)
            for x in range(0, crop_w * n_w, crop_w)]


def normalize_pixels(rgb, p: Preprocessing) -> np.ndarray:
    """Resize, rescale, normalize one image.              uint8 [H, W, 3] -> float32 [3, h, w]

    Resized by PIL (as transformers' PIL path: uint8 in, uint8 out); rescaled in
    float64 and rounded to float32; normalized in float32, as transformers does.
    """
    from PIL import Image

    if p.do_resize:
        h, w = p.size
        rgb = np.array(Image.fromarray(rgb).resize((w, h), resample=p.resample))
    x = rgb
    if p.do_rescale:
        x = (x.astype(np.float64) * p.rescale_factor).astype(np.float32)
    if p.do_normalize:
        x = x.astype(np.float32, copy=False)
        x = (x - np.asarray(p.image_mean, np.float32)) / np.asarray(p.image_std, np.float32)
    return np.ascontiguousarray(np.moveaxis(x, -1, 0), dtype=np.float32)  # [3, h, w]


def preprocess(images, p: Preprocessing, pan_and_scan_crops: bool | None = None):
    """Pixel values for the tower, and the number of pan-and-scan crops of each image.

    images: paths, PIL images or uint8 arrays -> (float32 [I', 3, h, w], [crops per image]),
    where I' counts each image and then its crops, in order.
    pan_and_scan_crops: None follows the config (do_pan_and_scan).
    """
    pas = p.do_pan_and_scan if pan_and_scan_crops is None else pan_and_scan_crops
    pixels, n_crops = [], []
    for k, image in enumerate(images):
        pil = load_image(image, source=f"image {k + 1}")
        rgb = to_rgb(pil) if p.do_convert_rgb else np.array(pil)
        crops = pan_and_scan(rgb, p) if pas else []
        pixels += [normalize_pixels(x, p) for x in [rgb] + crops]
        n_crops.append(len(crops))
    return np.stack(pixels), n_crops


# --- prompts with images -------------------------------------------------------------


def expand_prompt(text: str, n_crops: list[int], c: VisionConfig, encode) -> list[int]:
    """Token ids of a prompt whose `<start_of_image>` markers become image blocks.

    As Gemma3Processor: each marker becomes "\\n\\n<start_of_image>" + M soft tokens +
    "<end_of_image>\\n\\n" (with pan-and-scan crops: "Here is the original image {block}
    and here are some crops to help you see better {block} {block}..."), and the text
    is tokenized with the special tokens split out. encode(text, add_bos) -> ids.
    """
    parts = text.split(IMAGE_MARKER)
    if len(parts) - 1 != len(n_crops):
        raise GemmaRefError(f"the prompt has {len(parts) - 1} {IMAGE_MARKER} marker(s) for "
                            f"{len(n_crops)} image(s); give one image per marker")
    block = [c.boi_token_index] + [c.image_token_index] * c.mm_tokens_per_image
    # The text between image blocks, with the processor's separators; a block is
    # the ids boi, M x soft, then eoi, which starts the next piece of text.
    pieces = [parts[0]]
    for n, after in zip(n_crops, parts[1:]):
        if n == 0:
            pieces[-1] += "\n\n"
            pieces.append("\n\n" + after)
        else:
            pieces[-1] += "Here is the original image \n\n"
            pieces.append("\n\n and here are some crops to help you see better \n\n")
            pieces += ["\n\n \n\n"] * (n - 1)
            pieces.append("\n\n" + after)
    ids = encode(pieces[0], True)
    for piece in pieces[1:]:
        ids += block + [c.eoi_token_index] + encode(piece, False)
    return ids


def image_reach(ids, positions, c: VisionConfig):
    """The last key position each token may see: its own position for text, the last
    position of its image for image soft tokens. So one image's tokens see each other
    both ways (transformers' blockwise mask, OR-ed with the causal one); text stays
    causal (everything before an image is visible to it causally anyway).

    ids, positions [B, T] -> [B, T] int64. Each image must lie wholly within `ids`.
    """
    soft = np.asarray(ids) == c.image_token_index  # [B, T]
    reach = np.array(positions, dtype=np.int64)
    for b, t in zip(*np.nonzero(soft[:, ::-1])):  # right to left: a run reaches its last token
        t = soft.shape[1] - 1 - t
        if t + 1 < soft.shape[1] and soft[b, t + 1]:
            reach[b, t] = reach[b, t + 1]
    return reach


def image_tokens(ids, positions, rows, c: VisionConfig):
    """model.ImageTokens for a chunk of tokens: where the soft tokens are, their
    embeddings (rows, [n, D], in row-major order of the chunk), and their reach."""
    from .model import ImageTokens

    at = np.asarray(ids) == c.image_token_index  # [B, T]
    if at.sum() != len(rows):
        raise GemmaRefError(f"the ids hold {int(at.sum())} image soft tokens, the images give "
                            f"{len(rows)} ({c.mm_tokens_per_image} per image)")
    return ImageTokens(at=at, embeds=rows, reach=image_reach(ids, positions, c),
                       layers=c.bidirectional_layers, embedded_as_pad=c.soft_tokens_embedded_as_pad)
