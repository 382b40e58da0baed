"""RMSNorm and LayerNorm, alone and fused with the residual add (twins of cogcore.blocks.norm).

`add_*norm(x, y, ...)` returns (h, norm(h)) with h = x + y in one pass over the row:
the model's fast path fuses each residual add with the norm that reads its sum. One row per
token; rows split across threads when there are many (prefill), one thread when
there are few (decode, where a parallel launch costs more than the row).
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .linear import FAST, widen
from .threads import pick, twins


def _rms(x, h, out, w, eps, add, y):
    T, D = x.shape
    for t in prange(T):
        for j in range(D):
            h[t, j] = x[t, j] + y[t, j] if add else x[t, j]
        ss = np.float32(0.0)
        for j in range(D):                       # a loop of its own: see FAST in kernels.linear
            ss += h[t, j] * h[t, j]
        r = np.float32(1.0) / np.sqrt(ss / np.float32(D) + eps)
        for j in range(D):
            out[t, j] = h[t, j] * r * w[j]


def _ln(x, h, out, w, b, eps, add, y):
    T, D = x.shape
    for t in prange(T):
        for j in range(D):
            h[t, j] = x[t, j] + y[t, j] if add else x[t, j]
        s = np.float32(0.0)
        for j in range(D):
            s += h[t, j]
        mu = s / np.float32(D)
        var = np.float32(0.0)
        for j in range(D):
            d = h[t, j] - mu
            var += d * d
        r = np.float32(1.0) / np.sqrt(var / np.float32(D) + eps)
        for j in range(D):
            out[t, j] = (h[t, j] - mu) * r * w[j] + b[j]


_rms_1, _rms_p = twins(_rms, fastmath=FAST)
_ln_1, _ln_p = twins(_ln, fastmath=FAST)


def _rows(a, D):
    """a as float32 C-contiguous rows [T, D] (as it is when it already is: decode's case)."""
    if a.ndim == 2 and a.dtype == np.float32 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, dtype=np.float32).reshape(-1, D)


def _norm(serial, parallel, x, y, *params):
    """(h, norm(h)) with h = x (+ y): a row kernel over x [..., D] viewed as rows [T, D]."""
    shape = x.shape
    x2 = _rows(x, shape[-1])
    add = y is not None
    y2 = _rows(y, shape[-1]) if add else x2
    if y2.shape != x2.shape:
        raise ValueError(f"add_norm: x {list(shape)} and y {list(y.shape)} differ")
    out = np.empty_like(x2)
    h = np.empty_like(x2) if add else out      # without the add, h is computed into out
    pick(serial, parallel, x2.size)(x2, h, out, *params, add, y2)
    if x.ndim == 2:
        return h, out
    return h.reshape(shape), out.reshape(shape)


def rmsnorm(x, w, eps):
    """x [..., D] float32, w [D] stored -> [..., D]."""
    return _norm(_rms_1, _rms_p, x, None, widen(w), np.float32(eps))[1]


def layernorm(x, w, b, eps):
    """x [..., D] float32, w, b [D] stored -> [..., D]."""
    return _norm(_ln_1, _ln_p, x, None, widen(w), widen(b), np.float32(eps))[1]


def add_rmsnorm(x, y, w, eps):
    """(h, rmsnorm(h)) with h = x + y, in one pass over each row."""
    return _norm(_rms_1, _rms_p, x, y, widen(w), np.float32(eps))


def add_layernorm(x, y, w, b, eps):
    """(h, layernorm(h)) with h = x + y, in one pass over each row."""
    return _norm(_ln_1, _ln_p, x, y, widen(w), widen(b), np.float32(eps))
