"""The sampler: greedy, temperature, top-k, top-p, min-p, repetition penalty, seeding."""

import numpy as np
import pytest

from gemma_ref import GemmaRefError, SamplingParams, sample

LOGITS = np.log(np.array([0.5, 0.3, 0.15, 0.05]))


def draws(params, n=2000, seed=0, seen=()):
    rng = np.random.default_rng(seed)
    return np.bincount([sample(LOGITS, rng, params, seen) for _ in range(n)], minlength=4)


def test_greedy_is_argmax():
    assert sample(LOGITS, np.random.default_rng(0), SamplingParams()) == 0


def test_temperature_one_follows_the_distribution():
    counts = draws(SamplingParams(temperature=1.0), n=4000)
    np.testing.assert_allclose(counts / 4000, [0.5, 0.3, 0.15, 0.05], atol=0.03)


def test_top_k_top_p_min_p_restrict_support():
    assert set(np.nonzero(draws(SamplingParams(temperature=1.0, top_k=2)))[0]) == {0, 1}
    # top_p 0.7: 0.5 < 0.7 so token 1 is needed too; 0.8 >= 0.7 so token 2 is not
    assert set(np.nonzero(draws(SamplingParams(temperature=1.0, top_p=0.7)))[0]) == {0, 1}
    # min_p 0.5: keep p >= 0.25 -> tokens 0, 1
    assert set(np.nonzero(draws(SamplingParams(temperature=1.0, min_p=0.5)))[0]) == {0, 1}


def test_same_seed_same_tokens_different_seed_different():
    p = SamplingParams(temperature=1.0)
    assert (draws(p, 50, seed=7) == draws(p, 50, seed=7)).all()
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(2)
    a = [sample(LOGITS, rng_a, p) for _ in range(50)]
    b = [sample(LOGITS, rng_b, p) for _ in range(50)]
    assert a != b


def test_repetition_penalty():
    logits = np.array([2.0, 1.9, -1.0])
    assert sample(logits, np.random.default_rng(0), SamplingParams(repetition_penalty=1.2), seen=[0]) == 1


@pytest.mark.parametrize("kw", [dict(temperature=-1), dict(top_k=-1), dict(top_k=1.5), dict(top_p=0),
                                dict(top_p=1.5), dict(min_p=1), dict(repetition_penalty=0)])
def test_bad_arguments(kw):
    with pytest.raises(GemmaRefError, match="bad sampling argument"):
        SamplingParams(**kw)
