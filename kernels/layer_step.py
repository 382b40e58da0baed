"""Decode of one token through a whole full-attention + MoE layer in one compiled call.

The twin of one turn of the model's layer loop (cogcore/model.py `_layers_fused`) for layers of
one shape: full attention over a KV cache (no biases, no q/k norms), a top-k MoE with a float32
router and no shared expert, RMSNorms, and every matrix quantized in one GGML format (q8_0 or
q4_0). In this order, for x [1, D] (the residual stream) and xn = rmsnorm(x) [1, D]:

    q | k | v = xn [Wq; Wk; Wv]^T                  one GEMV over the three (kernels.quant._gemv)
    q, k      = rope(q), rope(k)                   by the step's cos / sin table [1, hd/2] ...
    K[n], V[n] = k, v                              ... the cache rows of position n ...
    o         = softmax(q K[0..n]^T / sqrt(hd)) V[0..n]   ... one task per kv head (kernels.attention's
                                                   `_rope_attend`, the decode kernel of `rope_attend`)
    h         = x + o Wo^T;  hn = rmsnorm(h; post_w)       (kernels.norm)
        -> status MIXER_NOT_FINITE if hn holds NaN/Inf (the FFN is not run)
    top, wts  = top-k of softmax(hn router^T)      (kernels.moe.route_f32)
    y         = sum_c wts_c down_c(silu(gate_c hn) * up_c hn)   only the chosen experts' blocks
    x'        = h + y;  xn' = rmsnorm(x'; next_w)  (the next layer's input norm, or the final norm)
        -> status FFN_NOT_FINITE if xn' holds NaN/Inf

No Python runs between these steps (in the op-by-op path each is a wrapper call: ~5 us each in a
decode step, where every call finds its code and objects evicted by the weights streamed before
it). The GEMVs, the attention and the experts come in a serial and a parallel variant, chosen by
the caller once per call (`par_*`, `expert_threads`); the rest runs on the calling thread. Imports
nothing from cogcore.

Two cautions from Numba's disk cache: a cached `attention_moe_step` holds the code of the kernels it
calls (kernels.quant, .attention, .moe, .norm), so after editing one of those clear kernels/__pycache__;
and loaded from the cache it does not start Numba's thread pool for the parallel kernels inside it
(a crash when nothing else has started it): call `numba.get_num_threads()` once before the first call.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .attention import _rope_attend_1, _rope_attend_p
from .moe import route_f32
from .norm import _rms_1
from .quant import _experts_1, _experts_p, _gemv_1, _gemv_p

OK, MIXER_NOT_FINITE, FFN_NOT_FINITE = 0, 1, 2      # the step's status


@njit(inline="always")
def all_finite(row):
    for j in range(row.shape[0]):
        if not np.isfinite(row[j]):
            return False
    return True


@njit(cache=True)
def attention_moe_step(x, xn, qkv, wo, post_w, next_w, eps, cos, sin, K, V, n, router, expert_buffers, expert_at,
                       F, top_k, norm_topk, code, table, mode, par_qkv, par_attention, par_o, expert_threads):
    """One decode token through the layer (the module docstring's steps) -> (x' [1, D], xn' [1, D],
    the tokens each expert received [E] int64, status).

    x, xn [1, D] float32; qkv (Wq, Wk, Wv) and wo packed [rows, bytes] (read-only C arrays, one
    format: code of kernels.quant.CODE, table its HALF_TO_FLOAT, mode FLOAT_PATH or INT8_PATH);
    post_w, next_w [D] float32, eps float32; cos, sin [1, hd/2] float32 of position n; K, V [> n, Hkv, hd]
    float32, rows 0..n-1 the cache; router [E, D] float32; the experts' blocks (F hidden rows) where
    kernels.quant's `_experts` finds them: expert_buffers (gate, up, down) and the byte offsets expert_at [3, E];
    par_*: the parallel variant of the GEMV of q/k/v, the attention, the GEMV of o; expert_threads: the
    threads of the experts (1: the serial variant)."""
    Hkv, hd = K.shape[1], K.shape[2]
    H = qkv[0].shape[0] // hd
    D = x.shape[1]
    both = _gemv_p(xn, qkv, code, table, mode) if par_qkv else _gemv_1(xn, qkv, code, table, mode)
    row = both[0]
    q = row[:H * hd].reshape((1, H, hd))
    k = row[H * hd:(H + Hkv) * hd].reshape((1, Hkv, hd))
    v = row[(H + Hkv) * hd:].reshape((1, Hkv, hd))
    scale = np.float32(1.0) / np.sqrt(np.float32(hd))
    if par_attention:
        o = _rope_attend_p(q, k, v, cos, sin, K, V, n, scale)
    else:
        o = _rope_attend_1(q, k, v, cos, sin, K, V, n, scale)
    o2 = o.reshape((1, H * hd))
    attn = _gemv_p(o2, (wo,), code, table, mode) if par_o else _gemv_1(o2, (wo,), code, table, mode)
    h, hn = np.empty((1, D), np.float32), np.empty((1, D), np.float32)
    # np.bool_(True), and expert_threads below, not the constants True and 1: a literal argument compiles the
    # callee once more for that constant, beside the op-by-op path's plain-typed compile
    _rms_1(x, h, hn, post_w, eps, np.bool_(True), attn)
    counts = np.zeros(router.shape[0], np.int64)
    if not all_finite(hn[0]):
        return h, hn, counts, MIXER_NOT_FINITE
    top, wts, counts = route_f32(hn, router, top_k, norm_topk)
    y = np.zeros((1, D), np.float32)
    if expert_threads > 1:
        _experts_p(hn, expert_buffers, expert_at, top[0], F, wts[0], code, table, mode, y[0], expert_threads)
    else:
        _experts_1(hn, expert_buffers, expert_at, top[0], F, wts[0], code, table, mode, y[0], expert_threads)
    x2, xn2 = np.empty((1, D), np.float32), np.empty((1, D), np.float32)
    _rms_1(h, x2, xn2, next_w, eps, np.bool_(True), y)
    return x2, xn2, counts, OK if all_finite(xn2[0]) else FFN_NOT_FINITE
