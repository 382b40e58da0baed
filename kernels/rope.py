"""Rotary position embedding in place of a fresh copy (twin of cogcore.blocks.rope.rope).

Angles are p * inv_freq in the dtype of inv_freq (float64: cogcore's own models,
rounded once to float32; float32: the public families, as transformers computes
them), as in the reference; inv_freq comes from the reference's own formula.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _rope(u, positions, inv_freq, out):
    T, Hn, hd = u.shape
    half = hd // 2
    for t in range(T):
        p = positions[t]
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


def rope(u: np.ndarray, positions: np.ndarray, freq) -> np.ndarray:
    """u [T, heads, hd] -> rotated copy; freq: inv_freq [hd/2] (its dtype sets the angles') or theta."""
    u = np.ascontiguousarray(u, dtype=np.float32)
    freq = inv_freq(u.shape[-1], freq) if np.ndim(freq) == 0 else np.ascontiguousarray(freq)
    out = np.empty_like(u)
    _rope(u, np.asarray(positions).astype(freq.dtype), freq, out)
    return out
