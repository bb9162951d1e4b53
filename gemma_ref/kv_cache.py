"""The KV cache: each layer's keys and values, after RoPE, in slots (a ring for sliding layers).

new_cache makes one per layer (None for a layer that attends with another layer's keys
and values); attended_kv stores a step's keys and values and gives back what its
queries attend over. model.forward reads and updates it in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import GemmaConfig, LayerSpec

@dataclass
class LayerCache:
    """Keys and values of one layer, after RoPE, in C slots; a position p lives in slot p % C.

    Full-attention layers have C = the longest context; sliding layers C = window,
    so the buffer is a ring that never grows past the window.
    """

    k: np.ndarray  # [B, C, K, H]
    v: np.ndarray  # [B, C, K, H]
    pos: np.ndarray  # [B, C] position held in each slot, -1 = empty
    end: int = 0  # one past the highest position written (any row)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes + self.pos.nbytes


def _slots(spec: LayerSpec, max_len: int, spare: int = 0) -> int:
    """C: cache slots of a layer (a sliding layer never needs more than its window, + spare)."""
    return min(spec.window + spare, max_len) if spec.window else max_len


def new_cache(config: GemmaConfig, batch: int, max_len: int, dtype=np.float32,
              spare: int = 0) -> list[LayerCache | None]:
    """An empty KV cache for `batch` sequences of at most `max_len` positions.

    One LayerCache per layer, shaped by its LayerSpec; None for a layer that attends
    with another layer's keys and values (Gemma 4 KV sharing): it owns no cache.
    spare: extra slots on the sliding layers' rings, so that positions can be taken
    back (forget_from: speculative decoding's rejected drafts) without losing keys that
    are still in the window.
    """
    cache = []
    for i, s in enumerate(config.layers):
        if s.kv_source != i:
            cache.append(None)
            continue
        C, K, H = _slots(s, max_len, spare), s.num_key_value_heads, s.head_dim
        cache.append(LayerCache(
            k=np.zeros((batch, C, K, H), dtype), v=np.zeros((batch, C, K, H), dtype),
            pos=np.full((batch, C), -1, np.int64),
        ))
    return cache


def cache_nbytes(config: GemmaConfig, max_len: int, batch: int = 1, dtype=np.float32) -> int:
    """Bytes of `new_cache(config, batch, max_len, dtype)`: keys, values and positions."""
    item = np.dtype(dtype).itemsize
    return batch * sum(_slots(s, max_len) * (2 * s.num_key_value_heads * s.head_dim * item + 8)
                       for i, s in enumerate(config.layers) if s.kv_source == i)


def forget_from(cache: list[LayerCache | None], end: int) -> None:
    """Forget every position >= end, as if only positions < end had been written."""
    for c in cache:
        if c is not None:
            c.pos[c.pos >= end] = -1
            c.end = min(c.end, end)


def cache_write(c: LayerCache, k, v, pos):
    """Store new keys/values at slot pos % C (padding, pos < 0, is skipped).

    k, v [B, T, K, H]; pos [B, T]. Only the last C positions of each row are kept.
    """
    C = c.pos.shape[1]
    keep = (pos >= 0) & (pos > pos.max(axis=1, keepdims=True) - C)  # [B, T]
    b, t = np.nonzero(keep)
    slot = pos[b, t] % C
    c.k[b, slot], c.v[b, slot], c.pos[b, slot] = k[b, t], v[b, t], pos[b, t]
    c.end = max(c.end, int(pos.max()) + 1)


def attended_kv(c: LayerCache | None, k, v, positions, ring: bool):
    """The keys and values this step's queries attend over, the new ones stored in c.

    k, v [B, T, K, H], positions [B, T] -> k, v [B, S, K, H], their positions [B, S]
    Without a cache: the step's own. `ring`: c is a sliding layer's ring buffer.
    """
    if c is None:
        return k, v, positions
    if not ring or k.shape[1] == 1:
        # Storing first evicts nothing still visible (a full layer never evicts; a
        # ring evicts position p - window, just out of the new query's reach), so
        # attend over the cache in place.
        cache_write(c, k, v, positions)
        used = min(c.end, c.pos.shape[1])
        return c.k[:, :used], c.v[:, :used], c.pos[:, :used]  # [B, S, ...]
    # A chunk on a ring: its last keys may evict ones its first queries need, so
    # attend over what the ring held plus the chunk, then store.
    used = min(c.end, c.pos.shape[1])
    k_all = np.concatenate([c.k[:, :used], k], axis=1)  # [B, S, K, H]
    v_all = np.concatenate([c.v[:, :used], v], axis=1)
    k_pos = np.concatenate([c.pos[:, :used], positions], axis=1)  # [B, S]
    cache_write(c, k, v, positions)
    return k_all, v_all, k_pos
