"""Linear layers and MoE experts over GGML q8_0 / q4_0 blocks, computed from the packed bytes.

The NumPy twin dequantizes the whole weight (cogcore/quant.py) and multiplies in
float32. Here the weight is never widened whole:

- decode (a few rows of x): a fused dequantize-dot GEMV. Each weight row is read
  once, block by block (34 or 18 bytes per 32 values); the block's int8 / 4-bit
  values are widened to float32 and d * (q_j * x_j) is added to 32 running sums, one
  per position in the block, summed at the end of the row: sum_j (q_j d) x_j to
  round-off, i.e. the float path on GGML-dequantized weights. Output rows are split
  across threads (prange over groups of 16 rows).
- prefill (many rows of x): groups of weight rows are dequantized into a bounded
  float32 scratch and multiplied by BLAS, so memory stays about the file size.
- MoE decode: the fused GEMV over the chosen experts' blocks only (the same
  gate/up -> silu * up -> down pipeline as kernels/moe.py).

The float16 scale is decoded through a 65536-entry float32 table, as GGML does.
Kernels that split work across threads come in a serial and a parallel variant
(`threads.twins`). This module imports nothing from cogcore.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .linear import FAST, SMALL_T
from .threads import pick, twins

Q8_0, Q4_0 = 0, 1
CODE = {"q8_0": Q8_0, "q4_0": Q4_0}
BLOCK_BYTES = np.array([34, 18], np.int64)
HALF_TO_FLOAT = np.arange(65536, dtype=np.uint16).view(np.float16).astype(np.float32)
ROWS_PER_TASK = 16                     # output rows per parallel task
PREFILL_SCRATCH = 1 << 20              # float32 values dequantized per BLAS block (4 MiB)


# The dots keep 32 running sums, one per position in a block (`lanes`), and add them up at the
# end of the row: the inner loops then have no reduction and compile to SIMD multiply-adds
# (4x faster here than a per-block sum).
@njit(fastmath=FAST, inline="always")
def dot_q8_0(row, x, table, lanes):
    """x . dequantize(row) for one q8_0 row: sum over blocks and j of d * q_j * x_j."""
    lanes[:] = 0
    for b in range(x.shape[0] // 32):
        p = b * 34
        d = table[np.int64(row[p]) | (np.int64(row[p + 1]) << 8)]
        for j in range(32):
            lanes[j] += d * (np.float32(np.int8(row[p + 2 + j])) * x[b * 32 + j])
    return lanes.sum()


@njit(fastmath=FAST, inline="always")
def dot_q4_0(row, x, table, lanes):
    """x . dequantize(row) for one q4_0 row: element j in the low nibble of byte j, j + 16 in its high one."""
    lanes[:] = 0
    for b in range(x.shape[0] // 32):
        p = b * 18
        d = table[np.int64(row[p]) | (np.int64(row[p + 1]) << 8)]
        for j in range(16):
            v = np.int32(row[p + 2 + j])
            lanes[j] += d * (np.float32((v & 15) - 8) * x[b * 32 + j])
            lanes[j + 16] += d * (np.float32((v >> 4) - 8) * x[b * 32 + 16 + j])
    return lanes.sum()


@njit(fastmath=FAST, inline="always")
def row_dots(x, row, code, table, lanes, acc):
    """acc[t] = x[t] . dequantize(row) for every row t of x (the row stays in L1 between rows of x)."""
    for t in range(x.shape[0]):
        acc[t] = dot_q8_0(row, x[t], table, lanes) if code == Q8_0 else dot_q4_0(row, x[t], table, lanes)


@njit(fastmath=FAST, inline="always")
def _gemv_task(x, data, code, table, out, task):
    lanes = np.empty(32, np.float32)
    acc = np.empty(x.shape[0], np.float32)
    for o in range(task * ROWS_PER_TASK, min(data.shape[0], (task + 1) * ROWS_PER_TASK)):
        row_dots(x, data[o], code, table, lanes, acc)
        for t in range(x.shape[0]):
            out[t, o] = acc[t]


def _gemv(x, data, code, table):
    out = np.empty((x.shape[0], data.shape[0]), np.float32)
    for task in prange((data.shape[0] + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
        _gemv_task(x, data, code, table, out, task)
    return out


_gemv_1, _gemv_p = twins(_gemv, fastmath=FAST)


@njit(inline="always")
def _dequantize_row(row, code, table, dst):
    """dst[:] = float32 values of one packed row (the format's branch hoisted out of the loops)."""
    if code == Q8_0:
        for b in range(dst.shape[0] // 32):
            p = b * 34
            d = table[np.int64(row[p]) | (np.int64(row[p + 1]) << 8)]
            for j in range(32):
                dst[b * 32 + j] = np.float32(np.int8(row[p + 2 + j])) * d
    else:
        for b in range(dst.shape[0] // 32):
            p = b * 18
            d = table[np.int64(row[p]) | (np.int64(row[p + 1]) << 8)]
            for j in range(16):
                v = np.int32(row[p + 2 + j])
                dst[b * 32 + j] = np.float32((v & 15) - 8) * d
                dst[b * 32 + 16 + j] = np.float32((v >> 4) - 8) * d


def _dequantize_rows(data, r0, r1, code, table, out):
    for r in prange(r0, r1):
        _dequantize_row(data[r], code, table, out[r - r0])


_dequantize_rows_1, _dequantize_rows_p = twins(_dequantize_rows)


def dequantize_rows(data, r0, r1, code, out):
    """out[:r1-r0] = float32 of the packed rows data[r0:r1] (out [>= r1-r0, cols] float32)."""
    fn = pick(_dequantize_rows_1, _dequantize_rows_p, (r1 - r0) * out.shape[1])
    fn(data, r0, r1, code, HALF_TO_FLOAT, out)


def linear(x: np.ndarray, data: np.ndarray, qtype: str, cols: int) -> np.ndarray:
    """y = x W^T; x [T, cols] float32, W packed uint8 [rows, cols // 32 * bytes] -> [T, rows]."""
    code = CODE[qtype]
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.shape[1] != cols or data.shape[1] != cols // 32 * BLOCK_BYTES[code]:
        raise ValueError(f"linear: x has {x.shape[1]} columns, the {qtype} weight {cols} "
                         f"({data.shape[1]} bytes per row)")
    data = np.ascontiguousarray(data)
    T, m = x.shape[0], data.shape[0]
    if T <= SMALL_T:
        return pick(_gemv_1, _gemv_p, m * cols)(x, data, code, HALF_TO_FLOAT)
    out = np.empty((T, m), np.float32)
    rows = max(16, min(m, PREFILL_SCRATCH // max(1, cols)))
    scratch = np.empty((rows, cols), np.float32)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        dequantize_rows(data, r0, r1, code, scratch)
        out[:, r0:r1] = x @ scratch[:r1 - r0].T
    return out


# ---- MoE decode: only the chosen experts' blocks are read ---------------------------------------
@njit(fastmath=FAST, inline="always")
def _gate_up_task(xt, Gd, Ud, e, code, table, h, task):
    """h[o] = silu(gate_e[o] . xt) * (up_e[o] . xt) for a group of rows o."""
    lanes = np.empty(32, np.float32)
    for o in range(task * ROWS_PER_TASK, min(h.shape[0], (task + 1) * ROWS_PER_TASK)):
        if code == Q8_0:
            g, u = dot_q8_0(Gd[e, o], xt, table, lanes), dot_q8_0(Ud[e, o], xt, table, lanes)
        else:
            g, u = dot_q4_0(Gd[e, o], xt, table, lanes), dot_q4_0(Ud[e, o], xt, table, lanes)
        h[o] = g / (np.float32(1.0) + np.exp(-g)) * u


@njit(fastmath=FAST, inline="always")
def _down_task(h, Dd, e, wt, code, table, yt, task):
    """yt[o] += wt * (down_e[o] . h) for a group of rows o."""
    lanes = np.empty(32, np.float32)
    for o in range(task * ROWS_PER_TASK, min(yt.shape[0], (task + 1) * ROWS_PER_TASK)):
        s = dot_q8_0(Dd[e, o], h, table, lanes) if code == Q8_0 else dot_q4_0(Dd[e, o], h, table, lanes)
        yt[o] += wt * s


def _experts(x, top, wts, Gd, Ud, Dd, code, table):
    T, D = x.shape
    F = Gd.shape[1]
    y = np.zeros((T, D), np.float32)
    h = np.empty(F, np.float32)
    for t in range(T):
        for c in range(top.shape[1]):
            e = top[t, c]
            for task in prange((F + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
                _gate_up_task(x[t], Gd, Ud, e, code, table, h, task)
            for task in prange((D + ROWS_PER_TASK - 1) // ROWS_PER_TASK):
                _down_task(h, Dd, e, wts[t, c], code, table, y[t], task)
    return y


_experts_1, _experts_p = twins(_experts, fastmath=FAST)


def experts_decode(x, top, wts, gate, up, down, qtype: str) -> np.ndarray:
    """sum over chosen experts of wts * down_e(silu(gate_e x) * up_e x); packed [E, rows, bytes] weights."""
    fn = pick(_experts_1, _experts_p, 3 * gate.shape[1] * x.shape[1])
    return fn(np.ascontiguousarray(x, np.float32), top, wts.astype(np.float32), gate, up, down,
              CODE[qtype], HALF_TO_FLOAT)
