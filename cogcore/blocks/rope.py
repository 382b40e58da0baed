"""Rotary position embedding, Hugging Face Llama layout (SPEC 4.1; Su et al., 2021, Eq. 34).

    inv_freq[j] = theta ** (-2j / hd),  j = 0 .. hd/2 - 1
    angle       = p * inv_freq
    rope(u)     = u * [cos, cos] + rotate_half(u) * [sin, sin],   rotate_half([a, b]) = [-b, a]

The angles are computed in float64 and rounded once to float32, so that positions
in the hundreds of thousands keep their precision.
"""

import numpy as np


def inv_freq(head_dim: int, theta: float) -> np.ndarray:
    """The rotation frequencies [hd/2] float64 (a layer computes them once)."""
    return theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)


def rope_tables(positions: np.ndarray, inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """positions [T], inv_freq [hd/2] -> cos, sin [T, hd/2] float32 (one half; both halves are equal)."""
    angle = np.asarray(positions).astype(np.float64)[:, None] * inv_freq[None, :]   # [T, hd/2]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def rope(u: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """u [T, heads, hd], positions [T], inv_freq [hd/2] -> u rotated for each token's position."""
    half = u.shape[-1] // 2
    cos, sin = rope_tables(positions, inv_freq)
    cos, sin = cos[:, None, :], sin[:, None, :]                    # [T, 1, hd/2]
    a, b = u[..., :half], u[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
