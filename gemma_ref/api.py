"""`gemma_ref.Model`: load a checkpoint, run it, generate text.

Layered like mlx-lm: `generate_ids` (a batch of token-id sequences -> new ids, one
step at a time) -> `stream` (text pieces) -> `generate` (the whole answer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import hub
from .config import GemmaConfig
from .errors import GemmaRefError
from .loader import gguf_as_checkpoint, load_safetensors_checkpoint
from .model import Weights, forward, new_cache
from .sampling import SamplingParams, sample
from .tokenizer import Tokenizer, chat_prompt

PREFILL_CHUNK = 512  # prompt tokens per forward call: bounds the [T, S] score matrices
_DTYPES = {"float32": np.float32, "float64": np.float64}


class Model:
    """A Gemma model: config + weights (+ tokenizer when the checkpoint has one)."""

    def __init__(self, config: GemmaConfig, weights: dict, tokenizer: Tokenizer | None = None,
                 *, source: str = "", dtype="float32", instruction_tuned: bool | None = None,
                 stop_ids: Sequence[int] = ()):
        if str(np.dtype(dtype)) not in _DTYPES:
            raise GemmaRefError(f"dtype must be one of {', '.join(_DTYPES)}, not {dtype!r}")
        self.config, self.tokenizer, self.source = config, tokenizer, source
        self.checkpoint = None  # the directory from_pretrained read, if any
        self.dtype = np.dtype(dtype)
        self.weights = Weights(weights, self.dtype)
        self.instruction_tuned = (hub.is_instruction_tuned(source) if instruction_tuned is None
                                  else instruction_tuned)
        # The head covers the tokenizer's vocabulary; rows beyond it are padding.
        self.n_vocab = tokenizer.vocab_size if tokenizer else config.vocab_size
        if self.n_vocab > config.vocab_size:
            raise GemmaRefError(f"{source}: tokenizer has {self.n_vocab} tokens, the embedding "
                                f"table only {config.vocab_size}")
        eos = config.eos_token_id
        self._default_stop = set((eos,) if isinstance(eos, int) else eos) | set(stop_ids)
        if tokenizer:
            self._default_stop.add(tokenizer.eos_id)
            if self.instruction_tuned and tokenizer.end_of_turn_id is not None:
                self._default_stop.add(tokenizer.end_of_turn_id)

    # --- loading ---------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, *, dtype="float32",
                        max_memory: int | None = None, progress: bool = True,
                        cache_dir: str | Path | None = None) -> "Model":
        """Load from a directory, a .gguf file, a Hugging Face repo id or an alias.

        With no source, the default model (Gemma 3 270M, from the `demo` extra).
        max_memory: bytes of float32 weights to hold in RAM; the rest stay on disk
        and are read (from the page cache) and widened as each layer uses them.
        Default: from the machine (loader.default_max_memory).
        A .gguf is converted once to a float32 checkpoint in gemma-ref's cache
        ($XDG_CACHE_HOME/gemma_ref/gguf/, default ~/.cache/gemma_ref/gguf/);
        `model.checkpoint` is the directory actually read.
        """
        from . import default_model

        if source is None or str(source) == default_model.ALIAS:
            source = default_model.path(progress=progress)
        path = hub.resolve(source, cache_dir)
        if path.is_file() and path.suffix == ".gguf":
            path = gguf_as_checkpoint(path, progress)
        elif path.is_file():
            raise GemmaRefError(f"{path}: expected a checkpoint directory or a .gguf file")
        config = GemmaConfig.from_json(path / "config.json")
        weights = load_safetensors_checkpoint(path, config, max_memory, progress)
        tokenizer = Tokenizer.from_checkpoint(path)  # tokenizer.model, else tokenizer.json
        model = cls(config, weights, tokenizer, source=str(source), dtype=dtype,
                    stop_ids=_generation_config_eos(path))
        model.checkpoint = path
        return model

    # --- the network -------------------------------------------------------------

    def forward(self, ids, *, trace: dict | None = None) -> np.ndarray:
        """Logits for every position: ids [T] -> [T, V], or [B, T] -> [B, T, V]. Stateless."""
        ids = np.asarray(ids)
        if ids.ndim not in (1, 2) or not np.issubdtype(ids.dtype, np.integer):
            raise GemmaRefError(f"forward: ids must be an integer array [T] or [B, T], got "
                                f"{ids.dtype} {ids.shape}")
        logits = forward(self.weights, self.config, np.atleast_2d(ids), n_vocab=self.n_vocab,
                         trace=trace)
        return logits[0] if ids.ndim == 1 else logits

    def new_cache(self, batch: int, max_len: int):
        """An empty KV cache (see model.new_cache)."""
        return new_cache(self.config, batch, max_len, self.dtype)

    # --- generation --------------------------------------------------------------

    def generate_ids(self, prompts: list[list[int]], *, max_new_tokens: int = 256,
                     temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                     min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = 0,
                     stop_ids: Sequence[int] | None = None) -> Iterator[list[int | None]]:
        """Decode a batch of prompts together; yield, per step, one new id per row (None once
        that row has stopped). Rows are left-padded; each row stops on its own."""
        params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty)
        if max_new_tokens < 0:
            raise GemmaRefError("max_new_tokens must be >= 0")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise GemmaRefError("generate: empty prompt")
        stop = self._default_stop if stop_ids is None else set(stop_ids)
        rng = np.random.default_rng(seed)
        B, P = len(prompts), max(len(p) for p in prompts)
        max_len = P + max_new_tokens
        if max_len > self.config.max_position_embeddings:
            raise GemmaRefError(
                f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                f"context of {self.config.max_position_embeddings} tokens")
        # Left padding: row b's tokens sit at the end; padding has position -1.
        ids = np.full((B, P), self.config.pad_token_id, np.int64)
        pos = np.full((B, P), -1, np.int64)
        for b, p in enumerate(prompts):
            ids[b, P - len(p):] = p
            pos[b, P - len(p):] = np.arange(len(p))
        cache = self.new_cache(B, max_len)
        for start in range(0, P, PREFILL_CHUNK):
            logits = forward(self.weights, self.config, ids[:, start:start + PREFILL_CHUNK],
                             pos[:, start:start + PREFILL_CHUNK], cache, last_only=True,
                             n_vocab=self.n_vocab)
        seen = [list(p) for p in prompts]
        next_pos = np.array([len(p) for p in prompts], np.int64)
        done = np.zeros(B, bool)
        for _ in range(max_new_tokens):
            step = []
            for b in range(B):
                if done[b]:
                    step.append(None)
                    continue
                t = sample(logits[b, -1], rng, params, seen[b] if repetition_penalty != 1 else ())
                seen[b].append(t)
                done[b] = t in stop
                step.append(None if done[b] else t)
            if all(t is None for t in step):
                return
            yield step
            new = np.array([[t if t is not None else self.config.pad_token_id] for t in step])
            step_pos = np.where(done, -1, next_pos)[:, None]
            next_pos += 1
            logits = forward(self.weights, self.config, new, step_pos, cache, last_only=True,
                             n_vocab=self.n_vocab)

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise GemmaRefError(f"{self.source}: no tokenizer.model; pass token ids instead")
            return self.tokenizer.encode(prompt)
        ids = [int(i) for i in prompt]
        if any(i < 0 or i >= self.n_vocab for i in ids):
            raise GemmaRefError(f"prompt token ids must be in [0, {self.n_vocab})")
        return ids

    def _stop(self, stop) -> tuple[set[int] | None, list[str]]:
        """Split `stop` into token ids and strings; None keeps the defaults."""
        if stop is None:
            return None, []
        stop = [stop] if isinstance(stop, (str, int)) else list(stop)
        return {s for s in stop if isinstance(s, (int, np.integer))}, [s for s in stop if isinstance(s, str)]

    def stream(self, prompt: str | Sequence[int], *, stop=None, **sampling) -> Iterator:
        """Yield the continuation as it is decoded: text pieces for a text prompt,
        token ids for an id prompt. stop: None (eos, and end-of-turn for -it models),
        or a list of token ids and/or strings that end generation."""
        stop_ids, stop_strings = self._stop(stop)
        ids_in = not isinstance(prompt, str)
        steps = self.generate_ids([self._prompt_ids(prompt)], stop_ids=stop_ids, **sampling)
        if ids_in:
            for (t,) in steps:
                yield t
            return
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
        temperature (0 = greedy), top_k, top_p, min_p, repetition_penalty, seed, stop.
        """
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], (str, list, tuple, np.ndarray)):
            return self._generate_batch(list(prompt), **kwargs)
        pieces = list(self.stream(prompt, **kwargs))
        return "".join(pieces) if isinstance(prompt, str) else pieces

    def _generate_batch(self, prompts, *, stop=None, **sampling):
        stop_ids, stop_strings = self._stop(stop)
        if stop_strings:
            return [self.generate(p, stop=stop, **sampling) for p in prompts]
        ids = [self._prompt_ids(p) for p in prompts]
        out = [[] for _ in prompts]
        for step in self.generate_ids(ids, stop_ids=stop_ids, **sampling):
            for b, t in enumerate(step):
                if t is not None:
                    out[b].append(t)
        return [self.tokenizer.decode(o) if isinstance(p, str) else o for p, o in zip(prompts, out)]

    def chat(self, messages: list[dict], **kwargs) -> str:
        """The model's reply to a conversation [{"role": "user", "content": ...}, ...]."""
        return "".join(self.stream_chat(messages, **kwargs))

    def stream_chat(self, messages: list[dict], **kwargs) -> Iterator[str]:
        if self.tokenizer is None:
            raise GemmaRefError(f"{self.source}: chat needs a tokenizer")
        if kwargs.get("stop") is None and self.tokenizer.end_of_turn_id is not None:
            kwargs["stop"] = sorted(self._default_stop | {self.tokenizer.end_of_turn_id})
        return self.stream(chat_prompt(messages), **kwargs)

    # --- scoring (see scoring.py) ---------------------------------------------------

    def logprobs(self, ids) -> np.ndarray:
        """log p(ids[t] | ids[:t]) for t = 1..T-1: ids [T] -> [T-1] (float64)."""
        from .scoring import logprobs

        return logprobs(self, ids)

    def score(self, context: str | Sequence[int], continuations: Sequence) -> list[dict]:
        """Log-likelihood of each continuation after `context` (multiple-choice evaluation)."""
        from .scoring import score

        return score(self, context, continuations)

    def __repr__(self):
        c = self.config
        return (f"Model({self.source!r}, {c.model_type}, {c.num_parameters / 1e6:.0f}M params, "
                f"{c.num_hidden_layers} layers, dtype={self.dtype})")


def _generation_config_eos(path: Path) -> list[int]:
    """eos ids listed in generation_config.json (instruction-tuned repos add end-of-turn)."""
    f = path / "generation_config.json"
    if not f.exists():
        return []
    try:
        eos = json.loads(f.read_text()).get("eos_token_id", [])
    except json.JSONDecodeError:
        raise GemmaRefError(f"{f}: not valid JSON") from None
    return [eos] if isinstance(eos, int) else list(eos or [])
