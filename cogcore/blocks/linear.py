"""Linear layers and the embedding lookup over weights in their stored dtype (SPEC conventions).

    linear(x, W) = x W^T              x [..., in] float32, W [out, in] -> [..., out] float32
    embed(E, ids) = E[ids]            one row of E [V, D] per token (a linear layer on one-hot rows)

Weights are widened to float32 before the arithmetic (cogcore.dtypes.f32); a quantized
weight (cogcore.quant.QuantTensor) is dequantized.
"""

import numpy as np

from ..dtypes import f32
from ..quant import QuantTensor


def linear(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """y = x W^T; x [..., in] float32, W [out, in] stored (or quantized: dequantized) -> [..., out] float32."""
    return x @ f32(W).T


def embed(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of the [V, D] embedding for token ids [T] -> [T, D] float32."""
    if isinstance(table, QuantTensor):
        return table.rows(ids)
    return f32(table[ids])
