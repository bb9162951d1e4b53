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

# A product is split when rows(x) * size(w) reaches this: handing work to another
# thread costs ~0.1 ms here, worth it for the output head, the MLP (1.3M-element
# matrices in Gemma 3 270M) and any prefill GEMM, not for one token through q_proj.
MIN_SPLIT = 1 << 20
# Up to this many rows, `linear` computes in dense's orientation (w @ rows.T).
FEW_ROWS = 64

_pool: ThreadPoolExecutor | None = None
_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
_blas = None


def set_threads(n: int) -> None:
    """Use n threads for the matrix products (default: the cores this process may use)."""
    global _pool, _threads
    if n < 1:
        raise ValueError("threads must be >= 1")
    _threads, _pool = n, None


def dense(x, w):
    """x @ w.T on the calling thread.                      [..., in], [out, in] -> [..., out]

    Computed on 2-D rows as (w @ rows.T).T: NumPy would otherwise loop over leading
    axes and stream w once per batch row, and OpenBLAS runs this orientation up to
    2x faster for the few rows of batched decoding (same products, same sums).
    """
    rows = x.reshape(-1, x.shape[-1])  # [B*T, in]
    return (w @ rows.T).T.reshape(*x.shape[:-1], w.shape[0])


def linear(x, w):
    """x @ w.T, the rows of w split between threads.        [..., in], [out, in] -> [..., out]"""
    if not _worth_splitting(x, w):
        return dense(x, w)
    rows = x.reshape(-1, x.shape[-1])  # [B*T, in]
    # Each thread writes its share of one output buffer (no concatenation). For a few
    # rows (decoding) as w @ rows.T, the faster orientation (see dense), into [out, B*T],
    # transposed back at the end (a small copy); for many rows (prefill, full logits)
    # straight into the columns of [B*T, out], as transposing that back would cost more.
    few = rows.shape[0] <= FEW_ROWS
    out = np.empty((w.shape[0], rows.shape[0]) if few else (rows.shape[0], w.shape[0]),
                   np.result_type(x, w))

    def shard(lo, hi):
        if few:
            np.matmul(w[lo:hi], rows.T, out=out[lo:hi])
        else:
            np.matmul(rows, w[lo:hi].T, out=out[:, lo:hi])

    _run_shards(shard, w.shape[0])
    out = np.ascontiguousarray(out.T) if few else out  # [B*T, out]
    return out.reshape(*x.shape[:-1], w.shape[0])


def sharded_geglu(geglu, x, w_gate, w_up, w_down):
    """geglu(x, w_gate, w_up, w_down) with its F axis split between threads.

    GeGLU is elementwise in F and `down` sums over F, so each thread computes
    down[:, Fj](gelu(gate[Fj] x) * up[Fj] x) for its slice Fj, and the shares are
    added: one hand-off per layer instead of three, and the GELU runs in parallel.
    """
    if not _worth_splitting(x, w_gate):
        return geglu(x, w_gate, w_up, w_down)
    parts = _run_shards(lambda lo, hi: geglu(x, w_gate[lo:hi], w_up[lo:hi], w_down[:, lo:hi]),
                        w_gate.shape[0])
    return sum(parts[1:], parts[0])


def sharded_attention(attention, q, k, v, q_pos, k_pos, *args, **kwargs):
    """attention(q, k, v, q_pos, k_pos, ...) with the queries (T axis) split between threads.

    Each query row attends independently, so the shards are concatenated. Used for
    prefill; one decoding query is not worth a hand-off.
    """
    B, T, N, H = q.shape
    if _threads == 1 or T < 2 * _threads or B * T * k.shape[1] * N * H < MIN_SPLIT * 64:
        return attention(q, k, v, q_pos, k_pos, *args, **kwargs)
    parts = _run_shards(lambda lo, hi: attention(q[:, lo:hi], k, v, q_pos[:, lo:hi], k_pos, *args, **kwargs), T)
    return np.concatenate(parts, axis=1)


def split_tokens(fn, *arrays):
    """fn(*arrays), computed on slices of the T axis (axis 1) in parallel and rejoined.

    For functions that treat every token on its own (projections, norms, RoPE):
    one hand-off covers the whole chain. Prefill only; a few tokens run as they are.
    """
    T = arrays[0].shape[1]
    if _threads == 1 or T < 32 * _threads:
        return fn(*arrays)
    parts = _run_shards(lambda lo, hi: fn(*(a[:, lo:hi] for a in arrays)), T)
    return tuple(np.concatenate(outs, axis=1) for outs in zip(*parts))


def _worth_splitting(x, w) -> bool:
    return _threads > 1 and (x.size // x.shape[-1]) * w.size >= MIN_SPLIT


def _run_shards(fn, n):
    """[fn(lo, hi) for each of `_threads` equal slices of range(n)]; this thread does the first."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads - 1, thread_name_prefix="gemma-ref")
    bounds = np.linspace(0, n, _threads + 1).astype(int)
    others = [_pool.submit(fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    return [fn(0, bounds[1])] + [f.result() for f in others]


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
