"""The RWKV-7 time mix (twins of cogcore.blocks.rwkv7).

`wkv7`: the state recurrence, one fused pass per token and head: sa = S (-kk);
S = S diag(w) + sa (kk*a)^T + v k^T; y = S r, each row of S read and written once per
token (the reference makes five [N, N] temporaries per token). Heads run in parallel;
tokens in order. The projections around it are batched over the chunk by the mixer.

For decode-sized chunks the whole step between the projections is two kernels, so a
recurrent layer is: `time_mix_inputs`, the r/k/v GEMVs, `time_mix_output`, the output
GEMV (the reference makes ~40 small NumPy calls, ~0.4 ms a layer at D = 1024); over
projections quantized in one format `time_mix_step` runs all of it in one call (the
GEMVs by kernels.quant.gemv_each_into, r/k/v in one parallel region):

- `time_mix_inputs`: token shift, the six mixes, and the low-rank branches
  w = exp(-e^-0.5 sigmoid(w0 + tanh(xw w1) w2)), a = sigmoid(a0 + xa a1 a2),
  g = sigmoid(xg g1) g2, v_gate = sigmoid(v0 + xv v1 v2), one token at a time, the four
  branches side by side on the threads (x A as a sum of A's rows, then h B as a sum of B's
  rows: both read row by row; their float32 weights are as many bytes as the four q4_0
  projections in the 4b preset, so at two threads they must not run on one).
- `time_mix_output`: kk = l2_normalize(k k_k) per head, k = k (1 + (a - 1) k_a), the
  value residual, the recurrence, the group norm, the r k r_k bonus and the gate g; heads
  side by side on the threads.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .expf import divide, expf
from .linear import FAST, as_float32
from .quant import BLOCK_BYTES, CODE, FLOAT_PATH, HALF_TO_FLOAT, INT8_PATH, activations, gemv_each_into
from .threads import pick, twins

DECAY_SCALE = np.float32(np.exp(-0.5))
L2_EPS = np.float32(1e-12)          # kk_norm "clamp": kk / max(|kk|, 1e-12)
L2_EPS_INSIDE = np.float32(1e-6)    # kk_norm "epsilon": kk / sqrt(|kk|^2 + 1e-6)
# slots of time_mix_inputs' result [7, T, D]
XR, XK, XV, W, A, G, V_GATE = range(7)


@njit(fastmath=FAST, inline="always")
def wkv7_head(Sh, r, w, k, v, kk, a, y, b):
    """One token of one head: Sh [N, N] updated in place, y [N] written; b [N] scratch."""
    N = r.shape[0]
    for j in range(N):
        b[j] = kk[j] * a[j]
    for i in range(N):
        Si = Sh[i]
        sa = np.float32(0.0)
        for j in range(N):
            sa -= Si[j] * kk[j]
        vi = v[i]
        yi = np.float32(0.0)
        for j in range(N):
            Si[j] = Si[j] * w[j] + (sa * b[j] + vi * k[j])
        for j in range(N):                  # a loop of its own: see FAST in kernels.linear
            yi += Si[j] * r[j]
        y[i] = yi


def _wkv7(r, w, k, v, kk, a, S, y):
    T, Hr, N = r.shape
    for h in prange(Hr):
        b = np.empty(N, np.float32)
        for t in range(T):
            wkv7_head(S[h], r[t, h], w[t, h], k[t, h], v[t, h], kk[t, h], a[t, h], y[t, h], b)


_wkv7_1, _wkv7_p = twins(_wkv7, fastmath=FAST)


def wkv7(r, w, k, v, kk, a, S):
    """r, w, k, v, kk, a [T, Hr, N] float32; S [Hr, N, N] float32 (updated in place) -> (y, S)."""
    c = lambda x: np.ascontiguousarray(x, np.float32)
    if not (S.flags.c_contiguous and S.flags.writeable and S.dtype == np.float32):
        S = np.array(S, np.float32)
    y = np.empty(r.shape, np.float32)
    pick(_wkv7_1, _wkv7_p, r.size * r.shape[-1])(c(r), c(w), c(k), c(v), c(kk), c(a), S, y)
    return y, S


# ---- the decode step around the recurrence --------------------------------------------------

@njit(fastmath=FAST, inline="always")
def sigmoid(x):
    return divide(np.float32(1.0), np.float32(1.0) + expf(-x))


def widened(v):
    """A stored weight value as float32: bfloat16 bits (uint16) widened in a register."""


@overload(widened, inline="always")
def _widened(v):
    if v == types.uint16:
        return lambda v: as_float32(np.uint32(v) << np.uint32(16))
    return lambda v: v


@njit(fastmath=FAST, inline="always")
def rows_combination(coef, M, out):
    """out = coef M = sum_i coef[i] M[i] (M [n, m] float32 or bfloat16 bits, out [m]), four rows
    of M per pass over out."""
    n = M.shape[0]
    out[:] = 0
    n4 = n - n % 4
    for i in range(0, n4, 4):
        c0, c1, c2, c3 = coef[i], coef[i + 1], coef[i + 2], coef[i + 3]
        M0, M1, M2, M3 = M[i], M[i + 1], M[i + 2], M[i + 3]
        for j in range(M.shape[1]):
            out[j] += (c0 * widened(M0[j]) + c1 * widened(M1[j])) + (c2 * widened(M2[j]) + c3 * widened(M3[j]))
    for i in range(n4, n):
        ci, Mi = coef[i], M[i]
        for j in range(M.shape[1]):
            out[j] += ci * widened(Mi[j])


NO_MAP, TANH, DECAY, SIGMOID = np.int64(0), np.int64(1), np.int64(2), np.int64(3)   # low_rank's maps


@njit(cache=True, fastmath=FAST)
def low_rank(x, A, B, h, inner, bias, outer, out):
    """out = g(bias + f(x A) B) with x [D], A [D, R], B [R, D], h [R] scratch, bias [D]; f: NO_MAP,
    TANH or SIGMOID; g: NO_MAP (no bias either), DECAY exp(-e^-0.5 sigmoid(.)) or SIGMOID. Both
    products as combinations of rows, so A and B are each read once, in order. (A compiled call, not
    inlined: its four uses in one parallel loop would make the loop's body four times as long to
    compile.)"""
    rows_combination(x, A, h)
    if inner == TANH:
        for c in range(h.shape[0]):
            h[c] = np.tanh(h[c])
    elif inner == SIGMOID:
        for c in range(h.shape[0]):
            h[c] = sigmoid(h[c])
    rows_combination(h, B, out)
    if outer == DECAY:
        for j in range(out.shape[0]):
            out[j] = expf(-DECAY_SCALE * sigmoid(bias[j] + out[j]))
    elif outer == SIGMOID:
        for j in range(out.shape[0]):
            out[j] = sigmoid(bias[j] + out[j])


def _time_mix_inputs(x, x_prev, mix, w1, w2, a1, a2, v1, v2, g1, g2, w0, a0, v0, has_v_gate, out):
    """`time_mix_inputs` into out [7, T, D]: the token shift and mixes, then the four low-rank branches
    as the tasks of one parallel loop a token (in the parallel twin, two threads take
    w and a, then g and v: ranks 64 + 64 against 128 + 32 in the 4b preset)."""
    T, D = x.shape
    mixed = np.empty((3, D), np.float32)             # xw, xa, xg: the branches' inputs not kept in out
    h = np.empty((4, max(w1.shape[1], a1.shape[1], v1.shape[1], g1.shape[1])), np.float32)
    for t in range(T):
        prev = x_prev if t == 0 else x[t - 1]
        xt = x[t]
        for j in range(D):
            xx = prev[j] - xt[j]
            out[XR, t, j] = xt[j] + xx * mix[0, j]
            mixed[0, j] = xt[j] + xx * mix[1, j]
            out[XK, t, j] = xt[j] + xx * mix[2, j]
            out[XV, t, j] = xt[j] + xx * mix[3, j]
            mixed[1, j] = xt[j] + xx * mix[4, j]
            mixed[2, j] = xt[j] + xx * mix[5, j]
        for branch in prange(4):
            if branch == 0:
                low_rank(mixed[0], w1, w2, h[0, :w1.shape[1]], TANH, w0, DECAY, out[W, t])
            elif branch == 1:
                low_rank(mixed[1], a1, a2, h[1, :a1.shape[1]], NO_MAP, a0, SIGMOID, out[A, t])
            elif branch == 2:
                low_rank(mixed[2], g1, g2, h[2, :g1.shape[1]], SIGMOID, w0, NO_MAP, out[G, t])   # (w0 unread)
            elif has_v_gate:
                low_rank(out[XV, t], v1, v2, h[3, :v1.shape[1]], NO_MAP, v0, SIGMOID, out[V_GATE, t])


_time_mix_inputs_1, _time_mix_inputs_p = twins(_time_mix_inputs, fastmath=FAST)


def time_mix_inputs(x, x_prev, mix, lora, w0, a0, v0):
    """x [T, D] normed input, x_prev [D] the token before; mix [6, D] (x_r, x_w, x_k, x_v, x_a, x_g);
    lora ((w1, w2), (a1, a2), (v1, v2) or None, (g1, g2)), A [D, R], B [R, D], float32 or all of
    them bfloat16 bits (read as stored); w0, a0, v0 [D] (v0 None without the v pair); the rest
    float32 -> [7, T, D]: xr, xk, xv (the projections' inputs), w, a, g, v_gate (slots above;
    v_gate unset without the v pair)."""
    T, D = x.shape
    out = np.empty((7, T, D), np.float32)
    (w1, w2), (a1, a2), v_pair, (g1, g2) = lora
    has_v = v_pair is not None
    v1, v2 = v_pair if has_v else (w1[:, :0], w2[:0])
    low_rank_size = sum(m.size for pair in lora if pair is not None for m in pair)
    fn = pick(_time_mix_inputs_1, _time_mix_inputs_p, T * low_rank_size)
    fn(np.ascontiguousarray(x, np.float32), x_prev, mix, w1, w2, a1, a2, v1, v2, g1, g2,
       w0, a0, v0 if has_v else w0, has_v, out)    # (w0, the empty v1, v2: unread)
    return out


def _time_mix_output(r, w, k, v, a, g, v_gate, v_first, k_k, k_a, r_k, ln_w, ln_b, gn_eps, kk_inside, residual, S,
                     out):
    """`time_mix_output` into out [T, D]: one parallel task per head (in the parallel twin),
    its tokens in order."""
    T, D = r.shape
    Hr, N = r_k.shape
    scratch = np.empty((Hr, 5, N), np.float32)
    for hd in prange(Hr):
        kk, kt, vt, y, b = scratch[hd, 0], scratch[hd, 1], scratch[hd, 2], scratch[hd, 3], scratch[hd, 4]
        o = hd * N
        for t in range(T):
            for j in range(N):
                kk[j] = k[t, o + j] * k_k[o + j]
            ss = np.float32(0.0)
            for j in range(N):               # the sums in loops of their own: see FAST in kernels.linear
                ss += kk[j] * kk[j]
            inv = np.float32(1.0) / (np.sqrt(ss + L2_EPS_INSIDE) if kk_inside else max(np.sqrt(ss), L2_EPS))
            for j in range(N):
                kk[j] *= inv
                kt[j] = k[t, o + j] * (np.float32(1.0) + (a[t, o + j] - np.float32(1.0)) * k_a[o + j])
                vt[j] = v[t, o + j]
                if residual:
                    vt[j] += (v_first[t, o + j] - vt[j]) * v_gate[t, o + j]
            bonus = np.float32(0.0)
            for j in range(N):
                bonus += r[t, o + j] * kt[j] * r_k[hd, j]
            wkv7_head(S[hd], r[t, o:o + N], w[t, o:o + N], kt, vt, kk, a[t, o:o + N], y, b)
            mu = np.float32(0.0)
            for j in range(N):
                mu += y[j]
            mu /= np.float32(N)
            var = np.float32(0.0)
            for j in range(N):
                var += (y[j] - mu) * (y[j] - mu)
            inv = np.float32(1.0) / np.sqrt(var / np.float32(N) + gn_eps)
            for j in range(N):
                out[t, o + j] = ((y[j] - mu) * inv * ln_w[o + j] + ln_b[o + j] + bonus * vt[j]) * g[t, o + j]


_time_mix_output_1, _time_mix_output_p = twins(_time_mix_output, fastmath=FAST)


def time_mix_output(r, w, k, v, a, g, v_gate, v_first, k_k, k_a, r_k, ln_w, ln_b, eps, kk_norm, S):
    """r, k, v [T, D] projections, w, a, g, v_gate [T, D] from time_mix_inputs, v_first [T, D] (both
    None in the first layer: no value residual); k_k, k_a, ln_w, ln_b [D], r_k [Hr, N]; eps the group
    norm's; kk_norm "clamp" or "epsilon" (constants above); S [Hr, N, N] updated in place
    -> (y [T, D], the output projection's input, and S). (The config checks kk_norm's value.)"""
    c = lambda a_: np.ascontiguousarray(a_, np.float32)
    residual = v_first is not None
    if not (S.flags.c_contiguous and S.flags.writeable and S.dtype == np.float32):
        S = np.array(S, np.float32)
    if not residual:
        v_gate = v_first = r
    out = np.empty(r.shape, np.float32)
    fn = pick(_time_mix_output_1, _time_mix_output_p, r.shape[0] * S.size)
    fn(c(r), c(w), c(k), c(v), c(a), c(g), c(v_gate), c(v_first), k_k, k_a, r_k, ln_w, ln_b, np.float32(eps),
       kk_norm == "epsilon", residual, S, out)
    return out, S


# ---- the whole decode step over quantized projections -----------------------------------------------
def _time_mix_step(x, x_prev, mix, w1, w2, a1, a2, v1, v2, g1, g2, w0, a0, v0, has_v_gate, mats, code, table, mode,
                   v_first, k_k, k_a, r_k, ln_w, ln_b, gn_eps, kk_inside, residual, S, parallel):
    # The inputs and the output around the GEMVs are calls of their own kernels' twins (`parallel`: which),
    # not inlined: compiled once, and with their own fastmath flags, not this kernel's.
    T, D = x.shape
    inputs = np.empty((7, T, D), np.float32)
    if parallel:
        _time_mix_inputs_p(x, x_prev, mix, w1, w2, a1, a2, v1, v2, g1, g2, w0, a0, v0, has_v_gate, inputs)
    else:
        _time_mix_inputs_1(x, x_prev, mix, w1, w2, a1, a2, v1, v2, g1, g2, w0, a0, v0, has_v_gate, inputs)
    rkv = np.empty((T, 3 * D), np.float32)                  # r, k, v side by side
    gemv_each_into(activations(inputs[:3].reshape(3 * T, D), mode), T, T, mats[:3], code, table, rkv)
    r, k, v = rkv[:, :D].copy(), rkv[:, D:2 * D].copy(), rkv[:, 2 * D:].copy()
    y = np.empty((T, D), np.float32)
    if parallel:
        _time_mix_output_p(r, inputs[W], k, v, inputs[A], inputs[G], inputs[V_GATE] if residual else r,
                           v_first if residual else r, k_k, k_a, r_k, ln_w, ln_b, gn_eps, kk_inside, residual, S, y)
    else:
        _time_mix_output_1(r, inputs[W], k, v, inputs[A], inputs[G], inputs[V_GATE] if residual else r,
                           v_first if residual else r, k_k, k_a, r_k, ln_w, ln_b, gn_eps, kk_inside, residual, S, y)
    out = np.empty((T, D), np.float32)
    gemv_each_into(activations(y, mode), T, 0, mats[3:], code, table, out)
    return out, v


_time_mix_step_1, _time_mix_step_p = twins(_time_mix_step)


def time_mix_step(x, x_prev, mix, lora, w0, a0, v0, mats, qtype, int8, v_first, k_k, k_a, r_k, ln_w, ln_b, eps,
                  kk_norm, S):
    """The whole time mix of a few tokens in one call, over projections packed in one quantized format:
    `time_mix_inputs`, the r, k, v products (one parallel region), `time_mix_output` and the output product
    (another). x, x_prev, mix, lora, w0, a0, v0 as `time_mix_inputs` takes them; mats the packed receptance,
    key, value and output weights [D, D // 32 * block bytes] of format qtype (int8: int8 activations, as
    kernels.quant's linear_i8); v_first and the rest as `time_mix_output` takes them (v_first None in the
    first layer; S updated in place) -> (the output projection [T, D], v [T, D], S)."""
    T, D = x.shape
    code = CODE[qtype]
    for m in mats:
        if m.shape != (D, D // 32 * BLOCK_BYTES[code]):
            raise ValueError(f"time_mix_step: a {qtype} projection of {list(m.shape)} bytes for D = {D}")
    (w1, w2), (a1, a2), v_pair, (g1, g2) = lora
    has_v = v_pair is not None
    v1, v2 = v_pair if has_v else (w1[:, :0], w2[:0])
    residual = v_first is not None
    if not (S.flags.c_contiguous and S.flags.writeable and S.dtype == np.float32):
        S = np.array(S, np.float32)
    x = np.ascontiguousarray(x, np.float32)
    fn = pick(_time_mix_step_1, _time_mix_step_p, 4 * D * D)
    out, v = fn(x, x_prev, mix, w1, w2, a1, a2, v1, v2, g1, g2, w0, a0, v0 if has_v else w0, has_v, tuple(mats), code,
                HALF_TO_FLOAT, INT8_PATH if int8 else FLOAT_PATH, np.ascontiguousarray(v_first, np.float32) if residual
                else x, k_k, k_a, r_k, ln_w, ln_b, np.float32(eps), kk_norm == "epsilon", residual, S,
                fn is _time_mix_step_p)
    return out, v, S
