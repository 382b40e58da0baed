"""RMSNorm and LayerNorm against their formulas (SPEC Section 4)."""

import math

import numpy as np

from cogcore.blocks.norm import layernorm, rmsnorm

TOL = dict(rtol=1e-4, atol=1e-5)


def test_rmsnorm_against_formula(rng):
    x = rng.standard_normal((7, 13)).astype(np.float32) * 3
    w = rng.standard_normal(13).astype(np.float32)
    got = rmsnorm(x, w, 1e-5)
    for t in range(7):
        ms = sum(float(v) ** 2 for v in x[t]) / 13
        want = [float(x[t, j]) / math.sqrt(ms + 1e-5) * float(w[j]) for j in range(13)]
        np.testing.assert_allclose(got[t], want, **TOL)


def test_layernorm_against_formula_biased_variance(rng):
    x = (rng.standard_normal((5, 11)) * 2 + 4).astype(np.float32)
    w, b = rng.standard_normal(11).astype(np.float32), rng.standard_normal(11).astype(np.float32)
    got = layernorm(x, w, b, 1e-5)
    for t in range(5):
        row = [float(v) for v in x[t]]
        mu = sum(row) / 11
        var = sum((v - mu) ** 2 for v in row) / 11                   # biased (divide by D, not D-1)
        want = [(v - mu) / math.sqrt(var + 1e-5) * float(w[j]) + float(b[j]) for j, v in enumerate(row)]
        np.testing.assert_allclose(got[t], want, **TOL)


def test_norm_eps_is_used(rng):
    x = np.full((1, 4), 1e-3, np.float32)
    w = np.ones(4, np.float32)
    # mean(x^2) = 1e-6 is comparable with eps = 1e-6: the result is 1e-3 / sqrt(2e-6)
    np.testing.assert_allclose(rmsnorm(x, w, 1e-6), 1e-3 / math.sqrt(2e-6), rtol=1e-5)
    np.testing.assert_allclose(layernorm(x, w, np.zeros(4, np.float32), 1e-6), 0.0, atol=1e-6)


def test_norm_bf16_weights_widened():
    x = np.array([[1.0, -2.0, 3.0]], np.float32)
    w_bits = np.array([0x3FC0, 0x4000, 0xBF80], np.uint16)              # 1.5, 2.0, -1.0 in bfloat16
    rms = math.sqrt((1 + 4 + 9) / 3 + 1e-5)
    np.testing.assert_allclose(rmsnorm(x, w_bits, 1e-5)[0], [1.5 / rms, -4.0 / rms, -3.0 / rms], rtol=1e-6)
