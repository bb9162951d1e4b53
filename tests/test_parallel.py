"""parallel.py computes what model.py's plain functions compute, on any number of threads.

The split paths only run above size thresholds that tiny test models never reach, so
the thresholds are lowered here; the real model's goldens cover the default sizes.
"""

import ctypes.util
import os
import subprocess
import sys

import numpy as np
import pytest

from gemma_ref import model as M
from gemma_ref import parallel as P


@pytest.fixture(params=[1, 2, 3])
def threads(request, monkeypatch):
    monkeypatch.setattr(P, "MIN_SPLIT", 1)
    monkeypatch.setattr(P, "QUERY_BLOCK", 4)
    monkeypatch.setattr(P, "ROW_BLOCK", 4)  # w of 37 rows: 9 blocks and a part
    P.set_threads(request.param)
    yield request.param
    P.set_threads(len(os.sched_getaffinity(0)))


rng = np.random.default_rng(0)


def close(a, b):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("rows", [1, 3, 70])
def test_linear_and_geglu_match_plain_products(threads, rows):
    x = rng.standard_normal((1, rows, 16), dtype=np.float32)
    w = rng.standard_normal((37, 16), dtype=np.float32)
    close(P.linear(x, w), x @ w.T)
    close(P.dense(x, w), x @ w.T)
    with P.threads_for(rows):  # as in a forward pass: decoding (BLAS's threads) or prefill
        close(P.linear(x, w), x @ w.T)
    wg, wu = rng.standard_normal((2, 24, 16), dtype=np.float32)
    wd = rng.standard_normal((16, 24), dtype=np.float32)
    close(P.sharded_geglu(M.geglu, x, wg, wu, wd), (M.gelu_tanh(x @ wg.T) * (x @ wu.T)) @ wd.T)


def test_split_tokens_matches_one_call(threads, monkeypatch):
    x = rng.standard_normal((2, 70, 8), dtype=np.float32)
    y = rng.standard_normal((2, 70, 3), dtype=np.float32)
    fn = lambda a, b: (a * 2, np.concatenate([a, b], axis=-1))  # noqa: E731
    for got, want in zip(P.split_tokens(fn, x, y), fn(x, y)):
        close(got, want)


def qkv(B, T, S, N=4, K=2, H=8):
    q = rng.standard_normal((B, T, N, H), dtype=np.float32)
    k, v = rng.standard_normal((2, B, S, K, H), dtype=np.float32)
    return q, k, v


@pytest.mark.parametrize("window", [None, 5])
@pytest.mark.parametrize("cap", [None, 50.0])
def test_blocked_attention_prompt_matches_full(threads, window, cap):
    B, T = 2, 19
    q, k, v = qkv(B, T, T)
    pos = np.broadcast_to(np.arange(T), (B, T)).copy()
    pos[1, :3] = -1  # left padding in the second row
    want = M.attention(q, k, v, pos, pos, 0.3, window, cap)
    got = P.sharded_attention(M.attention, M.visible, q, k, v, pos, pos, 0.3, window, cap)
    real = pos >= 0  # padding queries' outputs are never used
    close(got[real], want[real])


def test_blocked_attention_over_a_ring_matches_full(threads):
    # A chunk after a ring buffer: keys are not sorted by position, some slots empty.
    B, T, window = 1, 12, 6
    ring_pos = np.array([[12, 13, 8, 9, 10, 11, -1]])  # slot p % 7, one never written
    q, k, v = qkv(B, T, ring_pos.shape[1] + T)
    q_pos = np.arange(14, 14 + T)[None]
    k_pos = np.concatenate([ring_pos, q_pos], axis=1)
    want = M.attention(q, k, v, q_pos, k_pos, 0.3, window)
    got = P.sharded_attention(M.attention, M.visible, q, k, v, q_pos, k_pos, 0.3, window)
    close(got, want)


def test_blocks_see_only_keys_they_can_see(monkeypatch):
    # The trimming is real: with 4-query blocks over a 16-token prompt, the largest key
    # span handed to attention is 16 and the smallest 4.
    monkeypatch.setattr(P, "MIN_SPLIT", 1)
    monkeypatch.setattr(P, "QUERY_BLOCK", 4)
    monkeypatch.setattr(P, "_threads", 2)
    spans = []

    def spy(q, k, v, *args):
        spans.append((q.shape[1], k.shape[1]))
        return M.attention(q, k, v, *args)

    q, k, v = qkv(1, 16, 16)
    pos = np.arange(16)[None]
    P.sharded_attention(spy, M.visible, q, k, v, pos, pos, 0.3, None, None)
    assert sorted(spans) == [(4, 4), (4, 8), (4, 12), (4, 16)]
    spans.clear()
    P.sharded_attention(spy, M.visible, q, k, v, pos, pos, 0.3, 3, None)
    assert sorted(spans) == [(4, 4), (4, 6), (4, 6), (4, 6)]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_malloc_tuning_applies_once_and_can_be_turned_off():
    code = "from gemma_ref.parallel import reuse_freed_memory as r; print(r(), r())"
    run = lambda env: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,  # noqa: E731
                                     env={**os.environ, **env}, check=True).stdout.split()
    libc = ctypes.util.find_library("c") or ""
    assert run({"GEMMA_REF_MALLOC": "default"}) == ["False", "False"]
    if "libc.so.6" in libc:
        assert run({}) == ["True", "True"]
