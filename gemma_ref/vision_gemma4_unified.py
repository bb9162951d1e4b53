"""Images in, Gemma 4 12B "Unified": no encoder, only embedders (audio: audio.py).

    image --Gemma 4's resize to a soft-token budget--> model patches [M, 3(kp)^2], each a
          k x k block of p-pixel patches (one soft token), with its block position (x, y)
          --LayerNorm, Linear, LayerNorm--> [M, E]
          --+ table[x, 0] + table[y, 1] (learned 2-D position embedding), LayerNorm--> [M, E]
          --weightless RMSNorm, Linear--> soft-token embeddings [M, D]

    audio --right-padded to a multiple of 640 samples (40 ms at 16 kHz)--> frames [N, 640]
          --weightless RMSNorm, Linear--> soft-token embeddings [N, D]
          (the audio seam's: audio.py with AudioConfig.samples_per_token, audio_features.raw_frames)

The language model's side is Gemma 4's (vision_gemma4.py: the prompt's image blocks,
soft tokens embedded as <pad> before the features replace them, an image's tokens seeing
each other both ways on sliding layers). Axis legend: M model patches (soft tokens) of
one image, E mm_embed_dim, D text width, N audio frames.
Follows transformers 5.25, models/gemma4_unified/modeling_gemma4_unified.py
(Gemma4UnifiedVisionEmbedder, Gemma4UnifiedMultimodalEmbedder, get_audio_features),
image_processing_gemma4_unified.py (patches_merge) and feature_extraction_gemma4_unified.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from .errors import GemmaRefError
from .model import record, rms_norm
from .parallel import linear
from .vision import layer_norm
from .vision_gemma4 import Gemma4Preprocessing, Gemma4VisionConfig, preprocess_one

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm's default, which the embedder's three norms keep
# transformers saves the embedder as model.vision_embedder.*, its projection as model.embed_vision.*
KEY_PREFIXES = {"model.vision_embedder.": "model.embed_vision."}


@dataclass(frozen=True)
class Gemma4UnifiedVisionConfig(Gemma4VisionConfig):
    """`vision_config` of a gemma4_unified config.json (Gemma4UnifiedVisionConfig keys) + the
    image keys. patch_size here is the model patch, k x the processor's patch_size."""

    mm_embed_dim: int = 3840  # E
    mm_posemb_size: int = 1120  # rows of the position table, per axis
    num_hidden_layers: int = 0  # no encoder layers
    key_prefixes = KEY_PREFIXES  # the loader's outer_prefixes for this checkpoint

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "Gemma4UnifiedVisionConfig | None":
        if d.get("model_type") != "gemma4_unified" or not d.get("vision_config"):
            return None
        v = d["vision_config"]
        try:
            k, p = int(v.get("pooling_kernel_size", 3)), int(v.get("patch_size", 16))
            kw = dict(pooling_kernel_size=k, patch_size=k * p,
                      mm_embed_dim=int(v.get("mm_embed_dim", 3840)),
                      mm_posemb_size=int(v.get("mm_posemb_size", 1120)),
                      rms_norm_eps=float(v.get("rms_norm_eps", 1e-6)))
            if int(v.get("output_proj_dims", kw["mm_embed_dim"])) != kw["mm_embed_dim"]:
                raise ValueError("output_proj_dims must equal mm_embed_dim (the embedder's width)")
            kw.update({key: int(d[key]) for key in ("image_token_id", "boi_token_id", "eoi_token_id") if key in d})
            kw["bidirectional"] = (d.get("text_config") or {}).get("use_bidirectional_attention", "vision")
            return cls(**kw)
        except (TypeError, ValueError) as e:
            raise GemmaRefError(f"{source}: invalid vision_config ({e})") from None

    def expected_shapes(self, text_hidden: int) -> dict[str, tuple[int, ...]]:
        P, E = 3 * self.patch_size ** 2, self.mm_embed_dim
        return {
            "embed_vision.patch_ln1.weight": (P,), "embed_vision.patch_ln1.bias": (P,),
            "embed_vision.patch_dense.weight": (E, P), "embed_vision.patch_dense.bias": (E,),
            "embed_vision.patch_ln2.weight": (E,), "embed_vision.patch_ln2.bias": (E,),
            "embed_vision.pos_embedding": (self.mm_posemb_size, 2, E),
            "embed_vision.pos_norm.weight": (E,), "embed_vision.pos_norm.bias": (E,),
            "embed_vision.embedding_projection.weight": (text_hidden, E),
        }

    def preprocess(self, image, p: Gemma4Preprocessing, source="image"):
        """One image -> model patches [M, 3(kp)^2] and block positions [M, 2]. The processor
        resizes as Gemma 4's, cuts p-pixel patches and merges each k x k block into one
        (row, column, channel) vector, in row-major block order: the same as cutting kp-pixel
        patches of the resized image, which is what this does."""
        k = p.pooling_kernel_size
        return preprocess_one(image, dataclasses.replace(p, patch_size=k * p.patch_size, pooling_kernel_size=1),
                              source)

    def features(self, patches, xy, W, trace=None):
        return image_features(patches, xy, W, self, trace)


def image_features(patches, xy, W, c: Gemma4UnifiedVisionConfig, trace=None):
    """Soft-token embeddings of one image.           patches [M, 3(kp)^2], xy [M, 2] -> [M, D]"""
    def ln(h, name):
        return layer_norm(h, W[f"embed_vision.{name}.weight"], W[f"embed_vision.{name}.bias"], LAYER_NORM_EPS)

    h = ln(np.asarray(patches, W.dtype), "patch_ln1")  # [M, 3(kp)^2]
    h = ln(linear(h, W["embed_vision.patch_dense.weight"]) + W["embed_vision.patch_dense.bias"], "patch_ln2")
    table = W["embed_vision.pos_embedding"]  # [rows, 2, E]: one table per axis
    h = ln(h + table[xy[:, 0], 0] + table[xy[:, 1], 1], "pos_norm")  # [M, E]
    record(trace, "embed_vision", h)  # transformers' embedder last_hidden_state
    out = linear(rms_norm(h, None, c.rms_norm_eps), W["embed_vision.embedding_projection.weight"])
    record(trace, "embed_vision.embedding_projection", out)
    return out  # [M, D]
