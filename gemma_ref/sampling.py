"""Choosing the next token from logits. Separate from the model; seeded, never global.

A sampler is `sample(logits [V], rng) -> id` with an explicit numpy.random.Generator:
the same seed gives the same tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import GemmaRefError


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # keep the k most likely tokens; 0 = all
    top_p: float = 1.0  # keep the smallest set whose probability reaches p
    min_p: float = 0.0  # drop tokens below min_p * p(most likely)
    repetition_penalty: float = 1.0  # > 1 discourages tokens already seen (CTRL-style)

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, "temperature must be >= 0 (0 = greedy)"),
            (isinstance(self.top_k, (int, np.integer)) and self.top_k >= 0, "top_k must be an integer >= 0"),
            (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
            (0 <= self.min_p < 1, "min_p must be in [0, 1)"),
            (self.repetition_penalty > 0, "repetition_penalty must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise GemmaRefError(f"bad sampling argument: {message}")


def repetition_penalty(logits, seen, penalty):
    """Divide positive / multiply negative logits of already-seen tokens by `penalty`."""
    if penalty == 1.0 or not len(seen):
        return logits
    logits = logits.copy()
    idx = np.unique(np.asarray(seen))
    logits[idx] = np.where(logits[idx] > 0, logits[idx] / penalty, logits[idx] * penalty)
    return logits


def sample(logits, rng: np.random.Generator, params: SamplingParams, seen=()) -> int:
    """One token id from logits [V]."""
    logits = repetition_penalty(np.asarray(logits, np.float64), seen, params.repetition_penalty)
    if params.temperature == 0:
        return int(np.argmax(logits))
    probs = np.exp((logits - logits.max()) / params.temperature)
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")  # most likely first
    p = probs[order]
    keep = np.ones_like(p, dtype=bool)
    if params.top_k:
        keep[params.top_k:] = False
    if params.top_p < 1.0:  # keep tokens until the cumulative mass before them reaches top_p
        keep &= (np.cumsum(p) - p) < params.top_p
    if params.min_p > 0:
        keep &= p >= params.min_p * p[0]
    p = np.where(keep, p, 0.0)
    return int(order[rng.choice(len(p), p=p / p.sum())])
