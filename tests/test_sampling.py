"""Sampling as a pure function of (logits, options, rng), checked against closed forms."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from cogcore.errors import InputError
from cogcore.sampling import (apply_repetition_penalty, check_options, greedy, sample, sample_next,
                              token_probabilities)


def softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def rand_logits(seed, V=50, scale=2.0):
    return (np.random.default_rng(seed).standard_normal(V) * scale).astype(np.float32)


# ---- greedy ---------------------------------------------------------------------------------
def test_greedy_ties_to_lowest_id():
    logits = np.array([0.0, 3.0, 1.0, 3.0, 3.0], np.float32)
    assert greedy(logits) == 1
    assert sample(logits, None, temperature=0) == 1          # no rng needed
    assert sample(logits, None, temperature=0, top_k=1, top_p=0.1, min_p=0.9) == 1
    p = token_probabilities(logits, temperature=0)
    assert p.tolist() == [0, 1, 0, 0, 0]


# ---- the distribution -----------------------------------------------------------------------
@pytest.mark.parametrize("T", [0.3, 1.0, 2.5])
def test_temperature_is_tempered_softmax(T):
    z = rand_logits(1)
    np.testing.assert_allclose(token_probabilities(z, T), softmax(z.astype(np.float64) / T), rtol=1e-12)


@pytest.mark.parametrize("k", [1, 2, 7, 50, 80])
def test_top_k(k):
    z = rand_logits(2)
    p = token_probabilities(z, 1.0, top_k=k)
    top = np.argsort(-z, kind="stable")[:k]
    expected = np.zeros_like(p)
    expected[top] = softmax(z)[top] / softmax(z)[top].sum()
    np.testing.assert_allclose(p, expected, rtol=1e-12, atol=0)


def test_top_k_ties_to_lower_id():
    z = np.array([1.0, 2.0, 2.0, 2.0, 0.0], np.float32)
    assert np.flatnonzero(token_probabilities(z, 1.0, top_k=2)).tolist() == [1, 2]


@pytest.mark.parametrize("top_p", [1e-6, 0.1, 0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("seed", [3, 4])
def test_top_p_keeps_smallest_set_reaching_p(top_p, seed):
    z = rand_logits(seed)
    full = softmax(z)
    p = token_probabilities(z, 1.0, top_p=top_p)
    kept = np.flatnonzero(p)
    # closed form: the most probable ids, as few as possible, whose mass is >= top_p
    order = np.argsort(-full, kind="stable")
    m = int(np.argmax(np.cumsum(full[order]) >= top_p - 1e-12)) + 1
    assert sorted(kept.tolist()) == sorted(order[:m].tolist())
    assert full[kept].sum() >= top_p - 1e-9
    assert full[kept].sum() - full[kept].min() < top_p          # smallest: one fewer falls short
    np.testing.assert_allclose(p[kept], full[kept] / full[kept].sum(), rtol=1e-12)


def test_top_p_exact_example():
    # probabilities 0.5, 0.3, 0.15, 0.05: p=0.8 keeps two ids, p=0.81 three
    z = np.log(np.array([0.15, 0.5, 0.05, 0.3]))
    assert np.flatnonzero(token_probabilities(z, 1.0, top_p=0.8)).tolist() == [1, 3]
    assert np.flatnonzero(token_probabilities(z, 1.0, top_p=0.81)).tolist() == [0, 1, 3]
    np.testing.assert_allclose(token_probabilities(z, 1.0, top_p=0.8)[[1, 3]], [0.5 / 0.8, 0.3 / 0.8])


def test_top_p_after_top_k_uses_renormalised_mass():
    z = np.log(np.array([0.4, 0.3, 0.2, 0.1]))
    # top-2 renormalised: 0.571, 0.429 -> top_p 0.5 keeps only id 0; top_p 0.6 keeps both
    assert np.flatnonzero(token_probabilities(z, 1.0, top_k=2, top_p=0.5)).tolist() == [0]
    assert np.flatnonzero(token_probabilities(z, 1.0, top_k=2, top_p=0.6)).tolist() == [0, 1]


@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.3, 1.0])
def test_min_p(min_p):
    z = rand_logits(5)
    full = softmax(z)
    p = token_probabilities(z, 1.0, min_p=min_p)
    kept = full >= min_p * full.max()
    assert (p > 0).tolist() == kept.tolist()
    np.testing.assert_allclose(p[kept], full[kept] / full[kept].sum(), rtol=1e-12)


def test_min_p_uses_tempered_distribution():
    z = np.log(np.array([0.5, 0.25, 0.25]))
    assert np.flatnonzero(token_probabilities(z, 1.0, min_p=0.5)).tolist() == [0, 1, 2]
    # at T=0.5 the ratios square: 0.25 < 0.5 * 1
    assert np.flatnonzero(token_probabilities(z, 0.5, min_p=0.5)).tolist() == [0]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), T=st.floats(0.05, 5), k=st.integers(0, 60),
       top_p=st.floats(1e-3, 1.0), min_p=st.floats(0, 1))
def test_distribution_properties(seed, T, k, top_p, min_p):
    z = rand_logits(seed, V=40, scale=3.0)
    p = token_probabilities(z, T, k, top_p, min_p)
    assert abs(p.sum() - 1) < 1e-12 and (p >= 0).all()
    assert p[int(np.argmax(z))] > 0                              # the best id always survives
    if k:
        assert np.count_nonzero(p) <= k
    # a larger top_p never keeps fewer ids
    bigger = token_probabilities(z, T, k, min(1.0, top_p + 0.2), min_p)
    assert set(np.flatnonzero(p)) <= set(np.flatnonzero(bigger))
    # kept ids keep their relative probabilities
    full = softmax(z.astype(np.float64) / T)
    kept = p > 0
    np.testing.assert_allclose(p[kept], full[kept] / full[kept].sum(), rtol=1e-9)


# ---- drawing ----------------------------------------------------------------------------------
def frequencies(z, n, seed=0, **opts):
    rng = np.random.default_rng(seed)
    counts = np.bincount([sample(z, rng, **opts) for _ in range(n)], minlength=len(z))
    return counts / n


@pytest.mark.parametrize("opts", [dict(temperature=0.7), dict(temperature=1.5, top_p=0.8),
                                  dict(temperature=1.0, top_k=3, min_p=0.2)])
def test_draw_frequencies_match_distribution(opts):
    z = np.array([1.0, 2.0, 0.5, 3.0, -1.0, 2.2], np.float32)
    n = 20000
    freq = frequencies(z, n, **opts)
    p = token_probabilities(z, **opts)
    sigma = np.sqrt(p * (1 - p) / n)
    assert np.all(np.abs(freq - p) <= 5 * sigma + 1e-12), (freq, p)
    assert np.all(freq[p == 0] == 0)                          # filtered ids are never drawn


def test_seed_reproducible():
    z = rand_logits(6)
    a = [sample(z, np.random.default_rng(42), temperature=1.0) for _ in range(5)]
    draws = lambda s: [sample(z, rng, temperature=1.0) for rng in [np.random.default_rng(s)] for _ in range(30)]
    assert draws(1) == draws(1)
    assert draws(1) != draws(2)
    assert len(set(a)) == 1


# ---- repetition penalty -----------------------------------------------------------------------
def test_repetition_penalty_ctrl():
    z = np.array([2.0, -2.0, 1.0, -1.0, 0.5], np.float32)
    out = apply_repetition_penalty(z, [0, 1, 1, 1, 4], 2.0)
    assert out.tolist() == [1.0, -4.0, 1.0, -1.0, 0.25]        # once per id, however often seen
    assert z.tolist() == [2.0, -2.0, 1.0, -1.0, 0.5]          # input untouched
    assert apply_repetition_penalty(z, [0, 1], 1.0).tolist() == z.tolist()
    assert apply_repetition_penalty(z, [], 3.0).tolist() == z.tolist()
    assert out.dtype == np.float32


def test_repetition_penalty_changes_greedy_choice():
    z = np.array([3.0, 2.0, 0.0], np.float32)
    assert sample_next(z, None, [0], temperature=0) == 0
    assert sample_next(z, None, [0], temperature=0, repetition_penalty=2.0) == 1


# ---- option checks ----------------------------------------------------------------------------
@pytest.mark.parametrize("opts,name", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_p=-1), "top_p"),
    (dict(top_k=-1), "top_k"), (dict(top_k=1.5), "top_k"), (dict(min_p=-0.1), "min_p"),
    (dict(min_p=1.1), "min_p"), (dict(repetition_penalty=0), "repetition_penalty")])
def test_bad_options(opts, name):
    with pytest.raises(InputError, match=name):
        check_options(**opts)


def test_rng_needed_when_sampling():
    with pytest.raises(InputError, match="rng"):
        sample(np.zeros(3, np.float32), None, temperature=1.0)
    with pytest.raises(InputError, match="NaN"):
        token_probabilities(np.array([0.0, np.nan]), 1.0)
