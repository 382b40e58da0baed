"""The RWKV-7 state recurrence (twin of cogcore.blocks.rwkv7.wkv7).

One fused pass per token and head: sa = S (-kk); S = S diag(w) + sa (kk*a)^T + v k^T;
y = S r, each row of S read and written once per token (the reference makes
five [N, N] temporaries per token). Heads run in parallel; tokens in order.
The projections around it are batched over the chunk by the mixer (BLAS).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .linear import FAST
from .threads import pick, twins


def _wkv7(r, w, k, v, kk, a, S, y):
    T, Hr, N = r.shape
    for h in prange(Hr):
        b = np.empty(N, np.float32)
        for t in range(T):
            for j in range(N):
                b[j] = kk[t, h, j] * a[t, h, j]
            for i in range(N):
                Si = S[h, i]
                sa = np.float32(0.0)
                for j in range(N):
                    sa -= Si[j] * kk[t, h, j]
                vi = v[t, h, i]
                yi = np.float32(0.0)
                for j in range(N):
                    s = Si[j] * w[t, h, j] + (sa * b[j] + vi * k[t, h, j])
                    Si[j] = s
                    yi += s * r[t, h, j]
                y[t, h, i] = yi


_wkv7_1, _wkv7_p = twins(_wkv7, fastmath=FAST)


def wkv7(r, w, k, v, kk, a, S):
    """r, w, k, v, kk, a [T, Hr, N] float32; S [Hr, N, N] float32 (updated in place) -> (y, S)."""
    c = lambda x: np.ascontiguousarray(x, np.float32)
    if not (S.flags.c_contiguous and S.flags.writeable and S.dtype == np.float32):
        S = np.array(S, np.float32)
    y = np.empty(r.shape, np.float32)
    pick(_wkv7_1, _wkv7_p, r.size * r.shape[-1])(c(r), c(w), c(k), c(v), c(kk), c(a), S, y)
    return y, S
