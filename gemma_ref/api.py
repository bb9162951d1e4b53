"""`gemma_ref.Model`: load a checkpoint, run it, generate text.

Layered like mlx-lm: `generate_ids` (a batch of token-id sequences -> new ids, one
step at a time) -> `stream` (text pieces) -> `generate` (the whole answer).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import chat_template as chat_templates
from . import audio as audio_lib
from . import families, files, hub, vision
from .audio import Audio
from .config import GemmaConfig
from .config_json import load_json
from .errors import GemmaRefError
from .kv_cache import new_cache
from .loader import gguf_as_checkpoint, load_safetensors_checkpoint
from .media import MediaInputs, _image_rows, _rows
from .model import forward
from .parallel import pipelined, prefill_chunk_size
from .sampling import SamplingParams, check_generate_args, decode_steps
from .tokenizer import END_OF_TURN, Tokenizer, chat_audio, chat_images
from .vision import IMAGE_MARKER, Preprocessing, VisionConfig
from .vision_gemma4 import Gemma4Preprocessing, Gemma4VisionConfig
from .weights import Weights

PREFILL_CHUNK = 512  # prompt tokens per forward call: bounds the [T, S] score matrices
MAX_NEW_TOKENS = 128  # the default of generate/stream/chat, and of the CLI's --max-new-tokens
_DTYPES = {"float32": np.float32, "float64": np.float64}


def check_dtype(dtype) -> np.dtype:
    """The compute dtype, float32 or float64; anything else is a GemmaRefError."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or str(dt) not in _DTYPES:
        raise GemmaRefError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
    return dt


def check_messages(messages) -> None:
    """A conversation is a list of {"role": str, "content": ...} dicts; say what is wrong."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise GemmaRefError(f"chat: messages must be a non-empty list of {{'role': ..., "
                            f"'content': ...}} dicts, not {type(messages).__name__} "
                            f"{str(messages)[:40]!r}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise GemmaRefError(f"chat: message {i} must be a dict with 'role' and 'content', "
                                f"not {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise GemmaRefError(f"chat: message {i} has no {key!r}")
        if not isinstance(m["role"], str) or not isinstance(m["content"], (str, list)):
            raise GemmaRefError(f"chat: message {i}: 'role' must be a string and 'content' text")


class Model(MediaInputs, families.Refusals):
    """A Gemma model: config + weights (+ tokenizer when the checkpoint has one).

    Images and audio clips in prompts: media.py's MediaInputs (embed_images,
    embed_audio, prompt_inputs, ...)."""

    first_position = 0  # RoPE position of a prompt's first token (PaliGemma counts from 1)

    def __init__(self, config: GemmaConfig, weights: dict, tokenizer: Tokenizer | None = None,
                 *, source: str = "", dtype="float32", instruction_tuned: bool | None = None,
                 stop_ids: Sequence[int] = (), vision: VisionConfig | Gemma4VisionConfig | None = None,
                 preprocessing: Preprocessing | Gemma4Preprocessing | None = None, chat_template=None,
                 audio: Audio | None = None):
        self.config, self.tokenizer, self.source = config, tokenizer, source
        self.audio = audio  # Gemma 4 E2B/E4B: the audio tower's seam (audio.Audio); else None
        # Image-text checkpoints (Gemma 3 4B+, Gemma 4): the vision encoder's config, and
        # the processor's preprocessor_config.json; None for text-only models.
        self.vision, self.preprocessing = vision, preprocessing
        self.checkpoint = None  # the directory from_pretrained read, if any
        self.dtype = check_dtype(dtype)
        self._warned_base_chat = False  # chat on a base model: warned once per model
        # The checkpoint's chat template (from_pretrained finds it), else Google's for this generation
        self.chat_template = chat_template or chat_templates.builtin(
            config.model_type, chat_templates.special_tokens({}, tokenizer))
        self.weights = self._hold_weights(weights)
        self.instruction_tuned = (hub.is_instruction_tuned(source) if instruction_tuned is None
                                  else instruction_tuned)
        # The head covers the tokenizer's vocabulary; rows beyond it are padding.
        self.n_vocab = tokenizer.vocab_size if tokenizer else config.vocab_size
        if self.n_vocab > config.vocab_size:
            raise GemmaRefError(f"{source}: tokenizer has {self.n_vocab} tokens, the embedding "
                                f"table only {config.vocab_size}")
        eos = config.eos_token_id
        self._default_stop = set((eos,) if isinstance(eos, int) else eos) | set(stop_ids)
        # The token that ends a chat turn: this generation's spelling first (Gemma 4's <turn|>,
        # else <end_of_turn>), in case a vocabulary has both
        spellings = END_OF_TURN[::-1] if config.model_type.startswith("gemma4") else END_OF_TURN
        self.end_of_turn_id = next((i for i in map(tokenizer.piece_id, spellings) if i is not None),
                                   None) if tokenizer else None
        if tokenizer:
            self._default_stop.add(tokenizer.eos_id)
            if self.instruction_tuned and self.end_of_turn_id is not None:
                self._default_stop.add(self.end_of_turn_id)

    # --- loading ---------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, dtype="float32",
                        max_memory: int | None = None, progress: bool = True,
                        cache_dir: str | Path | None = None) -> "Model":
        """Load from a directory, a .gguf file, a Hugging Face repo id or an alias.

        With no source, the default model (Gemma 3 270M, from the `demo` extra).
        max_memory: bytes of RAM for the weights: all float32 if they fit, else bf16/f16
        matrices as stored (widened block by block as used), else the rest stays on
        disk, memory-mapped (loader.plan_tiers). Default: 85% of the available memory.
        A .gguf is converted once to a float32 checkpoint in gemma-ref's cache
        ($XDG_CACHE_HOME/gemma_ref/gguf/, default ~/.cache/gemma_ref/gguf/);
        `model.checkpoint` is the directory actually read.
        """
        from . import default_model

        check_dtype(dtype)  # before the slow part
        if max_memory is not None and not (isinstance(max_memory, (int, np.integer))
                                           and not isinstance(max_memory, bool) and max_memory >= 0):
            raise GemmaRefError(f"max_memory must be a number of bytes >= 0, not {max_memory!r}")
        if source is None or str(source) == default_model.ALIAS:
            source = default_model.path(progress=progress)
        path = hub.resolve(source, cache_dir)
        gguf_file = None
        if path.is_file() and path.suffix == ".gguf":
            gguf_file, path = path, gguf_as_checkpoint(path, progress)
        elif not path.is_dir():  # a FIFO or a device is named as such; a file is not a checkpoint
            files.check_file(path, "checkpoint directory or .gguf file")
            raise GemmaRefError(f"{path}: expected a checkpoint directory or a .gguf file")
        family = families.family_of(_raw_config(path), path)
        if family is not None:  # another architecture: its own module (see families.py)
            return families.load_class(family).from_checkpoint(
                path, source=str(source), dtype=dtype, max_memory=max_memory, progress=progress)
        config = GemmaConfig.from_json(path / "config.json")
        raw = load_json(path / "config.json")
        vision = (VisionConfig.from_dict(raw, str(path / "config.json"))
                  or Gemma4VisionConfig.from_dict(raw, str(path / "config.json")))
        audio = Audio.from_checkpoint(raw, path)  # None without an audio tower
        weights = load_safetensors_checkpoint(path, config, max_memory, progress, vision,
                                              getattr(vision, "key_prefixes", None),
                                              audio.config if audio else None)
        tokenizer = Tokenizer.from_checkpoint(path)  # tokenizer.model, else tokenizer.json
        pre_file = path / "preprocessor_config.json"
        preprocessing = None
        if isinstance(vision, VisionConfig) and pre_file.exists():
            preprocessing = Preprocessing.from_json(pre_file)
        elif vision is not None and (pre_file.exists() or (path / "processor_config.json").exists()):
            preprocessing = Gemma4Preprocessing.from_dir(path)
        template = chat_templates.load(path, tokenizer, config.model_type, gguf_file)
        model = cls(config, weights, tokenizer, source=str(source), dtype=dtype,
                    stop_ids=_generation_config_eos(path), vision=vision,
                    preprocessing=preprocessing, chat_template=template, audio=audio)
        model.checkpoint = path
        return model

    # --- the network -------------------------------------------------------------

    # The two hooks another architecture's Model overrides (families.py): how its weights
    # are held, and its network; generation, chat and sampling stay as they are.
    def _hold_weights(self, weights: dict) -> Weights:
        """The weights as the network reads them: q/k/v and gate/up stacked once, for decoding."""
        held = Weights(weights, self.dtype)
        held.fuse(self.config)
        return held

    def _network(self, ids, positions=None, cache=None, **kw) -> np.ndarray:
        """model.forward on this model: ids [B, T] -> logits [B, T, V] (cache: new_cache's)."""
        return forward(self.weights, self.config, ids, positions, cache, n_vocab=self.n_vocab, **kw)

    def forward(self, ids, *, images: Sequence | None = None, audio=None, pan_and_scan: bool | None = None,
                trace: dict | None = None) -> np.ndarray:
        """Logits for every position: ids [T] -> [T, V], or [B, T] -> [B, T, V]. Stateless.

        images: the images of the image blocks in `ids` (already expanded: see
        `prompt_ids`), in order of appearance (row by row for a batch); see embed_images.
        audio: the clips of the audio blocks in `ids` (see prompt_inputs), likewise; see
        embed_audio.
        """
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise GemmaRefError(f"forward: ids must be an integer array [T] or [B, T], got "
                                f"{ids.dtype} {ids.shape}")
        ids2 = np.atleast_2d(ids)
        image_tokens = None
        if images is not None and len(images):
            rows = _rows(self.embed_images(images, pan_and_scan=pan_and_scan, trace=trace))
            image_tokens = vision.image_tokens(ids2, np.broadcast_to(np.arange(ids2.shape[1]), ids2.shape),
                                               rows, self.vision)
        if audio is not None and len(audio):  # audio soft tokens, placed as image ones are
            rows = _rows(self.embed_audio(audio, trace=trace))
            image_tokens = audio_lib.merge(image_tokens, self._audio().tokens(ids2, rows, self.weights))
        logits = self._network(ids2, images=image_tokens, trace=trace)
        return logits[0] if ids.ndim == 1 else logits

    def new_cache(self, batch: int, max_len: int):
        """An empty KV cache (see kv_cache.new_cache)."""
        return new_cache(self.config, batch, max_len, self.dtype)

    # --- generation --------------------------------------------------------------

    def generate_ids(self, prompts: list[list[int]], *, max_new_tokens: int = MAX_NEW_TOKENS,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = 0,
                     stop_ids: Sequence[int] | None = None,
                     image_features: Sequence | None = None, audio_features: Sequence | None = None,
                     stats: dict | None = None) -> Iterator[list[int | None]]:
        """Decode a batch of prompts together; yield, per step, one new id per row (None once
        that row has stopped). Rows are left-padded; each row stops on its own.

        image_features: per row, the soft-token embeddings [I, M, D] of its images (see
        prompt_ids), or None. audio_features: likewise its clips' (see prompt_inputs).
        stats: a dict to fill with prompt_tokens, prompt_seconds (prefill and the first
        token), new_tokens, decode_steps and generation_seconds (the steps after the
        first: one forward pass of one token per row each), as they happen.
        The arguments are checked when it is called, before the first step is asked for
        (so a caller that prints the prompt first prints nothing before an error)."""
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
        check_generate_args(prompts, max_new_tokens, seed)
        P = max(len(p) for p in prompts)
        if P + max_new_tokens > self.config.max_position_embeddings:
            raise GemmaRefError(
                f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {self.config.max_position_embeddings} tokens")
        stop = self._default_stop if stop_ids is None else set(stop_ids)
        return self._decode(prompts, max_new_tokens, params, np.random.default_rng(seed), stop,
                            image_features, audio_features, {} if stats is None else stats)

    def _decode(self, prompts, max_new_tokens, params, rng, stop, image_features, audio_features, stats):
        """generate_ids' steps, its arguments checked."""
        B, P = len(prompts), max(len(p) for p in prompts)
        max_len = P + max_new_tokens
        # Left padding: row b's tokens sit at the end; padding has position -1.
        ids = np.full((B, P), self.config.pad_token_id, np.int64)
        pos = np.full((B, P), -1, np.int64)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):] = p
            pos[b, P - len(p):] = np.arange(len(p)) + self.first_position
        stats.update(prompt_tokens=sum(len(p) for p in prompts), new_tokens=0, decode_steps=0,
                     prompt_seconds=0.0, generation_seconds=0.0)
        t0 = time.perf_counter()
        cache = self.new_cache(B, max_len + self.first_position)
        chunks = self._prefill_inputs(ids, pos, image_features, audio_features)

        def prefill(chunk, chunk_pos, images):  # into the shared cache
            return self._network(chunk, chunk_pos, cache, images=images, last_only=True)

        # The chunks in order, or side by side on all threads (parallel.pipelined)
        logits = pipelined(prefill, chunks, self.config.num_hidden_layers)[-1]
        next_pos = np.array([len(p) + self.first_position for p in prompts], np.int64)

        def next_logits(step, done):  # each row's new token at its next position (-1: stopped)
            new = np.array([[t if t is not None else self.config.pad_token_id] for t in step])
            step_pos = np.where(done, -1, next_pos)[:, None]
            next_pos[:] += 1
            return self._network(new, step_pos, cache, last_only=True)

        yield from decode_steps(logits, next_logits, max_new_tokens, rng, params, [list(p) for p in prompts],
                                stop, stats, t0)

    def _prefill_inputs(self, ids, pos, image_features, audio_features=None) -> list[tuple]:
        """The prompt's chunks for the prefill: (ids, positions, ImageTokens or None) each.

        ids, pos [B, P] (left-padded); image_features, audio_features: as generate_ids's. A
        chunk never ends inside an image (its tokens attend to each other)."""
        rows = _image_rows(image_features, len(ids))  # per row: soft-token embeddings, in order
        sound = _image_rows(audio_features, len(ids))  # per row: its clips' soft tokens, in order
        if sound is not None:
            self._audio()
        chunks = []
        for start, end in _prefill_chunks(ids, self.vision, prefill_chunk_size(ids.shape[1], PREFILL_CHUNK)):
            chunk, chunk_pos = ids[:, start:end], pos[:, start:end]
            images = None
            if rows is not None:  # this chunk's soft tokens take the next rows of each row's images
                take = [int(n) for n in (chunk == self.vision.image_token_index).sum(axis=1)]
                embeds = np.concatenate([r[:n] for r, n in zip(rows, take)])
                rows = [r[n:] for r, n in zip(rows, take)]
                images = vision.image_tokens(chunk, chunk_pos, embeds, self.vision)
            if sound is not None:  # and the next rows of each row's clips (causal: any split will do)
                take = [int(n) for n in (chunk == self.audio.config.audio_token_id).sum(axis=1)]
                embeds = np.concatenate([r[:n] for r, n in zip(sound, take)])
                sound = [r[n:] for r, n in zip(sound, take)]
                images = audio_lib.merge(images, self.audio.tokens(chunk, embeds, self.weights))
            chunks.append((chunk, chunk_pos, images))
        if rows is not None and any(len(r) for r in rows):
            raise GemmaRefError("the prompt has fewer image soft tokens than its images give")
        if sound is not None and any(len(r) for r in sound):
            raise GemmaRefError("the prompt has fewer audio soft tokens than its clips give")
        return chunks

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise GemmaRefError(f"{self.source}: no tokenizer.model; pass token ids instead")
            return self.tokenizer.encode(prompt)
        try:
            ids = None if isinstance(prompt, (bytes, bytearray)) else list(prompt)
        except TypeError:
            ids = None
        if ids is None or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool)
                                  for i in ids):
            raise GemmaRefError(f"prompt must be a str or a sequence of token ids (integers), not "
                                f"{str(prompt)[:40]!r}")
        ids = [int(i) for i in ids]
        # Image tokens may lie past the tokenizer's vocabulary (<image_soft_token> = 262144).
        extra = () if self.vision is None else (self.vision.image_token_index,
                                                self.vision.boi_token_index, self.vision.eoi_token_index)
        extra += () if self.audio is None else self.audio.token_ids
        if any((i < 0 or i >= self.n_vocab) and i not in extra for i in ids):
            raise GemmaRefError(f"prompt token ids must be in [0, {self.n_vocab})")
        return ids

    def _stop(self, stop) -> tuple[set[int] | None, list[str]]:
        """Split `stop` into token ids and strings; None keeps the defaults."""
        if stop is None:
            return None, []
        stop = [stop] if isinstance(stop, (str, int)) else list(stop)
        for s in stop:
            if not isinstance(s, (str, int, np.integer)) or isinstance(s, bool):
                raise GemmaRefError(f"stop: expected token ids and/or strings, got {s!r}")
            if s == "":
                raise GemmaRefError("stop: an empty stop string would end generation before "
                                    "its first token")
            if not isinstance(s, str) and not 0 <= s < self.n_vocab:
                raise GemmaRefError(f"stop: token id {s} is not in [0, {self.n_vocab})")
        return {s for s in stop if isinstance(s, (int, np.integer))}, [s for s in stop if isinstance(s, str)]

    def stream(self, prompt: str | Sequence[int], *, images: Sequence = (), audio: Sequence = (),
               pan_and_scan: bool | None = None, stop=None, **sampling) -> Iterator:
        """Yield the continuation as it is decoded: text pieces for a text prompt,
        token ids for an id prompt. stop: None (eos, and end-of-turn for -it models),
        or a list of token ids and/or strings that end generation.
        images, audio: for a text prompt, see prompt_inputs; for ids, as forward.
        stats={} collects timings (see generate_ids).
        assistant: a Gemma 4 assistant (an MTP drafter, loaded with from_pretrained) to
        decode speculatively: the same greedy tokens, fewer target passes (assistant.py);
        draft_tokens: drafts per round (default: the assistant's num_assistant_tokens)."""
        stop_ids, stop_strings = self._stop(stop)
        assistant, draft_tokens = sampling.pop("assistant", None), sampling.pop("draft_tokens", None)
        if assistant is None and draft_tokens is not None:
            raise GemmaRefError("draft_tokens goes with assistant=...")
        # The prompt and its images are prepared now (a bad image raises here); the
        # continuation is decoded as it is iterated.
        has = lambda x: x is not None and len(x) > 0  # noqa: E731
        if not isinstance(prompt, str) and (has(images) or has(audio)):
            ids = self._prompt_ids(prompt)
            features = self.embed_images(images, pan_and_scan=pan_and_scan) if has(images) else None
            clips = self.embed_audio(audio) if has(audio) else None
        else:
            ids, features, clips = self.prompt_inputs(prompt, images, audio, pan_and_scan=pan_and_scan)
        if assistant is not None:  # speculative decoding: the assistant's own loop (assistant.py)
            if features is not None or clips is not None:
                raise GemmaRefError("generate with an assistant: images and audio are not supported")
            steps = families.speculative(assistant).generate_ids(self, ids, stop_ids=stop_ids,
                                                                 draft_tokens=draft_tokens, **sampling)
        else:
            steps = self.generate_ids([ids], stop_ids=stop_ids, image_features=[features],
                                      audio_features=[clips], **sampling)
        if not isinstance(prompt, str):
            return (t for (t,) in steps)
        return self._text_pieces(steps, stop_strings)

    def _text_pieces(self, steps, stop_strings) -> Iterator[str]:
        decoder, text, held = self.tokenizer.stream_decoder(), "", 0
        for (t,) in steps:
            text += decoder.push(t)
            hit = min((text.find(s) for s in stop_strings if s in text), default=-1)
            if hit >= 0:
                if hit > held:
                    yield text[held:hit]
                return
            # Hold back a tail that could be the start of a stop string.
            safe = len(text) - max((len(s) - 1 for s in stop_strings), default=0)
            if safe > held:
                yield text[held:safe]
                held = safe
        text += decoder.flush()
        if len(text) > held:
            yield text[held:]

    def generate(self, prompt, **kwargs):
        """The continuation of `prompt`.

        prompt: a string (returns the new text), a list of token ids (returns new ids),
        or a list of either (a batch: returns a list). Keyword arguments: max_new_tokens,
        temperature (0 = greedy), top_k, top_p, min_p, repetition_penalty, seed, stop;
        images (and pan_and_scan) and audio for one prompt, as `stream`; assistant (and
        draft_tokens) to decode speculatively with a Gemma 4 assistant, as `stream`.
        """
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (str, list, tuple, np.ndarray)):
            for media in ("images", "audio"):
                if kwargs.get(media):
                    raise GemmaRefError(f"generate: {media} go with one prompt at a time, not a batch")
                kwargs.pop(media, None)
            return self._generate_batch(list(prompt), **kwargs)
        pieces = list(self.stream(prompt, **kwargs))
        return "".join(pieces) if isinstance(prompt, str) else pieces

    def _generate_batch(self, prompts, *, stop=None, **sampling):
        stop_ids, stop_strings = self._stop(stop)
        if stop_strings or sampling.get("assistant") is not None:  # one prompt at a time
            return [self.generate(p, stop=stop, **sampling) for p in prompts]
        ids = [self._prompt_ids(p) for p in prompts]
        out = [[] for _ in prompts]
        for step in self.generate_ids(ids, stop_ids=stop_ids, **sampling):
            for b, t in enumerate(step):
                if t is not None:
                    out[b].append(t)
        return [self.tokenizer.decode(o) if isinstance(p, str) else o for p, o in zip(prompts, out)]

    def chat_prompt(self, messages: list[dict], add_generation_prompt: bool = True, tools=None,
                    **template_kwargs) -> str:
        """The conversation rendered by the checkpoint's chat template: the text transformers'
        `apply_chat_template(messages, tokenize=False, add_generation_prompt=..., tools=...)`
        returns. Extra keywords reach the template (e.g. enable_thinking for Gemma 4)."""
        return self.chat_template.render(messages, add_generation_prompt=add_generation_prompt,
                                         tools=tools, **template_kwargs)

    def chat(self, messages: list[dict], **kwargs) -> str:
        """The model's reply to a conversation [{"role": "user", "content": ...}, ...].

        content: a string, or a list of parts {"type": "text", "text": ...} and
        {"type": "image", "image": path, PIL image or uint8 array} and {"type": "audio",
        "audio": path or (samples, sample_rate)}, as in transformers.
        tools: for templates that take them; chat_template_kwargs: more variables for the
        template (e.g. {"enable_thinking": True} for Gemma 4), as vLLM's and llama.cpp's;
        the other keywords are generate's."""
        return "".join(self.stream_chat(messages, **kwargs))

    def stream_chat(self, messages: list[dict], *, tools=None, chat_template_kwargs: dict | None = None,
                    **kwargs) -> Iterator[str]:
        """The reply, as text pieces (see chat). Warns once, on stderr, on a base model."""
        check_messages(messages)
        if self.tokenizer is None:
            raise GemmaRefError(f"{self.source}: chat needs a tokenizer")
        if chat_template_kwargs is not None and not (isinstance(chat_template_kwargs, dict) and all(
                isinstance(k, str) for k in chat_template_kwargs)):
            raise GemmaRefError(f"chat_template_kwargs must be a dict of template variables, not "
                                f"{str(chat_template_kwargs)[:40]!r}")
        if {"messages", "tools"} & set(chat_template_kwargs or {}):
            raise GemmaRefError("chat_template_kwargs: give messages and tools as chat's own arguments")
        prompt = self.chat_prompt(messages, tools=tools, **(chat_template_kwargs or {}))
        if not self.instruction_tuned and not self._warned_base_chat:
            self._warned_base_chat = True
            print(f"gemma-ref: warning: {self.source or 'this model'} is a base model, not "
                  f"instruction-tuned: it continues text and will not follow the chat; for chat "
                  f"use an instruction-tuned (-it) model, e.g. "
                  f"{hub.chat_suggestion(self.source, self.config.model_type)}", file=sys.stderr)
        if kwargs.get("stop") is None and self.end_of_turn_id is not None:
            kwargs["stop"] = sorted(self._default_stop | {self.end_of_turn_id})
        # Image parts become image markers in the rendered prompt, expanded by stream.
        images = chat_images(messages)
        if images and not any(m in prompt for m in (IMAGE_MARKER, self._image_marker())):
            self._check_images(images)  # a text-only model says so first
            raise GemmaRefError(f"chat: the chat template ({self.chat_template.source}) wrote no image "
                                f"marker for the conversation's {len(images)} image part(s)")
        clips = chat_audio(messages)
        if clips and self._audio() and self._audio_marker() not in prompt:
            raise GemmaRefError(f"chat: the chat template ({self.chat_template.source}) wrote no audio "
                                f"marker for the conversation's {len(clips)} audio part(s)")
        if clips:  # only models with an audio path take the argument
            kwargs["audio"] = clips
        return self.stream(prompt, images=images, **kwargs)

    # --- scoring (see scoring.py) ---------------------------------------------------

    def logprobs(self, ids) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t = 1..T-1: ids [T] -> [T-1] (float64)."""
        from .scoring import logprobs

        return logprobs(self, ids)

    def score(self, context: str | Sequence[int], continuations: Sequence) -> list[dict]:
        """Log-likelihood of each continuation after `context` (multiple-choice evaluation)."""
        from .scoring import score

        return score(self, context, continuations)

    def embed(self, texts, **kwargs):
        """Sentence embeddings come from an embedding model (embedding.py), not this one."""
        raise GemmaRefError(f"{self.source or 'this model'} is a text-generation model, not an embedding "
                            f"model: load one such as embeddinggemma-300m (docs/EMBEDDINGS.md)")

    def __repr__(self):
        c = self.config
        return (f"Model({self.source!r}, {c.model_type}, {c.num_parameters / 1e6:.0f}M params, "
                f"{c.num_hidden_layers} layers, dtype={self.dtype})")


def _prefill_chunks(ids, vision_config, size: int) -> list[tuple[int, int]]:
    """[start, end) of the prefill's chunks of about `size` tokens; a chunk that would
    end inside an image ends after it (an image's tokens attend to each other)."""
    T = ids.shape[1]
    soft = ((ids == vision_config.image_token_index).any(axis=0) if vision_config is not None
            else np.zeros(T, bool))
    chunks, start = [], 0
    while start < T:
        end = min(start + size, T)
        while end < T and soft[end - 1] and soft[end]:
            end += 1
        chunks.append((start, end))
        start = end
    return chunks


def _raw_config(path: Path) -> dict:
    """config.json as a dict ({} if it is missing or not JSON: GemmaConfig.from_json says why)."""
    try:
        raw = json.loads(files.read_bytes(path / "config.json"))
    except (GemmaRefError, ValueError):
        return {}
    return raw if isinstance(raw, dict) else {}


def _generation_config_eos(path: Path) -> list[int]:
    """eos ids listed in generation_config.json (instruction-tuned repos add end-of-turn)."""
    f = path / "generation_config.json"
    if not f.exists():
        return []
    try:
        eos = json.loads(files.read_bytes(f)).get("eos_token_id", [])
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GemmaRefError(f"{f}: not valid JSON") from None
    return [eos] if isinstance(eos, int) else list(eos or [])
