"""Linear layers y = x W^T over a weight kept in its stored dtype (float32, float16, bfloat16).

The NumPy twin is `cogcore.blocks.linear.linear` (widen W to float32, then BLAS). Here:

- Decode (T <= SMALL_T rows of x) runs a GEMV kernel per storage kind (`GEMV`), prefill
  goes to BLAS. float32 dots four weight rows per pass over x; on this machine a whole
  float32 decode step ties with OpenBLAS sgemv on one thread and keeps its speed on two,
  where sgemv's thread pool stalled a decode step 3-8x (docs/performance.md), so the
  GEMV is the default.
- bfloat16 weights in decode are widened in registers inside the dot (`dot_bf16`),
  one pass over the stored row: memory-bound, not compute-bound.
- float16/bfloat16 weights are never widened whole. For a few rows of x (decode)
  a float16 GEMV widens one weight row at a time into a small per-thread float32
  scratch buffer (prange over blocks of output rows) and dots it with every row
  of x. For many rows of x (prefill) blocks of weight rows are widened into a
  bounded float32 scratch and multiplied by BLAS, so memory stays about the file
  size while the FLOPs still run at sgemm speed.

Widening, bit-exact: bfloat16 bits `u` are the float32 with bits `u << 16`;
float16 bits are moved into float32 position (`(u & 0x7fff) << 13`, times 2**112
fixes the exponent bias and handles subnormals) with inf/NaN and the sign patched.
Kinds: 0 = float32, 1 = bfloat16 (uint16 bits), 2 = float16 (passed as uint16 bits).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from .threads import pick, twins

F32, BF16, F16 = 0, 1, 2
FAST = {"nsz", "arcp", "contract", "reassoc"}    # free reduction order; no finite-math assumptions
# Under FAST a loop that sums must not also store: LLVM vectorises such a loop behind a run-time check that
# its arrays do not overlap and falls back to the scalar loop where they lie close together, and the two sum
# in different orders, so a result would depend on where the heap put the buffers (a q4_0 decode gave
# logits a few ulp apart run to run). Such loops store in one loop and sum in the next.
SMALL_T = 8                                      # up to this many rows of x: GEMV kernel
TASK_ROWS = 64                                   # output rows per prange task of a GEMV
BLOCK_ROWS = 256                                 # weight rows widened per BLAS block (prefill)
_F16_SCALE = np.float32(2.0 ** 112)


def kind_of(W: np.ndarray) -> int:
    if W.dtype == np.float32:
        return F32
    if W.dtype == np.uint16:
        return BF16
    if W.dtype == np.float16:
        return F16
    raise TypeError(f"weight dtype {W.dtype}: expected float32, float16 or bfloat16 bits (uint16)")


def raw(W: np.ndarray) -> np.ndarray:
    """The array a kernel takes: float16 is handed over as its uint16 bits (numba has no float16)."""
    return W.view(np.uint16) if W.dtype == np.float16 else W


@njit(inline="always")
def widen_into(src, buf_u, buf_f, kind):
    """Widen one stored row `src` [n] into buf_f (a float32 view of the uint32 buf_u)."""
    n = src.shape[0]
    if kind == BF16:
        for j in range(n):
            buf_u[j] = np.uint32(src[j]) << np.uint32(16)
    elif kind == F16:
        for j in range(n):
            buf_u[j] = (np.uint32(src[j]) & np.uint32(0x7FFF)) << np.uint32(13)
        for j in range(n):
            buf_f[j] *= _F16_SCALE
        for j in range(n):
            h = np.uint32(src[j])
            sign = (h & np.uint32(0x8000)) << np.uint32(16)
            special = sign | np.uint32(0x7F800000) | ((h & np.uint32(0x3FF)) << np.uint32(13))
            buf_u[j] = special if (h & np.uint32(0x7C00)) == np.uint32(0x7C00) else buf_u[j] | sign
    else:
        for j in range(n):
            buf_f[j] = np.float32(src[j])


@intrinsic
def as_float32(typingctx, bits):
    """The float32 whose bit pattern is the uint32 `bits` (a register bitcast, no memory)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.uint32), codegen


@njit(fastmath=FAST, inline="always")
def dot(a, b):
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        s += a[j] * b[j]
    return s


@njit(fastmath=FAST, inline="always")
def dot_bf16(a, b):
    """a [n] float32 . b [n] bfloat16 bits, widened in registers (`u << 16`): one pass over b,
    vectorised (integer widen + shift + bitcast + FMA), so bf16 decode reads at memory speed."""
    s = np.float32(0.0)
    for j in range(a.shape[0]):
        s += a[j] * as_float32(np.uint32(b[j]) << np.uint32(16))
    return s


@njit(fastmath=FAST, inline="always")
def dot4(a, w0, w1, w2, w3):
    """(a . w0, a . w1, a . w2, a . w3) in one pass over a: each a[j] loaded once for four rows."""
    s0 = s1 = s2 = s3 = np.float32(0.0)
    for j in range(a.shape[0]):
        aj = a[j]
        s0 += aj * w0[j]
        s1 += aj * w1[j]
        s2 += aj * w2[j]
        s3 += aj * w3[j]
    return s0, s1, s2, s3


# Decode GEMVs: x [T, n] float32 (T <= SMALL_T), W [m, n] stored, out [T, m] float32 written.
# One function per storage kind (no runtime branch in the hot loop), prange over tasks of
# TASK_ROWS output rows; each weight row is read once and dotted with every row of x.

def _gemv_f32(x, W, out):
    """float32: four weight rows per pass over x (32-35 GB/s on one thread here against 28-29
    for one row per pass and 31-32 for OpenBLAS sgemv; a plain sum reads 37-39)."""
    T, m = x.shape[0], W.shape[0]
    for task in prange((m + TASK_ROWS - 1) // TASK_ROWS):
        o, end = task * TASK_ROWS, min(m, task * TASK_ROWS + TASK_ROWS)
        while o + 4 <= end:
            for t in range(T):
                out[t, o], out[t, o + 1], out[t, o + 2], out[t, o + 3] = dot4(x[t], W[o], W[o + 1], W[o + 2], W[o + 3])
            o += 4
        for r in range(o, end):
            for t in range(T):
                out[t, r] = dot(x[t], W[r])


def _gemv_bf16(x, W, out):
    """bfloat16 bits: one row per pass, widened in registers inside the dot (`dot_bf16`): with
    several rows per pass the vectoriser widens worse (25 against 33-35 GB/s here)."""
    T, m = x.shape[0], W.shape[0]
    for task in prange((m + TASK_ROWS - 1) // TASK_ROWS):
        for r in range(task * TASK_ROWS, min(m, task * TASK_ROWS + TASK_ROWS)):
            for t in range(T):
                out[t, r] = dot_bf16(x[t], W[r])


def _gemv_f16(x, W, out):
    """float16 bits: each row widened once into a per-task float32 scratch, then dotted."""
    T, m = x.shape[0], W.shape[0]
    for task in prange((m + TASK_ROWS - 1) // TASK_ROWS):
        buf_u = np.empty(W.shape[1], np.uint32)
        buf_f = buf_u.view(np.float32)
        for r in range(task * TASK_ROWS, min(m, task * TASK_ROWS + TASK_ROWS)):
            widen_into(W[r], buf_u, buf_f, F16)
            for t in range(T):
                out[t, r] = dot(x[t], buf_f)


GEMV = {F32: twins(_gemv_f32, fastmath=FAST), BF16: twins(_gemv_bf16, fastmath=FAST),
        F16: twins(_gemv_f16, fastmath=FAST)}      # kind -> (serial, parallel)


def gemv(x, W, kind, out=None):
    """x [T, n] float32 (T small), W [m, n] stored (raw) -> x W^T [T, m] float32 (into `out` if given)."""
    if out is None:
        out = np.empty((x.shape[0], W.shape[0]), np.float32)
    pick(*GEMV[kind], W.size)(x, W, out)
    return out


def _widen_rows(W, r0, r1, out, kind):
    for r in prange(r0, r1):
        dst = out[r - r0]
        widen_into(W[r], dst.view(np.uint32), dst, kind)


_widen_rows_1, _widen_rows_p = twins(_widen_rows)


def widen_rows(W, r0, r1, out, kind):
    """out[:r1-r0] = float32(W[r0:r1]) (out [>= r1-r0, n] float32)."""
    pick(_widen_rows_1, _widen_rows_p, (r1 - r0) * W.shape[1])(W, r0, r1, out, kind)


def widen(W: np.ndarray) -> np.ndarray:
    """A float32 copy of a stored 2-D weight (for small matrices used many times)."""
    if W.dtype == np.float32:
        return W
    W2 = W.reshape(-1, W.shape[-1])
    out = np.empty(W2.shape, np.float32)
    widen_rows(raw(W2), 0, len(W2), out, kind_of(W))
    return out.reshape(W.shape)


def linear(x: np.ndarray, W: np.ndarray) -> np.ndarray:
    """y = x W^T; x [..., in] float32, W [out, in] stored -> [..., out] float32."""
    if x.ndim != 2:
        return linear(x.reshape(-1, x.shape[-1]), W).reshape(*x.shape[:-1], W.shape[0])
    kind = kind_of(W)
    x = np.ascontiguousarray(x, dtype=np.float32)
    T, m = x.shape[0], W.shape[0]
    if kind == F32 and (T > SMALL_T or not W.flags.c_contiguous):
        return x @ W.T                           # prefill (sgemm), or a strided view BLAS reads as is
    Wr = raw(W)
    if not Wr.flags.c_contiguous:
        Wr = np.ascontiguousarray(Wr)
    if T <= SMALL_T:
        return gemv(x, Wr, kind)
    out = np.empty((T, m), np.float32)
    rows = max(16, min(m, (BLOCK_ROWS * 4096) // max(1, W.shape[1])))   # about 4 MiB of scratch
    scratch = np.empty((rows, W.shape[1]), np.float32)
    for r0 in range(0, m, rows):
        r1 = min(m, r0 + rows)
        widen_rows(Wr, r0, r1, scratch, kind)
        out[:, r0:r1] = x @ scratch[:r1 - r0].T
    return out
