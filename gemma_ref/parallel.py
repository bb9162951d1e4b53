"""Both cores for the big matrix products: `linear(x, w) == x @ w.T`, faster.

Decoding streams every weight once per token, so it is bound by memory bandwidth,
and one core cannot saturate it. OpenBLAS's own threads did not help on this
project's 2-core machines (measured by scripts/bench.py: 2 BLAS threads were
*slower* than 1 for both the 262144 x 640 output head and 512-token GEMMs), while
two Python threads each multiplying half of the weight rows with single-threaded
BLAS ran 2.0x (head) and 1.6x (prefill GEMM) faster. NumPy releases the GIL inside
BLAS, so the threads really run at once. Each output element is the same dot
product either way. Prefill attention is computed in blocks of queries, each
against only the keys it can see (sharded_attention), and malloc is asked to keep
freed temporaries (reuse_freed_memory).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

# A product is split when rows(x) * size(w) reaches this, and, for a few rows, size(w)
# too: handing work to another thread costs ~0.15 ms on this project's VM (thread
# wake-up), worth it for the output head, the MLP (1.3M-element matrices in Gemma 3
# 270M) and any prefill GEMM, not for decoding through q_proj or o_proj (0.66M),
# which streams 2.6 MB in ~0.2-0.4 ms (measured slower split, at batch 1 and 8).
MIN_SPLIT = 1 << 20
# Up to this many rows, `linear` computes in dense's orientation (w @ rows.T).
FEW_ROWS = 64
# For a few rows but more than one, `linear` multiplies w in blocks of this many rows:
# OpenBLAS's GEMM with 8 columns runs the 262144 x 640 head ~15% faster in 512-row
# blocks (1.3 MB, cache-sized) than in one call.
ROW_BLOCK = 512
# Queries per block in prefill attention (sharded_attention).
QUERY_BLOCK = 128

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
            step = ROW_BLOCK if rows.shape[0] > 1 else hi - lo
            for a in range(lo, hi, step):
                np.matmul(w[a:min(a + step, hi)], rows.T, out=out[a:min(a + step, hi)])
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


def sharded_attention(attention, visible, q, k, v, q_pos, k_pos, scale, window=None, cap=None):
    """attention(q, k, v, q_pos, k_pos, scale, window, cap), by blocks of queries on all threads.

    visible(q_pos, k_pos, window) is attention's mask, [B, T, S] booleans.

    Each query attends on its own, so the queries are cut into blocks (of QUERY_BLOCK,
    or fewer so that every thread gets two), and each block is given only the span of keys it can see: causality masks most
    of a prompt's [T, S] score matrix (block i of a fresh 512-token prompt sees keys
    of blocks <= i only; a sliding layer's block, at most window + block keys).
    Masked keys get weight exp(min - max) = 0 in the full computation, so trimming
    them changes only the rounding of the sums. For 512 tokens this skips 37% of the
    scores. Blocks are handed out largest first, to whichever thread is free.
    Used for prefill; one decoding query attends as it is.
    """
    B, T, N, H = q.shape
    S = k.shape[1]
    if T < 2 or B * T * S * N * H < MIN_SPLIT * 64:
        return attention(q, k, v, q_pos, k_pos, scale, window, cap)
    size = min(QUERY_BLOCK, -(-T // (2 * _threads)))
    out = np.empty((B, T, N * H), np.result_type(q, k, v))
    blocks = []
    for lo in range(0, T, size):
        hi = min(lo + size, T)
        cols = np.flatnonzero(visible(q_pos[:, lo:hi], k_pos, window).any(axis=(0, 1)))  # [S] -> seen
        a, b = (cols[0], cols[-1] + 1) if cols.size else (0, S)  # no key visible: padding queries
        blocks.append((lo, hi, a, b))

    def block(lo, hi, a, b):
        out[:, lo:hi] = attention(q[:, lo:hi], k[:, a:b], v[:, a:b], q_pos[:, lo:hi], k_pos[:, a:b],
                                  scale, window, cap)

    _run_tasks(block, sorted(blocks, key=lambda blk: (blk[1] - blk[0]) * (blk[3] - blk[2]), reverse=True))
    return out


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
    rows = x.size // x.shape[-1]
    return _threads > 1 and rows * w.size >= MIN_SPLIT and (rows > FEW_ROWS or w.size >= MIN_SPLIT)


def _run_shards(fn, n):
    """[fn(lo, hi) for each of `_threads` equal slices of range(n)]; this thread does the first."""
    bounds = np.linspace(0, n, _threads + 1).astype(int)
    others = [_get_pool().submit(fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    return [fn(0, bounds[1])] + [f.result() for f in others]


def _run_tasks(fn, tasks):
    """fn(*task) for every task, in order, each taken by the next free thread (this one too)."""
    todo = iter(tasks)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                task = next(todo, None)
            if task is None:
                return
            fn(*task)

    others = [_get_pool().submit(worker) for _ in range(_threads - 1)]
    worker()
    for f in others:
        f.result()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(_threads - 1, thread_name_prefix="gemma-ref")
    return _pool


# glibc malloc parameters (malloc.h): M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_tuned = False


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed arrays for reuse instead of returning them to the OS.

    A forward pass makes and drops many temporaries of a few MB. glibc serves blocks
    above 128 KB (a limit it raises adaptively, up to 32 MB) with mmap and unmaps them
    when freed, and trims its heaps, so the next temporary is page-faulted and zeroed
    afresh: 56 000 page faults (220 MB) per 512-token prefill of Gemma 3 270M, ~20% of
    its time on this project's VM. With blocks up to 64 MB taken from the heap, and up
    to 256 MB of free heap kept, the same forward pass faults ~0 times. Process-wide;
    called once by the first forward pass. Set GEMMA_REF_MALLOC=default to leave malloc
    alone. Returns whether the settings were applied (False off glibc).
    """
    global _malloc_tuned
    if _malloc_tuned or os.environ.get("GEMMA_REF_MALLOC") == "default" or not sys.platform.startswith("linux"):
        return _malloc_tuned
    _malloc_tuned = True  # tried once, whatever the outcome
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20))
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        return False


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
