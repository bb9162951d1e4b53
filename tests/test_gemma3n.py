"""Gemma 3n: its small functions on hand-computed numbers, and tiny checkpoints against
transformers (tests/data/tiny/gemma3n-*, made by scripts/make_tiny_goldens_gemma3n.py)."""

import math

import numpy as np
import pytest

from conftest import DATA
from gemma_ref.model import (altup_correct, altup_merge, altup_predict, altup_router, altup_streams,
                             gaussian_top_k, laurel, magnitude_matched)

# --- the functions, by hand -------------------------------------------------------


def test_gaussian_top_k_cuts_at_mean_plus_z_std():
    g = np.array([[1.0, 2.0, 3.0, 4.0]])
    # sparsity 0.5: z = 0, the cutoff is the mean 2.5
    np.testing.assert_allclose(gaussian_top_k(g, 0.5), [[0, 0, 0.5, 1.5]], atol=1e-12)
    # sparsity Phi(1) = 0.8413...: z = 1, cutoff = 2.5 + population std sqrt(1.25)
    cut = 2.5 + math.sqrt(1.25)
    np.testing.assert_allclose(gaussian_top_k(g, 0.8413447460685429), [[0, 0, 0, 4 - cut]], atol=1e-9)
    # per row, and in the input's dtype
    out = gaussian_top_k(np.array([[1, 2, 3, 4], [10, 10, 10, 50]], np.float32), 0.5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[1], [0, 0, 0, 30])


def test_altup_predict_mixes_streams_by_a_per_token_matrix():
    xs = np.array([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])  # [S=2, B=1, T=1, D=2]
    modalities = np.array([[[1.0, 0.0]]])  # [B, T, S]: only the first column of w counts
    w = np.array([[0.1, 9], [0.2, 9], [0.3, 9], [0.4, 9]])  # [S*S, S] -> c = [[.1, .2], [.3, .4]]
    p = altup_predict(xs, modalities, w)
    # prediction_0 = x0 + .1 x0 + .2 x1 = [1.1, 0.4];  prediction_1 = x1 + .3 x0 + .4 x1 = [0.3, 2.8]
    np.testing.assert_allclose(p[:, 0, 0], [[1.1, 0.4], [0.3, 2.8]])


def test_altup_correct_adds_the_scaled_innovation_to_every_stream():
    preds = np.array([[[[1.0, 1.0]]], [[[5.0, -5.0]]]])  # [S=2, 1, 1, D=2]
    activated = np.array([[[2.0, 3.0]]])  # the block's output for the active stream 0
    modalities = np.array([[[1.0, 1.0]]])
    w = np.array([[0.5, 0.0], [0.0, -1.0]])  # c = [0.5, -1] -> scales 1.5 and 0
    out = altup_correct(preds, activated, modalities, w, active=0)
    # innovation = activated - preds[0] = [1, 2]
    np.testing.assert_allclose(out[:, 0, 0], [[2.5, 4.0], [5.0, -5.0]])


def test_altup_router_is_tanh_of_the_normed_stream_over_d():
    x = np.array([[[3.0, 4.0]]])  # rms 3.5355: normed [0.8485, 1.1314]
    r = altup_router(x, np.ones(2), np.array([[1.0, 1.0], [2.0, 0.0]]), eps=0.0)
    normed = np.array([3.0, 4.0]) / math.sqrt(12.5) / 2  # ... times 1/D
    np.testing.assert_allclose(r[0, 0], np.tanh([normed.sum(), 2 * normed[0]]))


def test_laurel_is_a_normed_low_rank_residual():
    h = np.array([[[3.0, 4.0]]])
    out = laurel(h, np.array([[1.0, 0.0]]), np.array([[1.0], [0.0]]), np.array([2.0, 2.0]), eps=0.0)
    # low = [3, 0]; rms 3/sqrt(2); normed [sqrt 2, 0] * w 2
    np.testing.assert_allclose(out[0, 0], [3 + 2 * math.sqrt(2), 4.0])


def test_streams_are_magnitude_matched_projections_and_merge_back():
    x = np.array([[[3.0, 4.0], [1.0, -1.0]]])  # [B=1, T=2, D=2]
    xs = altup_streams(x, [2 * np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0]])])  # S = 3
    np.testing.assert_allclose(xs[0], x)
    np.testing.assert_allclose(xs[1], x)  # 2x rescaled to x's magnitude
    np.testing.assert_allclose(xs[2], x[..., ::-1])  # swapped, same magnitude
    # merge: stream 1 unprojected by -I, stream 2 swapped back: mean(x, -x, x) = x / 3
    np.testing.assert_allclose(altup_merge(xs, [-np.eye(2), np.array([[0.0, 1.0], [1.0, 0.0]])]), x / 3)
    # a zero projection stays zero (the magnitude is clamped, not divided by 0)
    assert np.all(magnitude_matched(np.zeros((1, 2)), np.ones((1, 1))) == 0)
