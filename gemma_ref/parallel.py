"""Both cores for the big matrix products: `linear(x, w) == x @ w.T`, faster.

Two ways to use 2 cores, each best for one half of the work (threads_for picks):

- Prefill (many tokens) is compute-bound. Two Python threads each multiply half of
  the weight rows with single-threaded BLAS (NumPy releases the GIL inside BLAS):
  2 BLAS threads were slower than this for 512-token GEMMs. Attention runs in
  blocks of queries, each against only the keys it can see (sharded_attention).
- Decoding (one token per sequence) streams every weight once per step and is
  bound by memory bandwidth, in ~0.1-0.5 ms products. Waking a Python thread costs
  ~0.15 ms here, so decoding uses OpenBLAS's own threads, which spin while idle.

Each output element is the same dot product either way. A long prompt is better
cut into chunks, one per thread at a time, that run whole layers side by side
(pipelined: no hand-off inside a layer). Also: malloc is asked to keep freed
temporaries (reuse_freed_memory).

On a shared machine both ways go wrong: a thread waiting for a core that another
process holds stalls the whole product, and OpenBLAS's spinning threads take cores
from the very thread they wait for (a batch of 2 took 20-30 s instead of 1.5 s with
one core busy elsewhere). So by default the thread count backs off: before each
forward pass, at most every LOAD_CHECK seconds, the CPU time that other processes
used on our cores is measured (/proc/stat minus /proc/self/stat), and each core they
keep busy is one thread fewer (free_threads). An explicit set_threads(n) is obeyed.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

# In a prefill (see threads_for), a product is split when rows(x) * size(w) reaches
# this: handing work to another thread costs ~0.15 ms on this project's VM (thread
# wake-up), worth it for every prefill GEMM and the output head of the last position.
MIN_SPLIT = 1 << 20
# Up to this many rows, `linear` computes in dense's orientation (w @ rows.T).
FEW_ROWS = 64
# For a few rows but more than one, a big w (the output head) is multiplied in blocks
# of this many rows: OpenBLAS's GEMM with 8 columns ran the 262144 x 640 head 15-25%
# faster in 512- to 2048-row blocks (1.3-5 MB, cache-sized) than in one call, on one
# thread per half as on its own 2 threads.
ROW_BLOCK = 1024
# Weights held in their stored dtype (bfloat16, float16: loader.py's second tier) are
# widened this many values at a time (1 MB of float32, cache-sized) into a reused
# buffer right before each product (see widen_into), so each weight crosses main memory
# once per use, at 2 bytes a value.
WIDEN_BLOCK = 1 << 18
# A prompt of at least this many tokens per thread is prefilled in pipelined chunks.
MIN_PIPELINED = 128
# Queries per block in prefill attention (sharded_attention).
QUERY_BLOCK = 128
# Busy machine (see the module docstring): re-measure others' CPU use at most this often
# (seconds); a core that other processes keep busy more than BUSY_CORE of the time is
# taken (so a steady busy loop takes one, a brief `ls` none).
LOAD_CHECK = 0.5
BUSY_CORE = 0.3

_cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
_max_threads = len(_cpus) if _cpus else (os.cpu_count() or 1)
_threads = _max_threads  # threads in use now: _max_threads, or fewer on a busy machine
_adaptive = True  # back off on a busy machine (until set_threads fixes the count)
_free: int | None = None  # the last back-off decision
_pool: ThreadPoolExecutor | None = None
_blas = None
_split = True  # products may be split between our threads (see threads_for)
_local = threading.local()  # per thread: .in_shard (no nested split), .buffer (widen_into)


def set_threads(n: int | None) -> None:
    """Use n threads for the matrix products, always; None: the default, the cores this
    process may use, fewer while other processes keep some of them busy."""
    global _pool, _threads, _max_threads, _adaptive
    if n is not None and n < 1:
        raise ValueError("threads must be >= 1")
    _adaptive = n is None
    _max_threads = len(_cpus) if n is None and _cpus else n or (os.cpu_count() or 1)
    _threads = min(_free or _max_threads, _max_threads) if _adaptive else _max_threads
    _pool = None


def free_threads(cores: int, others: float) -> int:
    """Threads to use on `cores` cores when other processes use `others` cores' worth of CPU."""
    taken = max(0, math.ceil(others - BUSY_CORE))
    return max(1, cores - taken)


class _Load:
    """CPU time used on our cores by other processes, between two readings of /proc."""

    def __init__(self):
        self.last = self.read()
        self.checked = time.monotonic()

    @staticmethod
    def read():
        """(busy ticks on our cores, all ticks on our cores, this process's ticks) or None."""
        try:
            with open("/proc/stat") as f:
                lines = [line.split() for line in f if line.startswith("cpu") and line[3] != " "]
            with open("/proc/self/stat") as f:
                own = f.read().rsplit(")", 1)[1].split()  # fields after the command name
        except (OSError, IndexError):
            return None
        busy = total = 0
        for fields in lines:
            if _cpus is None or int(fields[0][3:]) in _cpus:
                ticks = [int(t) for t in fields[1:9]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]  # steal counts: another VM has the core
        return busy, total, int(own[11]) + int(own[12])  # utime + stime, all our threads

    def others(self) -> float | None:
        """Cores' worth of CPU others used since the last call (None: unknown, e.g. not Linux)."""
        now = self.read()
        last, self.last, self.checked = self.last, now, time.monotonic()
        if now is None or last is None or now[1] <= last[1]:
            return None
        cores = len(_cpus) if _cpus else 1
        return cores * ((now[0] - last[0]) - (now[2] - last[2])) / (now[1] - last[1])


_load = _Load()  # the first window starts at import (it spans loading the model)


def _back_off() -> None:
    """Set _threads from the load others put on our cores (at most every LOAD_CHECK s)."""
    global _threads, _free
    if not _adaptive or _max_threads == 1:
        return
    if time.monotonic() - _load.checked >= LOAD_CHECK:
        others = _load.others()
        _threads = _free = _max_threads if others is None else free_threads(_max_threads, others)


def dense(x, w):
    """x @ w.T on the calling thread.                      [..., in], [out, in] -> [..., out]

    Computed on 2-D rows (NumPy would otherwise loop over leading axes and stream w
    once per batch row). For the few rows of batched decoding as (w @ rows.T).T,
    which OpenBLAS runs up to 2x faster; for many rows (prefill) as rows @ w.T, so
    the result is row-major: the per-head norms and RoPE that follow ran 2x slower
    on the transposed layout.
    """
    rows = x.reshape(-1, x.shape[-1])  # [B*T, in]
    if is_narrow(w, x):
        few = rows.shape[0] <= FEW_ROWS
        out = np.empty((w.shape[0], rows.shape[0]) if few else (rows.shape[0], w.shape[0]), x.dtype)
        _narrow_product(w, rows, out, few)
        return (out.T if few else out).reshape(*x.shape[:-1], w.shape[0])
    if rows.shape[0] > FEW_ROWS:
        return (rows @ w.T).reshape(*x.shape[:-1], w.shape[0])
    out = np.empty((w.shape[0], rows.shape[0]), np.result_type(x, w))
    _w_times_columns(w, rows.T, out)
    return out.T.reshape(*x.shape[:-1], w.shape[0])


def is_narrow(w, x) -> bool:
    """Whether w is stored narrower than the float32 activations x (bfloat16, float16)."""
    return x.dtype == np.float32 and w.dtype.itemsize == 2


def widen_into(w, buf):
    """buf[...] = w as float32, exactly.        [r, in] bfloat16 or float16 -> [r, in] float32

    bfloat16 is the top half of a float32's bits: widening is a copy to uint32 and a
    16-bit shift (together ~5 GB/s of bf16 on one core of this project's VM: the copy
    7.5, the shift 19; ml_dtypes' astype, 0.2). float16: NumPy's cast.
    """
    if w.dtype.name == "bfloat16":
        bits = buf.view(np.uint32)
        bits[...] = w.view(np.uint16)  # [r, in] zero-extended
        bits <<= 16
    else:
        buf[...] = w
    return buf


def _buffer(n: int) -> np.ndarray:
    """This thread's reusable float32 buffer of at least n values (widen_into's target)."""
    buf = getattr(_local, "buffer", None)
    if buf is None or buf.size < n:
        buf = _local.buffer = np.empty(n, np.float32)
    return buf[:n]


def _narrow_product(w, rows, out, few):
    """out = w @ rows.T (few: out [out, M]) or rows @ w.T (out [M, out]), w widened in blocks.

    w [out, in] in a narrow stored dtype, in RAM or memory-mapped; rows [M, in] float32.
    Each block of WIDEN_BLOCK values is widened into this thread's buffer and used at
    once, while it is in cache: w is read once, at its stored width.
    """
    n = max(1, WIDEN_BLOCK // w.shape[1])  # rows of w per block
    cols = rows.T
    for a in range(0, w.shape[0], n):
        b = min(a + n, w.shape[0])
        block = widen_into(w[a:b], _buffer((b - a) * w.shape[1]).reshape(b - a, w.shape[1]))
        if few:
            np.matmul(block, cols, out=out[a:b])
        else:
            np.matmul(rows, block.T, out=out[:, a:b])


def _w_times_columns(w, cols, out):
    """out = w @ cols; for several columns and a big w, in blocks of ROW_BLOCK rows of w.

    [out, in], [in, few] -> [out, few] (see ROW_BLOCK for why the blocks)."""
    if cols.shape[1] == 1 or w.shape[0] < 4 * ROW_BLOCK:
        np.matmul(w, cols, out=out)
        return
    for a in range(0, w.shape[0], ROW_BLOCK):
        np.matmul(w[a:a + ROW_BLOCK], cols, out=out[a:a + ROW_BLOCK])


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
                   x.dtype if is_narrow(w, x) else np.result_type(x, w))

    def shard(lo, hi):
        if is_narrow(w, x):
            _narrow_product(w[lo:hi], rows, out[lo:hi] if few else out[:, lo:hi], few)
        elif few:
            _w_times_columns(w[lo:hi], rows.T, out[lo:hi])
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


def sharded_attention(attention, visible, q, k, v, q_pos, k_pos, scale, window=None, cap=None,
                      reach=None):
    """attention(q, k, v, q_pos, k_pos, scale, window, cap, reach), by blocks of queries on all
    threads.

    visible(q_pos, k_pos, window, reach) is attention's mask, [B, T, S] booleans.

    Each query attends on its own, so the queries are cut into blocks (of QUERY_BLOCK,
    or fewer so that every thread gets two), and each block is given only the span
    of keys it can see: causality masks most of a prompt's [T, S] score matrix
    (block i of a fresh 512-token prompt sees keys of blocks <= i only; a sliding
    layer's block, at most window + block keys).
    Masked keys get weight exp(min - max) = 0 in the full computation, so trimming
    them changes only the rounding of the sums. For 512 tokens this skips 37% of the
    scores. Blocks are handed out largest first, to whichever thread is free.
    Used for prefill; one decoding query attends as it is.
    """
    B, T, N, H = q.shape
    S = k.shape[1]
    if T < 2 or B * T * S * N * H < MIN_SPLIT * 64:
        return attention(q, k, v, q_pos, k_pos, scale, window, cap, reach)
    size = min(QUERY_BLOCK, -(-T // (2 * _threads)))
    out = np.empty((B, T, N * H), np.result_type(q, k, v))
    blocks = []
    for lo in range(0, T, size):
        hi = min(lo + size, T)
        r = None if reach is None else reach[:, lo:hi]
        cols = np.flatnonzero(visible(q_pos[:, lo:hi], k_pos, window, r).any(axis=(0, 1)))  # [S] -> seen
        a, b = (cols[0], cols[-1] + 1) if cols.size else (0, S)  # no key visible: padding queries
        blocks.append((lo, hi, a, b))

    def block(lo, hi, a, b):
        r = None if reach is None else reach[:, lo:hi]
        out[:, lo:hi] = attention(q[:, lo:hi], k[:, a:b], v[:, a:b], q_pos[:, lo:hi], k_pos[:, a:b],
                                  scale, window, cap, r)

    _run_tasks(block, sorted(blocks, key=lambda blk: (blk[1] - blk[0]) * (blk[3] - blk[2]), reverse=True))
    return out


def split_tokens(fn, *arrays):
    """fn(*arrays), computed on slices of the T axis (axis 1) in parallel and rejoined.

    For functions that treat every token on its own (projections, norms, RoPE):
    one hand-off covers the whole chain. Prefill only; a few tokens run as they are.
    An output that is None (a layer without keys and values of its own) stays None.
    """
    T = arrays[0].shape[1]
    if not _split or _threads == 1 or T < 32 * _threads:
        return fn(*arrays)
    parts = _run_shards(lambda lo, hi: fn(*(a[:, lo:hi] for a in arrays)), T)
    return tuple(None if outs[0] is None else np.concatenate(outs, axis=1) for outs in zip(*parts))


def _worth_splitting(x, w) -> bool:
    rows = x.size // x.shape[-1]
    return (_split and _threads > 1 and rows * w.size >= MIN_SPLIT
            and not getattr(_local, "in_shard", False))  # a shard's own products run on it


def _as_shard(fn):
    """fn, marked while it runs as a shard (its products are not split again: the pool's
    threads would wait for each other)."""
    def run(*args):
        outer, _local.in_shard = getattr(_local, "in_shard", False), True
        try:
            return fn(*args)
        finally:
            _local.in_shard = outer
    return run


def _run_shards(fn, n):
    """[fn(lo, hi) for each of `_threads` equal slices of range(n)]; this thread does the first."""
    bounds = np.linspace(0, n, _threads + 1).astype(int)
    fn = _as_shard(fn)
    others = [_get_pool().submit(fn, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
    return [fn(0, bounds[1])] + [f.result() for f in others]


def _run_tasks(fn, tasks):
    """fn(*task) for every task, in order, each taken by the next free thread (this one too).

    Only this thread when products are not being split (threads_for)."""
    todo = iter(tasks)
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                task = next(todo, None)
            if task is None:
                return
            fn(*task)

    worker = _as_shard(worker)
    others = [_get_pool().submit(worker) for _ in range(_threads - 1)] if _split else []
    worker()
    for f in others:
        f.result()


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max(_threads, _max_threads) - 1, thread_name_prefix="gemma-ref")
    return _pool


# glibc malloc parameters (malloc.h): M_TRIM_THRESHOLD and M_MMAP_THRESHOLD.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_malloc_tuned: bool | None = None  # None: not tried yet


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed arrays for reuse instead of returning them to the OS.

    A forward pass makes and drops many temporaries of a few MB. glibc serves blocks
    above 128 KB (a limit it raises adaptively, up to 32 MB) with mmap and unmaps them
    when freed, and trims its heaps, so the next temporary is page-faulted and zeroed
    afresh: 48 000-56 000 page faults (~200 MB) per 512-token prefill of Gemma 3 270M.
    With blocks up to 64 MB taken from the heap, and up to 256 MB of free heap kept,
    the same forward pass faults ~0 times and ran ~10% faster on this project's VM
    (540 vs 485 tok/s). Process-wide; called once by the first forward pass. Set
    GEMMA_REF_MALLOC=default to leave malloc alone. Returns whether the settings were
    applied (False off glibc).
    """
    global _malloc_tuned
    if _malloc_tuned is None:
        _malloc_tuned = False  # tried once, whatever the outcome
        if os.environ.get("GEMMA_REF_MALLOC") != "default" and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _malloc_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, 64 << 20)
                                     and libc.mallopt(_M_TRIM_THRESHOLD, 256 << 20))
            except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
                pass
    return _malloc_tuned


@contextmanager
def threads_for(rows: int, narrow: bool = False):
    """Share the cores out for a forward pass over `rows` tokens (batch x length).

    Prefill (more than FEW_ROWS rows): our threads split the products (linear,
    sharded_geglu, ...), each calling single-threaded BLAS. Decoding: BLAS's own
    threads, unsplit. Handing work to a Python thread costs ~0.15 ms of thread
    wake-up on this project's VM, more than one decoding step's 2048 x 640 product
    takes; OpenBLAS's threads spin while they wait. Measured (2026-11-23, one boot):
    60 such products 28.6 ms split by us vs 14.8 ms on BLAS's 2 threads; whole
    decoding steps 16-18.6 vs 11-14 tok/s; the 262144 x 640 head, the same either way.
    narrow: weights held in a narrow dtype take part (widened block by block, in
    Python): our threads split the products also when decoding, as NumPy's widening
    runs on one thread; each product is big enough (a 7B's, ~20-150 MB) to pay.
    """
    global _blas, _split
    if getattr(_local, "wave", None) is not None:  # a chunk of a pipelined prefill: set already
        yield
        return
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    _back_off()
    split = _threads > 1 and (rows > FEW_ROWS or narrow)
    saved, _split = _split, split
    try:
        with _blas.limit(limits=1 if split else _threads, user_api="blas"):
            yield
    finally:
        _split = saved


# --- pipelined prefill ----------------------------------------------------------------


def prefill_chunk_size(tokens: int, longest: int) -> int:
    """Tokens per chunk for prefilling a prompt of `tokens`: chunks of at most `longest`,
    as many as the threads or a multiple of them (every thread gets the same share), when
    each gets at least MIN_PIPELINED tokens; else plain chunks of `longest`."""
    _back_off()
    t = _threads
    if t < 2 or tokens < t * MIN_PIPELINED:
        return longest
    n = t * -(-tokens // (t * longest))  # a multiple of t chunks, each <= longest
    return -(-tokens // n)


class _Wave:
    """How far each chunk of a pipelined prefill has got (see pipelined)."""

    def __init__(self, chunks: int, layers: int):
        self.written = [[threading.Event() for _ in range(layers)] for _ in range(chunks)]
        self.error: BaseException | None = None  # the first chunk's failure, if any


def in_pipeline() -> bool:
    """Whether this thread is running a chunk of a pipelined prefill."""
    return getattr(_local, "wave", None) is not None


@contextmanager
def layer_turn(i: int):
    """Around layer i's use of the KV cache: in a pipelined prefill, wait until the chunk
    before this one has written layer i's keys and values, and tell the next chunk once
    this one has. Elsewhere, nothing."""
    wave = getattr(_local, "wave", None)
    if wave is None:
        yield
        return
    state, j = wave
    if j > 0:
        state.written[j - 1][i].wait()
        if state.error is not None:
            raise RuntimeError("an earlier chunk of the prompt failed")
    yield
    state.written[j][i].set()


def pipelined(fn, chunks, layers: int) -> list:
    """[fn(*chunk) for chunk in chunks] for the chunks of one prompt, on all threads at once.

    fn runs the forward pass over one chunk, all chunks sharing one KV cache, with the
    chunk's positions given (the cache cannot tell them while earlier chunks run). Chunk j
    attends to the keys of the chunks before it, so at each layer it waits until chunk
    j - 1 has written that layer (layer_turn) and otherwise runs beside it: on 2 threads,
    chunk j's layer i while chunk j - 1 computes layer i + 1. Each thread computes whole
    layers of its own tokens with single-threaded BLAS: no hand-offs inside a layer, and
    norms, RoPE and GELU in parallel too. Against the chunks in order, each product
    split between the threads (scripts/bench_prefill_chunks.py; docs/BENCH.md): 768
    tokens 769 vs 666 tok/s, 2048 tokens 703 vs 610, 8192 (scripts/bench.py) 729 vs 603;
    512 tokens (2 x 256) level to +8%: one thread's GEMM on 256 rows is ~10% slower than
    on 512. The same values, up to the order of the sums.
    """
    global _blas, _split
    _back_off()
    n = min(_threads, len(chunks))
    if n < 2:
        return [fn(*c) for c in chunks]
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController()
    state = _Wave(len(chunks), layers)
    results = [None] * len(chunks)
    todo = iter(range(len(chunks)))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                j = None if state.error is not None else next(todo, None)
            if j is None:
                return
            _local.wave = (state, j)
            try:
                results[j] = fn(*chunks[j])
            except BaseException as e:
                with lock:
                    state.error = state.error or e
                raise
            finally:
                _local.wave = None
                for done in state.written[j]:  # never leave a later chunk waiting
                    done.set()

    saved, _split = _split, False  # nothing inside a chunk is split again
    try:
        with _blas.limit(limits=1, user_api="blas"):
            others = [_get_pool().submit(_as_shard(worker)) for _ in range(n - 1)]
            try:
                _as_shard(worker)()
            except BaseException:
                pass  # in state.error: the first failure of any chunk is raised below
            finally:
                for f in others:
                    f.exception()  # waits for it (its failure, too, is in state.error)
    finally:
        _split = saved
    if state.error is not None:
        raise state.error
    return results
