"""parallel.py computes what model.py's plain functions compute, on any number of threads.

The split paths only run above size thresholds that tiny test models never reach, so
the thresholds are lowered here; the real model's goldens cover the default sizes.
"""

import ctypes.util
import os
import shutil
import subprocess
import sys
import time

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
    P.set_threads(None)


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


# --- a busy machine: fewer threads while other processes keep cores busy ------------------


@pytest.mark.parametrize("cores, others, threads", [
    (2, 0.0, 2), (2, 0.25, 2), (2, 0.35, 1), (2, 1.0, 1), (2, 1.9, 1), (2, 5.0, 1),
    (8, 0.0, 8), (8, 1.0, 7), (8, 2.2, 6), (8, 2.4, 5), (1, 3.0, 1), (2, -0.05, 2),
])
def test_free_threads(cores, others, threads):
    assert P.free_threads(cores, others) == threads


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux /proc")
def test_a_busy_loop_on_our_cores_is_seen_and_our_own_work_is_not():
    load = P._Load()
    x = np.ones(1 << 22)
    t = time.monotonic()
    while time.monotonic() - t < 0.3:  # our own CPU time is not "others"
        x = x * 1.0000001
    own_only = load.others()
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    busy = subprocess.Popen(["taskset", "-c", cpus, sys.executable, "-c", "while True: pass"]) \
        if shutil.which("taskset") else subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        load.others()  # the window starts with the loop running
        time.sleep(0.6)
        with_loop = load.others()
    finally:
        busy.kill()
        busy.wait()
    assert with_loop >= 0.7  # a whole core (less what the scheduler gave others)
    assert own_only is not None and own_only < with_loop


def test_threads_back_off_and_come_back(monkeypatch):
    """threads_for uses the measured load (faked here); an explicit set_threads is obeyed."""
    monkeypatch.setattr(P, "_max_threads", 2)
    monkeypatch.setattr(P, "_adaptive", True)
    monkeypatch.setattr(P, "LOAD_CHECK", 0.0)
    measured = iter([1.0, 0.1])
    monkeypatch.setattr(P._load, "others", lambda: next(measured))
    with P.threads_for(1):
        assert P._threads == 1
    with P.threads_for(1):
        assert P._threads == 2
    P.set_threads(2)
    try:
        monkeypatch.setattr(P._load, "others", lambda: pytest.fail("measured with fixed threads"))
        with P.threads_for(1):
            assert P._threads == 2
    finally:
        P.set_threads(None)
