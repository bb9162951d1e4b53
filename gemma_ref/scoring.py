"""Scoring: per-token log-probabilities, perplexity, multiple-choice log-likelihoods.

Everything here is a log-probability of given tokens under the model, a float64
log-softmax of the forward pass's logits (where precision matters: a float32
logsumexp over 262 144 logits loses ~1e-5 per token; see log_softmax_at).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import GemmaRefError

CHUNK = 128  # positions per forward call: bounds the [T, V] logits held at once


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log softmax(logits)[t, targets[t]], in float64.        [T, V], [T] -> [T]

    The logsumexp is summed in float64 (a float32 sum of 262 144 terms loses ~1e-5).
    The terms exp(x - max) are computed in the logits' dtype: float32 logits make
    them accurate to ~1e-7 relative each, and NumPy's float64 exp is ~4x slower
    (scalar code on AVX2), which made it most of a perplexity run. The target's
    own x - max is exact in float64.
    """
    m = logits.max(axis=-1, keepdims=True)  # [T, 1]
    terms = np.exp(logits - m)  # [T, V], in (0, 1]: cannot overflow
    lse = np.log(terms.sum(axis=-1, dtype=np.float64))  # [T], log sum exp(x - max)
    x_t = logits[np.arange(len(targets)), targets].astype(np.float64)  # [T]
    return x_t - m[:, 0].astype(np.float64) - lse


def token_logprobs(model, ids: np.ndarray, start: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """log p(ids[t] | ids[:t]) for t = start..T-1, and whether ids[t] was the argmax.

    ids [T] -> [T - start] float64, [T - start] bool. The prefix the scored tokens
    do not need is prefilled without logits; the rest runs in chunks through a KV
    cache, so only [CHUNK, V] logits exist at a time.
    """
    T = len(ids)
    cache = model.new_cache(1, T)
    for s in range(0, start - 1, CHUNK):  # positions 0 .. start-2: context only
        model._network(ids[None, s:min(s + CHUNK, start - 1)], cache=cache, last_only=True)
    lps, tops = [np.zeros(0)], [np.zeros(0, bool)]
    for s in range(start - 1, T - 1, CHUNK):  # logits at s..e-1 predict ids[s+1..e]
        e = min(s + CHUNK, T - 1)
        logits = model._network(ids[None, s:e], cache=cache)[0]  # [e - s, V]
        lps.append(log_softmax_at(logits, ids[s + 1:e + 1]))
        tops.append(logits.argmax(axis=-1) == ids[s + 1:e + 1])
    return np.concatenate(lps), np.concatenate(tops)


def _check_ids(model, ids) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise GemmaRefError(f"ids must be a 1-D sequence of token ids, got shape {ids.shape}")
    ids = ids.astype(np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= model.n_vocab):
        raise GemmaRefError(f"token ids must be in [0, {model.n_vocab})")
    return ids


def logprobs(model, ids) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t = 1..T-1: ids [T] -> [T-1] (float64).

    ids[0] is the context start (normally <bos>) and has no log-probability.
    """
    ids = _check_ids(model, ids)
    if ids.size == 0:
        raise GemmaRefError("logprobs: empty ids")
    return token_logprobs(model, ids, start=1)[0]


# --- perplexity ---------------------------------------------------------------------


def windows(n: int, max_length: int, stride: int, bos: bool = True) -> list[tuple[int, int, int]]:
    """The strided windows that score tokens 1..n-1 of a text once each.

    Returns (begin, end, first): run the model on ids[begin:end], preceded by <bos>
    when begin > 0 and `bos`, and score tokens first..end-1 (the ones no earlier
    window scored). Every window is at most max_length tokens, <bos> included;
    consecutive windows start `stride` apart, so each scored token sees at least
    max_length - stride - 1 tokens of context (as in Hugging Face's perplexity guide,
    whose later windows however start without <bos>, which Gemma needs).
    """
    check_window(max_length, stride)
    out, first, begin = [], 1, 0  # token 0 (<bos>) is never scored
    while first < n:
        room = max_length - (1 if bos and begin > 0 else 0)
        end = min(begin + room, n)
        out.append((begin, end, first))
        first, begin = end, begin + stride
    return out


def check_window(max_length: int, stride: int):
    """Windows of >= 2 tokens, a stride that scores every token (before the slow load)."""
    if max_length < 2:
        raise GemmaRefError("perplexity: max_length must be >= 2")
    if not 1 <= stride <= max_length - 1:
        raise GemmaRefError(f"perplexity: stride must be in [1, max_length - 1 = {max_length - 1}] "
                            f"so that every token is scored, got {stride}")


MAX_LENGTH = 1024  # default window of perplexity (or the model's context, if shorter)


def perplexity(model, ids, max_length: int | None = None, stride: int | None = None,
               bos: bool = True, n_bytes: int | None = None) -> dict:
    """exp(mean negative log-likelihood) of tokens 1..n-1 of `ids`, with strided windows.

    ids: the whole text's tokens, <bos> first. max_length: tokens per window (default
    MAX_LENGTH, or the model's context if shorter; longer than the context is an error,
    as positions the model was not trained on give meaningless scores). stride: default
    max_length // 2. n_bytes: the text's UTF-8 length, to also report bits per byte
    (comparable across tokenizers).
    """
    context = model.config.max_position_embeddings
    if max_length is None:
        max_length = min(MAX_LENGTH, context)
    elif max_length > context:
        raise GemmaRefError(f"perplexity: max_length {max_length} exceeds the model's context of "
                            f"{context} tokens")
    stride = max_length // 2 if stride is None else stride
    check_window(max_length, stride)
    ids = _check_ids(model, ids)
    if len(ids) < 2:
        raise GemmaRefError("perplexity: the text has no token to score (it needs at least one "
                            "token after <bos>)")
    bos_id = model.config.bos_token_id
    nll = 0.0
    spans = windows(len(ids), max_length, stride, bos)
    for begin, end, first in spans:
        prefix = [bos_id] if bos and begin > 0 else []
        window = np.concatenate([np.array(prefix, np.int64), ids[begin:end]])  # [<= max_length]
        offset = len(prefix) - begin  # position in window = position in text + offset
        nll -= token_logprobs(model, window, start=first + offset)[0].sum()
    n = len(ids) - 1
    out = {"perplexity": math.exp(nll / n), "nll_per_token": nll / n, "tokens_scored": n,
           "nll_sum": nll, "windows": len(spans), "max_length": max_length, "stride": stride,
           "bos_each_window": bos}
    if n_bytes:
        out["bits_per_byte"] = nll / math.log(2) / n_bytes
    return out


# --- multiple choice ------------------------------------------------------------------


def split_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of context and continuation, as lm-evaluation-harness makes them.

    Trailing spaces of the context move to the continuation; the pair is encoded
    as one text and split where the context's own encoding ends.
    """
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    ctx = tokenizer.encode(context)
    return whole[:len(ctx)], whole[len(ctx):]


def score(model, context: str | Sequence[int], continuations: Sequence) -> list[dict]:
    """Log-likelihood of each continuation after `context`, for multiple-choice evaluation.

    context: text, or token ids (then each continuation is a list of ids).
    Returns, per continuation: logprob (the sum over its tokens), n_tokens,
    logprob_per_token, n_chars and logprob_per_char (lm-evaluation-harness's
    acc_norm divides by characters), n_bytes and logprob_per_byte, and is_greedy
    (every token was the argmax). Pick the answer with the largest logprob (acc) or
    logprob_per_char (acc_norm).
    """
    if isinstance(continuations, (str, bytes)) or not len(continuations):
        raise GemmaRefError("score: continuations must be a non-empty list")
    text_mode = isinstance(context, str)
    if text_mode and model.tokenizer is None:
        raise GemmaRefError(f"{model.source}: no tokenizer.model; pass token ids instead")
    results = []
    for c in continuations:
        if text_mode:
            if not isinstance(c, str):
                raise GemmaRefError("score: with a text context, continuations must be text")
            ctx, cont = split_pair(model.tokenizer, context, c)
            text = c
        else:
            ctx, cont = list(context), list(c)
            text = model.tokenizer.decode(cont) if model.tokenizer else None
        if not cont:
            raise GemmaRefError(f"score: continuation {c!r} has no tokens")
        if not ctx:
            raise GemmaRefError("score: empty context (it needs at least <bos>)")
        results.append(_score_one(model, ctx, cont, text))
    return results


def _score_one(model, ctx: list[int], cont: list[int], text: str | None) -> dict:
    ids = _check_ids(model, ctx + cont)
    lp, top = token_logprobs(model, ids, start=len(ctx))  # [len(cont)] each
    total = float(lp.sum())
    r = {"continuation": text, "logprob": total, "n_tokens": len(cont),
         "logprob_per_token": total / len(cont), "is_greedy": bool(top.all())}
    if text:
        n_chars, n_bytes = len(text), len(text.encode("utf-8"))
        r.update(n_chars=n_chars, logprob_per_char=total / n_chars,
                 n_bytes=n_bytes, logprob_per_byte=total / n_bytes)
    return r
