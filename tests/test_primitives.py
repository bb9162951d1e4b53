"""Layer 1: each primitive against numbers computed by hand."""

import math

import numpy as np
import pytest

from gemma_ref.model import attention, gelu_tanh, rms_norm, rope, rope_angles, softcap, softmax


def test_rms_norm_by_hand():
    # mean(x^2) = (0.01 + 0.04) / 2 = 0.025; 1/sqrt(0.025 + 1e-6) = 6.32443...
    x = np.array([0.1, 0.2], np.float32)
    inv = 1 / math.sqrt(0.025 + 1e-6)
    np.testing.assert_allclose(rms_norm(x, np.zeros(2, np.float32), 1e-6), [0.1 * inv, 0.2 * inv], rtol=1e-6)
    # the weight enters as (1 + w): w = [1, -0.5] scales by [2, 0.5]
    np.testing.assert_allclose(rms_norm(x, np.array([1.0, -0.5], np.float32), 1e-6),
                               [0.2 * inv, 0.1 * inv], rtol=1e-6)


def test_rms_norm_keeps_float32():
    assert rms_norm(np.ones(4, np.float32), np.zeros(4, np.float32), 1e-6).dtype == np.float32


def test_gelu_tanh_by_hand_and_not_exact_gelu():
    # gelu_tanh(1) = 0.5 * (1 + tanh(sqrt(2/pi) * 1.044715)) = 0.8411920
    assert gelu_tanh(np.float32(1.0)) == pytest.approx(0.8411920, abs=1e-6)
    assert gelu_tanh(np.float32(0.0)) == 0.0
    # exact (erf) GELU(1) = 0.8413447: differs in the 4th decimal
    assert abs(gelu_tanh(1.0) - 0.8413447) > 1e-4
    assert gelu_tanh(np.ones(3, np.float32)).dtype == np.float32


def test_softcap_by_hand():
    assert softcap(50.0, 50.0) == pytest.approx(50 * math.tanh(1.0))
    assert softcap(1e6, 30.0) == pytest.approx(30.0)


def test_softmax_by_hand():
    np.testing.assert_allclose(softmax(np.array([0.0, math.log(3.0)])), [0.25, 0.75])


def test_rope_split_half_by_hand():
    # H = 4: pairs are (x0, x2) and (x1, x3), not (x0, x1). theta = 100:
    # inv_freq = [100^0, 100^-0.5] = [1, 0.1]; position 1 -> angles [1, 0.1].
    cos, sin = rope_angles(np.array([[1]]), 4, 100.0, 1.0, np.float64)
    np.testing.assert_allclose(cos[0, 0], [math.cos(1), math.cos(0.1)])
    x = np.array([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    out = rope(x, cos, sin)[0, 0, 0]
    np.testing.assert_allclose(out, [math.cos(1), 0, math.sin(1), 0], atol=1e-12)
    x = np.array([0.0, 1.0, 0.0, 0.0]).reshape(1, 1, 1, 4)
    np.testing.assert_allclose(rope(x, cos, sin)[0, 0, 0], [0, math.cos(0.1), 0, math.sin(0.1)], atol=1e-12)


def test_rope_linear_scaling_divides_positions():
    a = rope_angles(np.array([[8]]), 8, 1e6, 8.0, np.float64)
    b = rope_angles(np.array([[1]]), 8, 1e6, 1.0, np.float64)
    np.testing.assert_allclose(a, b)


def test_attention_by_hand():
    # one head, H = 1; keys at positions 0, 1; query at 1 sees both equally when q.k is equal
    q = np.ones((1, 1, 1, 1))
    k = np.ones((1, 2, 1, 1))
    v = np.array([1.0, 3.0]).reshape(1, 2, 1, 1)
    out = attention(q, k, v, np.array([[1]]), np.array([[0, 1]]), scale=1.0)
    assert out.item() == pytest.approx(2.0)
    # sliding window 1: only the key at distance 0 is visible
    out = attention(q, k, v, np.array([[1]]), np.array([[0, 1]]), scale=1.0, window=1)
    assert out.item() == pytest.approx(3.0)
    # future key (position 2) and empty slot (-1) are never visible
    out = attention(q, k, v, np.array([[0]]), np.array([[-1, 0]]), scale=1.0)
    assert out.item() == pytest.approx(3.0)


def test_attention_window_boundary():
    # window w: a key at distance w - 1 is visible, one at distance w is not
    q = np.zeros((1, 1, 1, 1))
    k = np.zeros((1, 2, 1, 1))
    v = np.array([10.0, 20.0]).reshape(1, 2, 1, 1)
    out = attention(q, k, v, np.array([[4]]), np.array([[0, 1]]), scale=1.0, window=4)
    assert out.item() == pytest.approx(20.0)  # distance 4 hidden, distance 3 seen
    out = attention(q, k, v, np.array([[4]]), np.array([[0, 1]]), scale=1.0, window=5)
    assert out.item() == pytest.approx(15.0)


def test_grouped_query_heads_share_kv():
    # N = 4 query heads over K = 2 kv heads: heads 0,1 read kv head 0; heads 2,3 kv head 1
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 3, 4, 2))
    k = rng.standard_normal((1, 3, 2, 2))
    v = rng.standard_normal((1, 3, 2, 2))
    pos = np.arange(3)[None]
    out = attention(q, k, v, pos, pos, scale=0.5).reshape(1, 3, 4, 2)
    for n in range(4):
        single = attention(q[:, :, n:n + 1], k[:, :, n // 2:n // 2 + 1], v[:, :, n // 2:n // 2 + 1],
                           pos, pos, scale=0.5)
        np.testing.assert_allclose(out[:, :, n], single.reshape(1, 3, 2), rtol=1e-12)
