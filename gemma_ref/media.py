"""How images and audio enter a prompt: the media half of `gemma_ref.Model`.

A prompt's images and audio clips become soft tokens: each marker in the text
(Gemma 3's <start_of_image>, Gemma 4's <|image|>, the audio token <|audio|>) is expanded
to the block of placeholder ids its processor writes, and the image tower (vision.py,
vision_gemma4.py, vision_gemma4_unified.py) or the audio tower (audio.py) gives the
embeddings that model.forward puts at those placeholders (model.ImageTokens). The
language model never sees pixels or samples. Model (api.py) mixes this class in; its
loading, forward pass and generation are there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from . import audio as audio_lib
from . import vision, vision_gemma4
from .audio import Audio
from .errors import GemmaRefError
from .vision import IMAGE_MARKER, Preprocessing
from .vision_gemma4 import Gemma4VisionConfig


class MediaInputs:
    """Images and audio clips as soft tokens, for a Model with .vision, .preprocessing,
    .audio, .weights, .tokenizer and .config."""

    # --- images (see vision.py) ----------------------------------------------------

    def embed_images(self, images: Sequence, *, pan_and_scan: bool | None = None,
                     trace: dict | None = None) -> np.ndarray | list[np.ndarray]:
        """Soft-token embeddings of images: [n_images, mm_tokens_per_image, hidden].

        Gemma 4: a list of [tokens of that image, hidden] (its images keep their
        aspect ratio, so their token counts differ).

        images: file paths, PIL images or uint8 arrays [H, W, 3]. With pan-and-scan
        (pan_and_scan=True, or the checkpoint's preprocessor_config.json asks for it),
        an image with an extreme aspect ratio is followed by its crops, each counted
        as an image. Or preprocessed pixel values, a float array [I, 3, S, S] (as
        `pixel_values` of transformers' processor, or vision.preprocess); Gemma 4: a
        dict of the processor's `pixel_values` [I, n, 3p^2] and `image_position_ids`
        [I, n, 2] (see vision_gemma4.pad_patches).
        """
        if isinstance(images, dict):
            self._check_images([])
            if set(images) - {"pixel_values", "image_position_ids"} or "pixel_values" not in images:
                raise GemmaRefError("images as a dict: the processor's 'pixel_values' (and, for Gemma 4, "
                                    f"'image_position_ids'), not {sorted(images)}")
            return self.embed_pixels(images["pixel_values"], images.get("image_position_ids"), trace=trace)
        gemma4 = isinstance(self.vision, Gemma4VisionConfig)
        if isinstance(images, np.ndarray) and images.ndim == (3 if gemma4 else 4) and images.dtype.kind == "f":
            return self.embed_pixels(images, trace=trace)
        if gemma4:
            _no_pan_and_scan(pan_and_scan)
            return self._embed_patches([self.vision.preprocess(image, self._preprocessing(), f"image {k + 1}")
                                        for k, image in enumerate(self._check_images(images))], trace)
        pixels, _ = vision.preprocess(self._check_images(images), self._preprocessing(), pan_and_scan)
        return self.embed_pixels(pixels, trace=trace)

    def _embed_patches(self, images: list, trace: dict | None) -> list[np.ndarray]:
        """Gemma 4: per image (patches [P, 3p^2], xy [P, 2]) -> its soft tokens [M, D]; the
        trace holds all images (vision_gemma4.merge_traces)."""
        traces = [{} if trace is not None else None for _ in images]
        out = [self.vision.features(patches, xy, self.weights, t)  # Gemma 4's encoder, or 12B Unified's embedder
               for (patches, xy), t in zip(images, traces)]
        if trace is not None and images:
            n = max(max(len(p) for p, _ in images),
                    vision_gemma4.max_patches(self.preprocessing) if self.preprocessing else 0)
            trace.update(vision_gemma4.merge_traces(traces, n))
        return out

    def embed_pixels(self, pixels, positions=None, *, trace: dict | None = None):
        """Soft-token embeddings of preprocessed pixels [I, 3, S, S] -> [I, M, D].

        Gemma 4: pixel_values [I, n, 3p^2] and their image_position_ids [I, n, 2], as
        transformers' processor pads them -> a list of [M_i, D]."""
        self._check_images([])
        if isinstance(self.vision, Gemma4VisionConfig):
            if positions is None:
                raise GemmaRefError("Gemma 4 pixel values need their image_position_ids (the processor's)")
            return self._embed_patches(vision_gemma4.unpad_patches(pixels, positions, self.vision), trace)
        if positions is not None:
            raise GemmaRefError("image_position_ids go with Gemma 4 pixel values only")
        S = self.vision.image_size
        if np.ndim(pixels) != 4 or np.shape(pixels)[1:] != (self.vision.num_channels, S, S):
            raise GemmaRefError(f"pixel values must be [I, {self.vision.num_channels}, {S}, {S}], "
                                f"got {np.shape(pixels)}")
        return vision.image_features(pixels, self.weights, self.vision, trace)

    def prompt_ids(self, prompt: str, images: Sequence = (), *,
                   pan_and_scan: bool | None = None) -> tuple[list[int], np.ndarray | None]:
        """Token ids of a text prompt with images, and the images' soft-token embeddings.

        Each `<start_of_image>` in the prompt becomes an image block, as
        Gemma3Processor expands it; with images but no marker, the images go
        before the text (as the chat template puts them). Gemma 4: its marker
        `<|image|>` (or `<start_of_image>`) becomes <|image>, n x <|image|>, <image|>,
        as Gemma4Processor expands it.
        """
        marker = self._image_marker()
        if isinstance(prompt, str) and marker != IMAGE_MARKER:
            prompt = prompt.replace(IMAGE_MARKER, marker)
        if not images:
            if self.vision is not None and isinstance(prompt, str) and marker in prompt:
                raise GemmaRefError(f"the prompt has {prompt.count(marker)} {marker} "
                                    "marker(s) but no images were given")
            return self._prompt_ids(prompt), None
        images = self._check_images(images)
        if self.tokenizer is None:
            raise GemmaRefError(f"{self.source}: no tokenizer.model; pass token ids instead")
        if marker not in prompt:
            prompt = marker * len(images) + prompt
        if isinstance(self.vision, Gemma4VisionConfig):
            _no_pan_and_scan(pan_and_scan)
            if prompt.count(marker) != len(images):  # before the (slow) encoder
                raise GemmaRefError(f"the prompt has {prompt.count(marker)} {marker} marker(s) for "
                                    f"{len(images)} image(s); give one image per marker")
            features = self.embed_images(images)
            ids = vision_gemma4.expand_prompt(prompt, [len(f) for f in features], self.vision, marker,
                                              self.tokenizer.encode)
            return ids, features
        pixels, n_crops = vision.preprocess(images, self._preprocessing(), pan_and_scan)
        ids = vision.expand_prompt(prompt, n_crops, self.vision, self.tokenizer.encode)
        return ids, self.embed_pixels(pixels)

    # --- audio (see audio.py) ------------------------------------------------------

    def embed_audio(self, audio, *, trace: dict | None = None) -> list[np.ndarray]:
        """Soft-token embeddings of audio clips: one [tokens of that clip, hidden] each
        (a token per 40 ms, at most 30 s of a clip; 12B Unified: a token per 40 ms, no cap).

        audio: a clip or a list of them, each a file path (a PCM WAV needs nothing more;
        FLAC, MP3, OGG and other rates need the `audio` extra) or (samples, sample_rate)
        with samples [A] or [A, channels]; or the processor's features, a dict of
        `input_features` [I, F, M] and `input_features_mask` [I, F].
        """
        return self._audio().embed(audio, self.weights, trace)

    def _audio(self) -> Audio:
        if self.audio is None:
            why = "its config.json has no audio_config: Gemma 4 E2B/E4B, 12B Unified and Gemma 3n take audio"
            raise GemmaRefError(f"{self.source}: this model takes no audio ({why})")
        return self.audio

    def _audio_marker(self) -> str:
        """What a prompt writes where a clip goes: the audio token's piece (Gemma 4 <|audio|>,
        3n <audio_soft_token>)."""
        i = self.audio.config.audio_token_id
        if self.tokenizer is not None and i < self.tokenizer.vocab_size:
            return self.tokenizer.sp.id_to_piece(i)
        return self.audio.marker

    def prompt_inputs(self, prompt: str, images: Sequence = (), audio: Sequence = (), *,
                      pan_and_scan: bool | None = None):
        """Token ids of a text prompt with images and audio clips, and their soft tokens:
        -> (ids, image features or None, audio features or None).

        Each audio marker (<|audio|>) becomes <|audio>, n x <|audio|>, <audio|>, as
        Gemma4Processor expands it; with clips but no marker, the clips go before the text.
        Images: see prompt_ids.
        """
        if isinstance(audio, (str, Path)) or (isinstance(audio, tuple) and len(audio) == 2
                                              and isinstance(audio[1], (int, np.integer))):
            audio = [audio]
        marker = self._audio_marker() if self.audio is not None else audio_lib.AUDIO_MARKER
        if self.audio is not None and marker != audio_lib.AUDIO_MARKER and isinstance(prompt, str):
            prompt = prompt.replace(audio_lib.AUDIO_MARKER, marker)  # Gemma 4's spelling works too
        if audio is None or not len(audio):
            if self.audio is not None and isinstance(prompt, str) and marker in prompt:
                raise GemmaRefError(f"the prompt has {prompt.count(marker)} {marker} "
                                    "marker(s) but no audio clips were given")
            return (*self.prompt_ids(prompt, images, pan_and_scan=pan_and_scan), None)
        self._audio()
        if self.tokenizer is None:
            raise GemmaRefError(f"{self.source}: no tokenizer.model; pass token ids instead")
        if marker not in prompt:
            prompt = marker * len(audio) + prompt
        if prompt.count(marker) != len(audio):  # before the (slow) tower
            raise GemmaRefError(f"the prompt has {prompt.count(marker)} {marker} marker(s) for "
                                f"{len(audio)} audio clip(s); give one clip per marker")
        clips = self.embed_audio(list(audio))
        blocks = {marker: [self.audio.block(len(f)) for f in clips]}
        features = None
        if images is not None and len(images):
            if not isinstance(self.vision, Gemma4VisionConfig):
                self._check_images(images)
                raise GemmaRefError("images and audio in one prompt: Gemma 4 only")
            image_marker = self._image_marker()
            prompt = prompt.replace(IMAGE_MARKER, image_marker)
            if image_marker not in prompt:
                prompt = image_marker * len(images) + prompt
            features = self.embed_images(images, pan_and_scan=pan_and_scan)
            v = self.vision
            blocks[image_marker] = [[v.boi_token_id] + [v.image_token_id] * len(f) + [v.eoi_token_id]
                                    for f in features]
        prompt = self.audio.wrap(prompt, marker)
        return audio_lib.expand_markers(prompt, blocks, self.tokenizer.encode), features, clips

    def _image_marker(self) -> str:
        """What a prompt writes where an image goes: Gemma 3's <start_of_image>; Gemma 4's
        image token (the tokenizer's piece, <|image|>)."""
        if not isinstance(self.vision, Gemma4VisionConfig):
            return IMAGE_MARKER
        i = self.vision.image_token_id
        if self.tokenizer is not None and i < self.tokenizer.vocab_size:
            return self.tokenizer.sp.id_to_piece(i)
        return vision_gemma4.IMAGE_MARKER

    def _check_images(self, images) -> list:
        if self.vision is None:
            why = ("gemma-ref runs the language model of Gemma 3n only (its vision tower is not "
                   "implemented)" if self.config.model_type.startswith("gemma3n")
                   else "its config.json has no vision_config: a text-only checkpoint")
            raise GemmaRefError(f"{self.source}: this model takes no images ({why})")
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            images = [images]
        return list(images)

    def _preprocessing(self) -> Preprocessing:
        if self.preprocessing is None:
            raise GemmaRefError(f"{self.source}: images need the checkpoint's preprocessor_config.json")
        return self.preprocessing


def _no_pan_and_scan(pan_and_scan) -> None:
    """Gemma 4 resizes each image to its token budget: pan-and-scan crops are Gemma 3's."""
    if pan_and_scan:
        raise GemmaRefError("pan_and_scan: Gemma 3 only (Gemma 4 keeps each image's aspect ratio "
                            "within its soft-token budget instead)")


def _rows(features) -> np.ndarray:
    """Soft-token embeddings as rows [n, D]: from [I, M, D] (Gemma 3) or a list of [M_i, D]."""
    if isinstance(features, np.ndarray):
        return features.reshape(-1, features.shape[-1])
    return np.concatenate(list(features))


def _image_rows(features, B: int):
    """Per row of a batch, its images' soft-token embeddings as rows [n, D]; None without images."""
    if features is None or all(f is None for f in features):
        return None
    if len(features) != B:
        raise GemmaRefError(f"image_features: {len(features)} entries for {B} prompts")
    D = next(_rows(f).shape[-1] for f in features if f is not None)
    return [np.zeros((0, D), np.float32) if f is None else _rows(f) for f in features]
