"""Rotary position embedding, Hugging Face Llama layout (SPEC 4.1; Su et al., 2021, Eq. 34).

    inv_freq[j] = theta ** (-2j / hd),  j = 0 .. hd/2 - 1
    angle       = p * inv_freq
    rope(u)     = u * [cos, cos] + rotate_half(u) * [sin, sin],   rotate_half([a, b]) = [-b, a]

The precision of the angles is that of `inv_freq`. cogcore's own models compute them
in float64 and round once to float32, so that positions in the hundreds of thousands
keep their precision (`rope_angles: "float64"`). The public families are run as
transformers runs them (`rope_angles: "float32"`): inv_freq computed in float32, the
position cast to float32, their product and its cos/sin in float32; the same model
then gives the same logits at long positions, where the two roundings part.

Llama-3 `rope_scaling` (Meta's Llama 3.1 release; transformers'
`_compute_llama3_parameters`) stretches the slow frequencies of inv_freq:

    wavelen = 2 pi / inv_freq
    wavelen < L / high_freq_factor:  inv_freq                   (fast: unchanged)
    wavelen > L / low_freq_factor:   inv_freq / factor          (slow: stretched)
    otherwise:                       (1 - s) inv_freq / factor + s inv_freq,
                                     s = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
with L = original_max_position_embeddings.

`rope_scaling: {"rope_type": "factors", "factors": f}` divides each frequency by its own
factor, inv_freq[j] / f[j]: how a GGUF file stores Llama-3 scaling (the `rope_freqs`
tensor llama.cpp's converter computes from the same formula; docs/gguf.md).
"""

import math

import numpy as np


def inv_freq(head_dim: int, theta: float, scaling: dict | None = None, angles: str = "float64") -> np.ndarray:
    """The rotation frequencies [hd/2] (a layer computes them once), in the dtype the angles are computed in."""
    if angles == "float64":
        freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    else:   # transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all float32
        exponent = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
        freq = np.float32(1.0) / (np.float32(theta) ** exponent)
    if scaling is not None and scaling.get("rope_type") == "factors":
        freq = (freq / np.asarray(scaling["factors"], freq.dtype)).astype(freq.dtype)
    elif scaling is not None:
        freq = llama3_scaling(freq, scaling)
    return freq


def llama3_scaling(freq: np.ndarray, s: dict) -> np.ndarray:
    """Llama-3 frequency scaling (module docstring), in the dtype of `freq`."""
    t = freq.dtype.type
    factor, low, high = t(s["factor"]), t(s["low_freq_factor"]), t(s["high_freq_factor"])
    L = t(s["original_max_position_embeddings"])
    wavelen = t(2 * math.pi) / freq
    scaled = np.where(wavelen > L / low, freq / factor, freq)
    smooth = (L / wavelen - low) / (high - low)
    smoothed = (t(1) - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < L / high) & ~(wavelen > L / low)
    return np.where(medium, smoothed, scaled).astype(freq.dtype)


def rope_tables(positions: np.ndarray, inv_freq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """positions [T], inv_freq [hd/2] -> cos, sin [T, hd/2] float32 (one half; both halves are equal)."""
    angle = np.asarray(positions).astype(inv_freq.dtype)[:, None] * inv_freq[None, :]   # [T, hd/2]
    return np.cos(angle).astype(np.float32), np.sin(angle).astype(np.float32)


def rope(u: np.ndarray, positions: np.ndarray, inv_freq: np.ndarray) -> np.ndarray:
    """u [T, heads, hd], positions [T], inv_freq [hd/2] -> u rotated for each token's position.

    The angles are computed in the dtype of inv_freq (float64 or float32).
    """
    half = u.shape[-1] // 2
    cos, sin = rope_tables(positions, inv_freq)
    cos, sin = cos[:, None, :], sin[:, None, :]                    # [T, 1, hd/2]
    a, b = u[..., :half], u[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
