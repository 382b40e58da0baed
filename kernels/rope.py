"""Rotary position embedding in place of a fresh copy (twin of cogcore.blocks.rope.rope).

Angles are p * inv_freq in float64, rounded once to float32, as in the reference;
inv_freq is computed by the reference's own formula and passed in.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _rope(u, positions, inv_freq, out):
    T, Hn, hd = u.shape
    half = hd // 2
    for t in range(T):
        p = np.float64(positions[t])
        for j in range(half):
            ang = p * inv_freq[j]
            c = np.float32(np.cos(ang))
            s = np.float32(np.sin(ang))
            for h in range(Hn):
                a = u[t, h, j]
                b = u[t, h, j + half]
                out[t, h, j] = a * c - b * s
                out[t, h, j + half] = b * c + a * s


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rope(u: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """u [T, heads, hd] -> rotated copy."""
    u = np.ascontiguousarray(u, dtype=np.float32)
    out = np.empty_like(u)
    _rope(u, np.asarray(positions, np.int64), inv_freq(u.shape[-1], theta), out)
    return out
