"""Both cores for the big matrix products: `linear(x, w) == x @ w.T`, faster.

Decoding streams every weight once per token, so it is bound by memory bandwidth,
and one core cannot saturate it. OpenBLAS's own threads did not help on this
project's 2-core machines (measured by scripts/bench.py: 2 BLAS threads were
*slower* than 1 for both the 262144 x 640 output head and 512-token GEMMs), while
two Python threads each multiplying half of the weight rows with single-threaded
BLAS ran 2.0x (head) and 1.6x (prefill GEMM) faster. NumPy releases the GIL inside
BLAS, so the threads really run at once. Each output element is the same dot
product either way.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

MIN_SPLIT = 1 << 19  # weights smaller than this (elements) are not worth splitting

_pool: ThreadPoolExecutor | None = None
_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_blas = None


def set_threads(n: int) -> None:
    """Use n threads for the matrix products (default: the cores this process may use)."""
    global _pool, _threads
    if n < 1:
        raise ValueError("threads must be >= 1")
    _threads, _pool = n, None


def linear(x, w):
    """x @ w.T, the rows of w split between threads.        [..., in], [out, in] -> [..., out]"""
    if _threads == 1 or w.size < MIN_SPLIT:
        return x @ w.T
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads, thread_name_prefix="gemma-ref")
    bounds = np.linspace(0, w.shape[0], _threads + 1).astype(int)
    parts = _pool.map(lambda lo_hi: x @ w[lo_hi[0]:lo_hi[1]].T, zip(bounds[:-1], bounds[1:]))
    return np.concatenate(list(parts), axis=-1)


@contextmanager
def single_threaded_blas():
    """Run the block with BLAS limited to one thread (our threads do the splitting)."""
    global _blas
    if _threads == 1:
        yield
        return
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        yield
