"""The blocks of the model, one module each, in NumPy: the readable reference.

A block reads its weights at construction and calls its hot loops through an `ops`
object, so that the Numba backend (`kernels.NumbaOps`) can swap in compiled twins
of exactly these functions while the blocks stay as written here.
"""

import numpy as np

from .. import sampling
from ..dtypes import f32
from ..quant import QuantTensor
from . import attention, moe, norm, rope, rwkv7, sparse_attention


class ReferenceOps:
    """The NumPy implementations of every hot function (backend="numpy")."""

    name = "numpy"

    @staticmethod
    def linear(x: np.ndarray, W: np.ndarray) -> np.ndarray:
        """y = x W^T; x [T, in] float32, W [out, in] stored (or quantized: dequantized) -> [T, out] float32."""
        return x @ f32(W).T

    @staticmethod
    def embed(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
        """Rows of the [V, D] embedding for token ids [T] -> [T, D] float32."""
        if isinstance(table, QuantTensor):
            return table.rows(ids)
        return f32(table[ids])

    sigmoid = staticmethod(rwkv7.sigmoid)
    rmsnorm = staticmethod(norm.rmsnorm)
    layernorm = staticmethod(norm.layernorm)
    rope = staticmethod(rope.rope)
    attention = staticmethod(attention.attention)
    nsa_compress = staticmethod(sparse_attention.compress)
    nsa_attention = staticmethod(sparse_attention.nsa_attention)
    wkv7 = staticmethod(rwkv7.wkv7)
    token_probabilities = staticmethod(sampling.token_probabilities)   # the sampler's filters

    def add_rmsnorm(self, x, y, w, eps):
        """The residual add fused with the norm after it: (h, rmsnorm(h)) with h = x + y."""
        h = x + y
        return h, self.rmsnorm(h, w, eps)

    def add_layernorm(self, x, y, w, b, eps):
        """(h, layernorm(h)) with h = x + y."""
        h = x + y
        return h, self.layernorm(h, w, b, eps)

    def moe(self, x, router, gate_proj, up_proj, down_proj, k, norm_topk):
        return moe.moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk, self.linear)
