"""Rotary position embedding in place of a fresh copy (twin of cogcore.blocks.rope.rope).

Angles are p * inv_freq in float64, rounded once to float32, as in the reference;
the frequencies [hd/2] are the caller's (a layer computes them once).
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


def rope(u: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """u [T, heads, hd], positions [T], inv_freq [hd/2] float64 -> rotated copy [T, heads, hd]."""
    u = np.ascontiguousarray(u, dtype=np.float32)
    out = np.empty_like(u)
    _rope(u, np.asarray(positions, np.int64), np.asarray(inv_freq, np.float64), out)
    return out
