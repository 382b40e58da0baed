"""Linear layers and the embedding lookup over weights in their stored dtype (SPEC conventions).

    linear(x, W) = x W^T              x [..., in] float32, W [out, in] -> [..., out] float32
    embed(E, ids) = E[ids]            one row of E [V, D] per token (a linear layer on one-hot rows)

Weights are widened to float32 before the arithmetic (cogcore.dtypes.f32); a quantized
weight (cogcore.quant.QuantTensor) is dequantized.

With int8 activations (an option, `cogcore.load(..., int8_activations=True)`; GGML's CPU
path for q8_0 / q4_0 weights), a quantized weight is instead dotted with x rounded to q8_0
blocks, in integers per block:

    x_b ~ dx_b * qx_b      qx_b int8 [32], dx_b = fp16(max|x_b| / 127)       (quantize_activations)
    y_o = sum over blocks b of  dw_ob * dx_b * (qw_ob . qx_b)                  (qw_ob . qx_b: int32, exact)

Float weights keep the float path.
"""

import numpy as np

from ..dtypes import f32
from ..quant import QuantTensor, blocks_q8_0, quantize_q8_0

INT8_CHUNK = 1 << 22               # integer block dots held at once (bounds the memory of a prefill)


def linear(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """y = x W^T; x [..., in] float32, W [out, in] stored (or quantized: dequantized) -> [..., out] float32."""
    return x @ f32(W).T


def embed(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of the [V, D] embedding for token ids [T] -> [T, D] float32."""
    if isinstance(table, QuantTensor):
        return table.rows(ids)
    return f32(table[ids])


def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [T, cols] float32 -> its rows as q8_0 blocks: q int8 [T, cols // 32, 32], d float32 [T, cols // 32].

    GGML's reference quantizer (quantize_row_q8_0_ref, `cogcore.quant.quantize_q8_0`; bit-exact with
    `gguf.quants`): d = max|x| / 127, q = roundf(x * (1 / d)), halves away from zero, d stored as
    float16. GGML's own x86 CPU path (quantize_row_q8_0 with AVX) computes 127 / max|x| and rounds
    halves to even instead, so an element exactly between two steps can differ from it by one step.
    """
    return blocks_q8_0(quantize_q8_0(x))


def linear_int8(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """y = x W^T with int8 activations when W is quantized (`linear` otherwise); x [..., in] -> [..., out]."""
    if not isinstance(W, QuantTensor):
        return linear(x, W)
    rows, cols = W.shape
    x2 = x.reshape(-1, cols)
    xq, dx = quantize_activations(x2)                                 # [T, nb, 32] int8, [T, nb]
    wq, dw = W.blocks()                                               # [rows, nb, 32] int8, [rows, nb]
    y = np.empty((len(x2), rows), np.float32)
    step = max(1, INT8_CHUNK // (rows * dw.shape[1]))
    for t in range(0, len(x2), step):
        dots = np.einsum("tbj,obj->tob", xq[t:t + step], wq, dtype=np.int32)      # [t, rows, nb], exact
        y[t:t + step] = (dots.astype(np.float32) * (dx[t:t + step, None, :] * dw[None])).sum(axis=-1)
    return y.reshape(*x.shape[:-1], rows)
