"""Linear layers over stored weights: the reference's convention and the kernels' exact widening."""

import numpy as np

from cogcore.blocks.linear import embed, linear
from cogcore.dtypes import f32, to_bf16
from cogcore.kernels.linear import widen

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
