"""PaliGemma 1 and 2: a SigLIP tower, one linear projector, and a Gemma 1 or Gemma 2
decoder that reads the image and the prompt as one bidirectional prefix.

    image --preprocess--> pixels [3, S, S] --vision.vision_tower--> patches [P, Dv]
          --project--> image tokens [P, D]          (one token per patch: no pooling)
    prompt:  P x <image> per image, <bos>, prefix text, "\\n"   (the prefix, bidirectional)
             then the suffix: the answer, generated or given    (causal)

The decoder is model.forward, Gemma 1 or 2 by `text_config.model_type` (PaliGemma 2:
softcaps, sliding window); the prefix-LM mask is a block per token (model.visible's
[B, T, 2] reach): a prefix token sees the whole prefix, whatever the window; a suffix
token sees what is causal (and within the window on sliding layers). Positions count
from 1, not 0. The image tokens are the projector's output as it is (not scaled by
sqrt(D): transformers 5 scales the token embeddings in their lookup instead).

Axis legend: model.py's and vision.py's (I images, P patches = tokens per image, Dv
vision width, D text width). Parameters keep the checkpoint's keys: the decoder's as
model.py's (`model.layers.0...`, from `language_model.model.*`), the tower's as
vision.py's (`vision_tower.*`, from `vision_tower.vision_model.*` on the Hub), and
`multi_modal_projector.linear.{weight,bias}`. Every step follows transformers 5.25:
models/paligemma/{configuration,modeling,processing}_paligemma.py, masking_utils.py
(create_sliding_window_causal_mask with block_sequence_ids), and
models/siglip/image_processing_pil_siglip.py.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import vision
from .api import Model, _generation_config_eos
from .config import GemmaConfig
from .config_json import load_json
from .errors import GemmaRefError
from .loader import load_safetensors_checkpoint
from .media import _image_rows, _rows
from .model import ImageTokens, forward, record
from .parallel import linear, threads_for
from .tokenizer import Tokenizer
from .vision import Preprocessing, VisionConfig

IMAGE_MARKER = "<image>"  # what a prompt says where an image goes (the processor's image_token)

# transformers 5.25's GemmaConfig / Gemma2Config defaults, for the keys a Hub config.json's
# text_config leaves out (PaliGemma 1's states little more than the sizes).
TEXT_DEFAULTS = {
    "gemma": dict(vocab_size=256_000, hidden_size=3072, intermediate_size=24_576, num_hidden_layers=28,
                  num_attention_heads=16, num_key_value_heads=16, head_dim=256, rms_norm_eps=1e-6,
                  max_position_embeddings=8192, rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh"),
    "gemma2": dict(vocab_size=256_000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                   num_attention_heads=8, num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
                   max_position_embeddings=8192, rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh",
                   query_pre_attn_scalar=256, sliding_window=4096, final_logit_softcapping=30.0,
                   attn_logit_softcapping=50.0),
}
# PaliGemmaConfig's sub-configs when config.json has none at all (PaliGemma 1 3B at 224 px).
ABSENT_TEXT_CONFIG = dict(model_type="gemma", hidden_size=2048, num_hidden_layers=18, intermediate_size=16_384,
                          num_attention_heads=8, num_key_value_heads=1, vocab_size=257_152)
ABSENT_VISION_CONFIG = dict(intermediate_size=4096, hidden_size=1152, patch_size=14, image_size=224,
                            num_hidden_layers=27, num_attention_heads=16)
SIGLIP_RESAMPLE = 3  # SiglipImageProcessor's default filter (bicubic), where the config says null


# --- configuration ------------------------------------------------------------------


@dataclass(frozen=True)
class PaliGemmaConfig:
    """config.json of PaliGemmaForConditionalGeneration (model_type "paligemma")."""

    text: GemmaConfig  # text_config: Gemma 1 ("gemma") or Gemma 2 ("gemma2")
    vision: VisionConfig  # vision_config: SigLIP; mm_tokens_per_image = P, image_token_index
    projection_dim: int  # the projector's output width (= the text width D)

    @property
    def image_token_index(self) -> int:  # <image>
        return self.vision.image_token_index

    @property
    def tokens_per_image(self) -> int:  # P = (S / p)^2: one per patch
        return self.vision.patches_per_side ** 2

    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "PaliGemmaConfig":
        text = d["text_config"] if d.get("text_config") is not None else ABSENT_TEXT_CONFIG
        if not isinstance(text, dict) or not isinstance(d.get("vision_config") or {}, dict):
            raise GemmaRefError(f"{source}: text_config and vision_config must be JSON objects")
        model_type = text.get("model_type", "gemma")
        if model_type not in TEXT_DEFAULTS:
            raise GemmaRefError(f"{source}: text_config.model_type {model_type!r}: PaliGemma's decoder "
                                f"is Gemma 1 or 2 ({', '.join(TEXT_DEFAULTS)})")
        carried = {k: d[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in d}
        text_config = GemmaConfig.from_dict({**TEXT_DEFAULTS[model_type], **carried, **text}, source)
        try:
            image_token = int(d.get("image_token_index", 256_000))  # PaliGemmaConfig's default
            projection_dim = int(d.get("projection_dim", 2048))
        except (TypeError, ValueError) as e:
            raise GemmaRefError(f"{source}: invalid image_token_index or projection_dim ({e})") from None
        v = d["vision_config"] if d.get("vision_config") is not None else ABSENT_VISION_CONFIG
        tower = VisionConfig.of_tower(v, source, image_token_index=image_token)
        tower = dataclasses.replace(tower, mm_tokens_per_image=tower.patches_per_side ** 2)
        if projection_dim != text_config.hidden_size:
            raise GemmaRefError(f"{source}: projection_dim {projection_dim} is not the text model's "
                                f"hidden_size {text_config.hidden_size}")
        return cls(text_config, tower, projection_dim)

    def expected_shapes(self, text_hidden: int) -> dict[str, tuple[int, ...]]:
        """The tower's and the projector's tensors (the loader adds the decoder's)."""
        return {**vision.tower_shapes(self.vision),
                "multi_modal_projector.linear.weight": (text_hidden, self.vision.hidden_size),  # [D, Dv]
                "multi_modal_projector.linear.bias": (text_hidden,)}


# --- images to tokens ---------------------------------------------------------------


def project(x, W, trace=None):
    """The projector: one biased linear layer, patch by patch.     [I, P, Dv] -> [I, P, D]"""
    out = linear(x, W["multi_modal_projector.linear.weight"]) + W["multi_modal_projector.linear.bias"]
    record(trace, "multi_modal_projector", out)
    return out


def image_features(pixels, W, c: PaliGemmaConfig, trace=None):
    """Image tokens of preprocessed images.                [I, C, S, S] -> [I, P, D]

    Not scaled by sqrt(D): they replace the (scaled) embeddings of the <image> tokens as they are.
    """
    pixels = np.asarray(pixels, dtype=W.dtype)
    with threads_for(pixels.shape[0] * c.tokens_per_image):  # many rows: our threads split
        return project(vision.vision_tower(pixels, W, c.vision, trace), W, trace)


# --- the prefix-LM mask -----------------------------------------------------------------


def prefix_block(positions, token_type_ids):
    """Each token's block of keys seen both ways (model.visible's [B, T, 2] reach).

    token_type_ids 0 marks the prefix (images, <bos>, prompt, "\\n"), 1 the suffix. A
    prefix token sees the whole prefix [first, last] of its row; a suffix token has an
    empty block (first > last) and sees only what is causal.
    positions, token_type_ids [B, T] (padding: position -1) -> [B, T, 2] int64
    """
    positions = np.asarray(positions, np.int64)
    prefix = (np.asarray(token_type_ids) == 0) & (positions >= 0)  # [B, T]
    first = np.where(prefix, positions, np.iinfo(np.int64).max).min(axis=1, keepdims=True)  # [B, 1]
    last = np.where(prefix, positions, -1).max(axis=1, keepdims=True)  # [B, 1]
    return np.stack([np.where(prefix, first, positions + 1), np.where(prefix, last, positions)], axis=-1)


def image_tokens(ids, positions, token_type_ids, rows, c: PaliGemmaConfig) -> ImageTokens:
    """model.ImageTokens for a chunk: the <image> tokens take `rows` [n, D] (in row-major
    order; vision.image_tokens checks the count), and every token gets its prefix_block.
    A chunk holds the whole prefix, or none of it (its tokens see each other both ways)."""
    tokens = vision.image_tokens(ids, positions, rows, c.vision)
    return dataclasses.replace(tokens, reach=prefix_block(positions, token_type_ids))


# --- the processor's prompt ---------------------------------------------------------------


def prompt_ids(text: str, n_images: int, c: PaliGemmaConfig, tokenizer: Tokenizer,
               suffix: str | None = None) -> tuple[list[int], list[int]]:
    """input_ids and token_type_ids of a prompt, as PaliGemmaProcessor builds them.

    Without `<image>` in the text: "<image>" per image, "<bos>", the text, "\\n". With
    markers: the text with <bos> after the last marker, and "\\n" at the end. Each
    marker becomes P image tokens. A suffix (for scoring a given answer) follows as
    its tokens and <eos>, with token type 1 (causal); the prefix has type 0.
    """
    if IMAGE_MARKER not in text:
        text = IMAGE_MARKER * n_images + text
    if text.count(IMAGE_MARKER) != n_images:
        raise GemmaRefError(f"the prompt has {text.count(IMAGE_MARKER)} {IMAGE_MARKER} marker(s) for "
                            f"{n_images} image(s); give one image per marker")
    *between, tail = text.split(IMAGE_MARKER)  # the text around the markers
    ids = []
    for piece in between:  # text before each marker (usually none), then its image tokens
        ids += tokenizer.encode(piece, add_bos=False) + [c.image_token_index] * c.tokens_per_image
    ids += [tokenizer.bos_id] + tokenizer.encode(tail + "\n", add_bos=False)
    types = [0] * len(ids)
    if suffix is not None:
        answer = tokenizer.encode(suffix, add_bos=False) + [tokenizer.eos_id]
        ids, types = ids + answer, types + [1] * len(answer)
    return ids, types


def siglip_preprocessing(path: Path) -> Preprocessing:
    """preprocessor_config.json of a PaliGemma checkpoint (SiglipImageProcessor: resize to
    S x S, rescale, normalize; nulls take SigLIP's defaults)."""
    p = Preprocessing.from_json(path)
    raw = json.loads(Path(path).read_text())
    return p if raw.get("resample") is not None else dataclasses.replace(p, resample=SIGLIP_RESAMPLE)


# --- the model ---------------------------------------------------------------------------


class PaliGemma(Model):
    """A PaliGemma checkpoint: api.Model's generation over PaliGemma's prompt and mask."""

    first_position = 1  # transformers: "Paligemma positions are 1-indexed"

    def __init__(self, config: PaliGemmaConfig, weights: dict, tokenizer: Tokenizer | None = None, *,
                 source: str = "", dtype="float32", stop_ids: Sequence[int] = (),
                 preprocessing: Preprocessing | None = None):
        super().__init__(config.text, weights, tokenizer, source=source, dtype=dtype, stop_ids=stop_ids,
                         vision=config.vision, preprocessing=preprocessing)
        self.paligemma = config

    @classmethod
    def from_checkpoint(cls, path: Path, *, source: str, dtype="float32", max_memory=None,
                        progress: bool = True) -> "PaliGemma":
        config = PaliGemmaConfig.from_dict(load_json(path / "config.json"), str(path / "config.json"))
        weights = load_safetensors_checkpoint(path, config.text, max_memory, progress, config)
        pre = path / "preprocessor_config.json"
        model = cls(config, weights, Tokenizer.from_checkpoint(path), source=source, dtype=dtype,
                    stop_ids=_generation_config_eos(path),
                    preprocessing=siglip_preprocessing(pre) if pre.exists() else None)
        model.checkpoint = path
        return model

    @staticmethod
    def describe(config_file: Path) -> dict:
        """What `gemma-ref info` prints, from config.json alone."""
        c = PaliGemmaConfig.from_dict(load_json(config_file), str(config_file))
        v = c.vision
        tower = sum(int(np.prod(s)) for s in c.expected_shapes(c.text.hidden_size).values())
        generation = {"gemma": "PaliGemma 1 (Gemma 1 decoder)", "gemma2": "PaliGemma 2 (Gemma 2 decoder)"}
        return {"parameters": c.text.num_parameters + tower, "config": c.text.to_dict(),
                "chat_template": "none (PaliGemma takes task prompts: generate(prompt, images=...))",
                "special": [f"architecture      {generation[c.text.model_type]}",
                            *c.text.summary(),
                            f"images            SigLIP {v.image_size} px, patch {v.patch_size}, "
                            f"{c.tokens_per_image} tokens per image, {v.num_hidden_layers} layer(s); "
                            f"linear projector; {tower:,} parameters (counted above)",
                            "mask              prefix-LM: images + prompt bidirectional, the answer causal; "
                            "positions from 1"]}

    # --- images and prompts ----------------------------------------------------------

    def embed_images(self, images, *, pan_and_scan: bool | None = None, trace: dict | None = None):
        """Image tokens of images: [I, P, D] (see api.Model.embed_images; no pan-and-scan)."""
        _no_pan_and_scan(pan_and_scan)
        return super().embed_images(images, trace=trace)

    def embed_pixels(self, pixels, positions=None, *, trace: dict | None = None) -> np.ndarray:
        """Image tokens of preprocessed pixels [I, 3, S, S] (the processor's pixel_values) -> [I, P, D]."""
        S, C = self.vision.image_size, self.vision.num_channels
        if positions is not None:
            raise GemmaRefError("image_position_ids go with Gemma 4 pixel values only")
        if np.ndim(pixels) != 4 or np.shape(pixels)[1:] != (C, S, S):
            raise GemmaRefError(f"pixel values must be [I, {C}, {S}, {S}], got {np.shape(pixels)}")
        return image_features(pixels, self.weights, self.paligemma, trace)

    def processor_inputs(self, prompt: str, images: Sequence = (), *, suffix: str | None = None) -> dict:
        """What PaliGemmaProcessor(images, text=prompt, suffix=suffix) gives, as
        {"input_ids", "token_type_ids"} (lists) and "image_features" [I, P, D]."""
        images = self._check_images(images)
        if not images:  # as PaliGemmaProcessor: "images are expected"
            raise GemmaRefError("PaliGemma needs an image with its prompt (generate(prompt, images=[...]), "
                                "or --image FILE)")
        if self.tokenizer is None:
            raise GemmaRefError(f"{self.source}: no tokenizer.model; pass token ids instead")
        if not isinstance(prompt, str) or not (suffix is None or isinstance(suffix, str)):
            raise GemmaRefError("prompt and suffix must be strings")
        ids, types = prompt_ids(prompt, len(images), self.paligemma, self.tokenizer, suffix)
        return {"input_ids": ids, "token_type_ids": types, "image_features": self.embed_images(images)}

    def prompt_ids(self, prompt: str, images: Sequence = (), *, pan_and_scan: bool | None = None):
        """Token ids of a prompt with its images (all of it the prefix), and the image tokens."""
        if not isinstance(prompt, str):
            given = images is not None and len(images) > 0
            return self._prompt_ids(prompt), self.embed_images(images) if given else None
        _no_pan_and_scan(pan_and_scan)
        inputs = self.processor_inputs(prompt, images)
        return inputs["input_ids"], inputs["image_features"]

    def _generate_batch(self, prompts, **kwargs):
        raise GemmaRefError("PaliGemma: generate takes one prompt with its images; for a batch, "
                            "generate_ids(prompts, image_features=[...]) with prompt_ids' ids and features")

    def _no_chat(self, *args, **kwargs):
        raise GemmaRefError(f"{self.source or 'PaliGemma'}: PaliGemma has no chat format; give it a "
                            "task prompt with images instead (generate \"caption en\" --image FILE)")

    stream_chat = chat_prompt = _no_chat

    # --- the network ---------------------------------------------------------------------

    def forward(self, ids, *, images: Sequence | None = None, token_type_ids=None,
                pan_and_scan: bool | None = None, trace: dict | None = None) -> np.ndarray:
        """Logits for every position: ids [T] -> [T, V], or [B, T] -> [B, T, V]. Stateless.

        images: the images of the <image> tokens in `ids`, in order (row by row); or their
        pixel values [I, 3, S, S]. token_type_ids (as ids): 0 for the prefix (seen both ways),
        1 for the suffix (causal); None: all prefix, as the processor marks a prompt without
        a suffix and as generate reads one (transformers' forward called without
        token_type_ids would be causal throughout; processor_inputs gives them).
        """
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise GemmaRefError(f"forward: ids must be an integer array [T] or [B, T], got {ids.dtype} {ids.shape}")
        ids2 = np.atleast_2d(ids)
        types = np.zeros_like(ids2) if token_type_ids is None else np.atleast_2d(np.asarray(token_type_ids))
        if types.shape != ids2.shape or not np.isin(types, (0, 1)).all():
            raise GemmaRefError(f"forward: token_type_ids must be 0s and 1s shaped as ids {ids.shape}, "
                                f"got {np.shape(token_type_ids)}")
        positions = np.broadcast_to(np.arange(ids2.shape[1]) + self.first_position, ids2.shape)
        has_images = images is not None and len(images)
        rows = (_rows(self.embed_images(images, pan_and_scan=pan_and_scan, trace=trace)) if has_images
                else np.zeros((0, self.config.hidden_size), self.dtype))
        tokens = image_tokens(ids2, positions, types, rows, self.paligemma)
        logits = forward(self.weights, self.config, ids2, positions, images=tokens, n_vocab=self.n_vocab,
                         trace=trace)
        return logits[0] if ids.ndim == 1 else logits

    def _prefill_inputs(self, ids, pos, image_features, audio_features=None) -> list[tuple]:
        """The prompt in one chunk: all of it is the prefix, whose tokens see each other
        both ways (generated tokens are the causal suffix). PaliGemma takes no audio."""
        if audio_features is not None and any(f is not None for f in audio_features):
            self._audio()  # says this model takes no audio
        rows = _image_rows(image_features, len(ids))
        embeds = np.zeros((0, self.config.hidden_size), self.dtype) if rows is None else np.concatenate(rows)
        return [(ids, pos, image_tokens(ids, pos, np.zeros_like(ids), embeds, self.paligemma))]


def _no_pan_and_scan(pan_and_scan) -> None:
    if pan_and_scan:
        raise GemmaRefError("pan_and_scan: Gemma 3 only (PaliGemma resizes each image to its square)")
