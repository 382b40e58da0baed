"""Linear layers over stored weights: the reference's convention and the kernels' exact widening."""

import numpy as np

from cogcore.blocks.linear import embed, linear
from cogcore.dtypes import f32, to_bf16
from cogcore.kernels.linear import dot_bf16, widen

TOL = dict(rtol=1e-4, atol=1e-5)


def test_linear_convention(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    Wt = rng.standard_normal((5, 3)).astype(np.float32)              # [out, in]
    want = [[sum(float(x[t, i]) * float(Wt[o, i]) for i in range(3)) for o in range(5)] for t in range(2)]
    np.testing.assert_allclose(linear(x, Wt), want, **TOL)
    assert linear(x, Wt.astype(np.float16)).dtype == np.float32


def test_embed_rows_widened():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    got = embed(to_bf16(table), np.array([3, 0, 3]))
    assert got.dtype == np.float32 and np.array_equal(got, table[[3, 0, 3]])


def test_widen_is_bit_exact_including_specials():
    h = np.arange(65536, dtype=np.uint16).view(np.float16).reshape(256, 256)
    got, want = widen(h), h.astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(got.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
    b = np.arange(0, 65536, 7, dtype=np.uint16)[:9000].reshape(90, 100)
    assert np.array_equal(widen(b).view(np.uint32), f32(b).view(np.uint32))


def test_dot_bf16_widens_every_finite_pattern_exactly():
    """The register widening (`u << 16`, bitcast) against a naive loop over the format's definition:
    one nonzero term per dot, so the sum is exactly the widened weight."""
    from numba import njit

    bits = np.arange(2**16, dtype=np.uint16)
    bits = bits[(bits & 0x7F80) != 0x7F80]                  # finite patterns only (inf/NaN poison the sum)
    one_hot = njit(lambda w, j: dot_bf16(np.eye(len(w), dtype=np.float32)[j], w))
    rng = np.random.default_rng(0)
    for u in rng.choice(bits, 300):
        w = np.array([0, u, 0], np.uint16)
        sign = -1.0 if u & 0x8000 else 1.0
        exp, frac = (int(u) >> 7) & 0xFF, int(u) & 0x7F
        want = sign * (2.0 ** (exp - 127) * (1 + frac / 128) if exp else 2.0 ** -126 * frac / 128)
        assert one_hot(w, 1) == np.float32(want)
