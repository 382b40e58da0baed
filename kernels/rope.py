"""Rotary position embedding in place of a fresh copy (twin of cogcore.blocks.rope.rope).

Angles are p * inv_freq in the dtype of inv_freq (float64: cogcore's own models,
rounded once to float32; float32: the public families, as transformers computes
them), as in the reference; the frequencies [hd/2] are the caller's (a layer
computes them once).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(inline="always")
def rotation_table(positions, inv_freq):
    """cos, sin [T, hd/2] float32 of the angles positions[t] * inv_freq[j] (in the dtype of inv_freq):
    computed once for everything rotated at these positions (q and k)."""
    T, half = positions.shape[0], inv_freq.shape[0]
    cos, sin = np.empty((T, half), np.float32), np.empty((T, half), np.float32)
    for t in range(T):
        for j in range(half):
            ang = positions[t] * inv_freq[j]
            cos[t, j] = np.float32(np.cos(ang))
            sin[t, j] = np.float32(np.sin(ang))
    return cos, sin


@njit(inline="always")
def rotate_by(u, cos, sin, out):
    """out [T, heads, hd] = u rotated by the angles of `rotation_table` (cos, sin [T, hd/2])."""
    T, Hn, hd = u.shape
    half = hd // 2
    for t in range(T):
        for h in range(Hn):
            for j in range(half):
                a = u[t, h, j]
                b = u[t, h, j + half]
                out[t, h, j] = a * cos[t, j] - b * sin[t, j]
                out[t, h, j + half] = b * cos[t, j] + a * sin[t, j]


@njit(inline="always")
def rotate(u, positions, inv_freq, out):
    """out [T, heads, hd] = u rotated for each token's position (positions in the dtype of inv_freq)."""
    cos, sin = rotation_table(positions, inv_freq)
    rotate_by(u, cos, sin, out)


@njit(cache=True)
def _rotation_table(positions, inv_freq):
    return rotation_table(positions, inv_freq)


def rotation_tables(positions, inv_freq):
    """cos, sin [T, hd/2] float32 of `rotation_table` for positions [T] (angles in the dtype of inv_freq),
    computed apart from decode's fused steps (kernels.attention.rope_attend, kernels.sparse_attention's
    rope_nsa and nsa_step), which take the table: the angles' dtype is then not part of their signature,
    and those large kernels compile once, not once per dtype."""
    return _rotation_table(np.asarray(positions).astype(inv_freq.dtype), np.ascontiguousarray(inv_freq))


@njit(cache=True)
def _rope(u, positions, inv_freq, out):
    rotate(u, positions, inv_freq, out)


def rope(u: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """u [T, heads, hd], positions [T], inv_freq [hd/2] float64 or float32 -> rotated copy [T, heads, hd]."""
    u = np.ascontiguousarray(u, dtype=np.float32)
    inv_freq = np.ascontiguousarray(inv_freq)
    out = np.empty_like(u)
    _rope(u, np.asarray(positions).astype(inv_freq.dtype), inv_freq, out)
    return out
