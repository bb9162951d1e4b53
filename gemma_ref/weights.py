"""How the checkpoint's weights are held and handed to the products (Weights).

HF key -> array, widened to the compute dtype as used; matrices held narrower
(bfloat16, float16) go to the products as stored and are widened block by block there
(parallel.widen_into). loader.py decides where each weight lives (its tiers).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .config import GemmaConfig

# Tables read a few rows at a time (the rows of a step's tokens, Weights.rows), never
# multiplied whole: Gemma 3n's and Gemma 4's per-layer embeddings (4.7 GB in bfloat16 for
# Gemma 4 E2B). The loader keeps them memory-mapped as stored, outside the budget.
ROW_TABLES = frozenset({"model.embed_tokens_per_layer.weight"})


class Weights:
    """Read-only view of the checkpoint: HF key -> array widened to the compute dtype.

    Arrays already in the compute dtype are returned as they are (no copy). The text
    model's matrices held narrower (bfloat16, float16; in RAM or memory-mapped, see
    loader.py's tiers) are returned as stored when computing in float32: every product
    that takes them (parallel.dense, linear) widens them block by block as it goes, so
    they are read once, at their stored width. Anything else narrower is widened whole
    on each use. `rows` reads and widens only some rows of a big table (the embedding,
    per-layer embeddings, one expert).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], dtype=np.float32):
        self.arrays, self.dtype = arrays, np.dtype(dtype)
        # Names handed to the products as stored (decided once: __getitem__ runs ~250
        # times a decoding step).
        self.narrow_names = frozenset(
            n for n, a in arrays.items()
            if self.dtype == np.float32 and n.startswith("model.") and len(a.shape) == 2
            and np.dtype(a.dtype).itemsize == 2)
        # Whether products take narrow weights (parallel.threads_for: then our threads split
        # them, also when decoding). A row table never enters a product: held narrow, it
        # leaves decoding on BLAS's threads (Gemma 3n E2B: 2.7 tok/s, not 1.6).
        self.narrow = bool(self.narrow_names - ROW_TABLES)

        self.fused: dict[str, np.ndarray] = {}  # see fuse

    def fuse(self, config: GemmaConfig) -> None:
        """Stack, once, the matrices that multiply the same input, for one product each.

        Per layer: q_proj, k_proj, v_proj (those it has) as `...self_attn.qkv`, and
        gate_proj, up_proj as `...mlp.gate_up`, when all are float32 arrays in RAM. A
        decoding step then makes 2 products of these instead of 5 (each product pays a
        BLAS call and its threads' hand-off). The HF names stay, as views into the
        stacked array (memory is held once); products that trace or split by rows use them.
        """
        for i, spec in enumerate(config.layers):
            p = f"model.layers.{i}."
            groups = {p + "mlp.gate_up": [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]}
            if spec.kv_source == i:
                groups[p + "self_attn.qkv"] = [p + f"self_attn.{n}_proj.weight"
                                               for n in ("q", "k", "v")[:3 if spec.v_proj else 2]]
            for name, parts in groups.items():
                arrays = [self.arrays[n] for n in parts]
                if not all(type(a) is np.ndarray and a.dtype == self.dtype for a in arrays):
                    continue  # narrow, memory-mapped or on disk: left as it is
                stacked = self.fused[name] = np.concatenate(arrays)  # [sum of rows, D]
                start = 0
                for n, a in zip(parts, arrays):
                    self.arrays[n] = stacked[start:start + a.shape[0]]  # a view, same values
                    start += a.shape[0]

    def __getitem__(self, name: str) -> np.ndarray:
        a = self.arrays[name]
        if name in self.narrow_names:
            return a if isinstance(a, np.ndarray) else a.memmap()  # loader.StoredTensor: mapped
        return np.asarray(a).astype(self.dtype, copy=False)

    def rows(self, name: str, index) -> np.ndarray:
        """self[name][index], widening only the rows taken.     [R, ...] -> [index.shape..., ...]"""
        return np.asarray(self.arrays[name][index]).astype(self.dtype, copy=False)
