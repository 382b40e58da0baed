"""RMSNorm and LayerNorm over the last axis (SPEC Section 4).

    rmsnorm(x)   = x / sqrt(mean(x^2) + eps) * w                   (Zhang & Sennrich, 2019, Eq. 4)
    layernorm(x) = (x - mean(x)) / sqrt(var(x) + eps) * w + b       (Ba et al., 2016; biased variance)
"""

import numpy as np

from ..dtypes import f32


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """x [..., D] float32, w [D] -> [..., D]."""
    ms = np.mean(x * x, axis=-1, keepdims=True)                    # [..., 1]
    return x / np.sqrt(ms + np.float32(eps)) * f32(w)


def layernorm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """x [..., D] float32, w, b [D] -> [..., D]."""
    mu = np.mean(x, axis=-1, keepdims=True)                        # [..., 1]
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)           # [..., 1]
    return (x - mu) / np.sqrt(var + np.float32(eps)) * f32(w) + f32(b)


class Norm:
    """The norm named by `norm_type`, with its weights `{prefix}.weight` (and `.bias`)."""

    def __init__(self, weights, prefix: str, dim: int, norm_type: str, eps: float, ops, bias: bool = True):
        """bias=False: a layernorm without `.bias` (fla's `norm_bias: false`), computed with b = 0.
        The weights are widened to float32 once here, not on every call (two norms a layer a token)."""
        self.w = f32(weights.take(f"{prefix}.weight", (dim,)))
        self.b = None
        if norm_type == "layernorm":
            self.b = f32(weights.take(f"{prefix}.bias", (dim,))) if bias else np.zeros(dim, np.float32)
        self.eps, self.ops = eps, ops

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.b is None:
            return self.ops.rmsnorm(x, self.w, self.eps)
        return self.ops.layernorm(x, self.w, self.b, self.eps)

    def residual(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(h, Norm(h)) with h = x + y as one fused op: the model's fast path, for ops tables that
        offer it (cogcore.ops.FusedResidualNorm); the reference reads the two steps as written."""
        if self.b is None:
            return self.ops.add_rmsnorm(x, y, self.w, self.eps)
        return self.ops.add_layernorm(x, y, self.w, self.b, self.eps)
