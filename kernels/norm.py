"""RMSNorm and LayerNorm, alone and fused with the residual add (twins of cogcore.blocks.norm).

`add_*norm(x, y, ...)` returns (h, norm(h)) with h = x + y in one pass over the row,
which is what a pre-norm block needs between its mixer and its FFN. One row per
token; rows split across threads when there are many (prefill), one thread when
there are few (decode, where a parallel launch costs more than the row).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .linear import FAST, pick



def _rms(x, h, out, w, eps, add, y):
    T, D = x.shape
    for t in prange(T):
        ss = np.float32(0.0)
        for j in range(D):
            v = x[t, j] + y[t, j] if add else x[t, j]
            h[t, j] = v
            ss += v * v
        r = np.float32(1.0) / np.sqrt(ss / np.float32(D) + eps)
        for j in range(D):
            out[t, j] = h[t, j] * r * w[j]


def _ln(x, h, out, w, b, eps, add, y):
    T, D = x.shape
    for t in prange(T):
        s = np.float32(0.0)
        for j in range(D):
            v = x[t, j] + y[t, j] if add else x[t, j]
            h[t, j] = v
            s += v
        mu = s / np.float32(D)
        var = np.float32(0.0)
        for j in range(D):
            d = h[t, j] - mu
            var += d * d
        r = np.float32(1.0) / np.sqrt(var / np.float32(D) + eps)
        for j in range(D):
            out[t, j] = (h[t, j] - mu) * r * w[j] + b[j]


_rms_1 = njit(cache=True, fastmath=FAST)(_rms)
_rms_p = njit(cache=True, fastmath=FAST, parallel=True)(_rms)
_ln_1 = njit(cache=True, fastmath=FAST)(_ln)
_ln_p = njit(cache=True, fastmath=FAST, parallel=True)(_ln)


def _rows(x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x, x.reshape(-1, x.shape[-1])


def rmsnorm(x, w32, eps, y=None):
    """x [..., D] (+ y) -> (h, rmsnorm(h)); w32 [D] float32."""
    x, x2 = _rows(x)
    add = y is not None
    y2 = _rows(y)[1] if add else x2
    out = np.empty_like(x2)
    h = np.empty_like(x2) if add else out      # without the add, h is computed into out
    pick(_rms_1, _rms_p, x2.size)(x2, h, out, w32, np.float32(eps), add, y2)
    return h.reshape(x.shape), out.reshape(x.shape)


def layernorm(x, w32, b32, eps, y=None):
    """x [..., D] (+ y) -> (h, layernorm(h)); w32, b32 [D] float32."""
    x, x2 = _rows(x)
    add = y is not None
    y2 = _rows(y)[1] if add else x2
    out = np.empty_like(x2)
    h = np.empty_like(x2) if add else out      # without the add, h is computed into out
    pick(_ln_1, _ln_p, x2.size)(x2, h, out, w32, b32, np.float32(eps), add, y2)
    return h.reshape(x.shape), out.reshape(x.shape)
