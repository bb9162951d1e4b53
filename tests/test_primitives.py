"""Layer 1: each primitive against numbers computed by hand."""

import math

import numpy as np
import pytest

from gemma_ref.model import attention, gelu_tanh, moe, rms_norm, rope, rope_angles, route, softcap, softmax


def test_rms_norm_by_hand():
    # mean(x^2) = (0.01 + 0.04) / 2 = 0.025; 1/sqrt(0.025 + 1e-6) = 6.32443...
    x = np.array([0.1, 0.2], np.float32)
    inv = 1 / math.sqrt(0.025 + 1e-6)
    np.testing.assert_allclose(rms_norm(x, np.zeros(2, np.float32), 1e-6), [0.1 * inv, 0.2 * inv], rtol=1e-6)
    # the weight enters as (1 + w): w = [1, -0.5] scales by [2, 0.5]
    np.testing.assert_allclose(rms_norm(x, np.array([1.0, -0.5], np.float32), 1e-6),
                               [0.2 * inv, 0.1 * inv], rtol=1e-6)


def test_rms_norm_gemma4_scales_by_w_or_nothing():
    # Gemma 4: offset 0 (x_normed * w), and the weightless norm of values and the router
    x = np.array([0.1, 0.2], np.float32)
    inv = 1 / math.sqrt(0.025 + 1e-6)
    np.testing.assert_allclose(rms_norm(x, np.array([2.0, 0.5], np.float32), 1e-6, 0.0),
                               [0.2 * inv, 0.1 * inv], rtol=1e-6)
    np.testing.assert_allclose(rms_norm(x, None, 1e-6), [0.1 * inv, 0.2 * inv], rtol=1e-6)


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


def test_proportional_rope_rotates_only_the_first_pairs():
    # Gemma 4 full layers: H = 8, 4 pairs, partial 0.25 -> 1 pair rotates; its frequency
    # is theta^0 = 1 whatever H (the exponent is over the full head_dim)
    cos, sin = rope_angles(np.array([[3]]), 8, 1e6, 1.0, np.float64, rotated=1)
    np.testing.assert_allclose(cos[0, 0], [math.cos(3), 1, 1, 1])
    np.testing.assert_allclose(sin[0, 0], [math.sin(3), 0, 0, 0])
    cos, _ = rope_angles(np.array([[1]]), 8, 100.0, 1.0, np.float64, rotated=2)
    np.testing.assert_allclose(cos[0, 0], [math.cos(1), math.cos(100 ** -0.25), 1, 1])


def test_route_by_hand():
    # 3 experts, router = identity on D = 3 (scale = sqrt(3) cancels 1/sqrt(D)):
    # p = softmax(rms(x)); top 2 renormalized, times per_expert_scale
    x = np.array([[3.0, 2.0, 1.0]])
    experts, weights = route(x, np.eye(3), np.full(3, math.sqrt(3)), np.array([1.0, 2.0, 1.0]), 2, 0.0)
    h = x[0] / math.sqrt((9 + 4 + 1) / 3)
    p = np.exp(h) / np.exp(h).sum()
    order = np.argsort(experts[0])
    assert experts[0][order].tolist() == [0, 1]
    np.testing.assert_allclose(weights[0][order], [p[0] / (p[0] + p[1]), 2 * p[1] / (p[0] + p[1])])


def test_moe_uses_each_tokens_top_k_experts_only():
    """The mixture equals the sum over each token's chosen experts, reads only the experts
    some token chose (each once, for all its tokens), and never the others."""
    rng = np.random.default_rng(0)
    M, D, F, E = 5, 4, 3, 6
    x = rng.standard_normal((M, D))
    gate_up, down = rng.standard_normal((E, 2 * F, D)), rng.standard_normal((E, D, F))
    experts = np.array([[0, 2], [2, 0], [3, 0], [2, 3], [0, 3]])  # expert 1, 4, 5: never chosen
    weights = rng.random((M, 2))
    read = []
    out = moe(x, experts, weights, lambda e: read.append(e) or gate_up[e], lambda e: down[e])
    assert sorted(read) == [0, 2, 3]
    for m in range(M):
        want = sum(w * (down[e] @ (gelu_tanh(gate_up[e][:F] @ x[m]) * (gate_up[e][F:] @ x[m])))
                   for e, w in zip(experts[m], weights[m]))
        np.testing.assert_allclose(out[m], want, rtol=1e-12)


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
