"""Mixture-of-experts dispatch (twin of cogcore.blocks.moe.moe).

- route: softmax over the E router logits and top-k per token (ties to the lower
  expert index, as the reference's stable sort), optionally renormalised.
- decode (a few tokens): the k chosen experts run as fused GEMVs straight over
  the stored expert slices: silu(gate_e x) * (up_e x) with the gate and up rows
  read together, then down_e with the routing weight folded into the scatter;
  rows split across threads; bfloat16 widened in registers inside the dot,
  float16 rows widened one at a time.
- prefill: tokens grouped by expert with one stable sort, each expert runs once
  on its tokens through kernels.linear (BLAS, block-widened for narrow dtypes),
  and the weighted outputs are added back (a token meets an expert at most once,
  so the scatter has no collisions).
  Experts given as a sequence of per-expert arrays (a lazy stack over a public
  family's per-expert tensors) take this path for prefill; their decode runs the
  fused GEMVs once per chosen expert, its own arrays as a stack of one (a view).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .linear import BF16, F32, FAST, SMALL_T, dot, dot_bf16, kind_of, linear, raw, widen_into
from .threads import pick, twins


@njit(cache=True, fastmath=FAST)
def route(logits, k, norm_topk):
    """logits [T, E] -> top [T, k] (best first), wts [T, k] float32."""
    T, E = logits.shape
    top = np.empty((T, k), np.int64)
    wts = np.empty((T, k), np.float32)
    p = np.empty(E, np.float32)
    for t in range(T):
        mx = -np.inf
        for e in range(E):
            mx = max(mx, logits[t, e])
        tot = np.float32(0.0)
        for e in range(E):
            p[e] = np.exp(logits[t, e] - mx)
            tot += p[e]
        for e in range(E):
            p[e] /= tot
        s = np.float32(0.0)
        for c in range(k):
            best = -1
            for e in range(E):
                if p[e] >= 0 and (best < 0 or p[e] > p[best]):
                    best = e
            top[t, c] = best
            wts[t, c] = p[best]
            s += p[best]
            p[best] = -1.0
        if norm_topk:
            for c in range(k):
                wts[t, c] /= s
    return top, wts


def _experts_decode(x, top, wts, Wg, Wu, Wd, kind):
    T, D = x.shape
    k = top.shape[1]
    F = Wg.shape[1]
    y = np.zeros((T, D), np.float32)
    hbuf = np.empty(F, np.float32)
    for t in range(T):
        xt = x[t]
        for c in range(k):
            e = top[t, c]
            wt = wts[t, c]
            nb = (F + 31) // 32
            for blk in prange(nb):
                bu = np.empty(D, np.uint32)
                bf = bu.view(np.float32)
                for o in range(blk * 32, min(F, blk * 32 + 32)):
                    if kind == F32:
                        gsum = dot(xt, Wg[e, o])
                        usum = dot(xt, Wu[e, o])
                    elif kind == BF16:
                        gsum = dot_bf16(xt, Wg[e, o])
                        usum = dot_bf16(xt, Wu[e, o])
                    else:
                        widen_into(Wg[e, o], bu, bf, kind)
                        gsum = np.float32(0.0)
                        for j in range(D):
                            gsum += xt[j] * bf[j]
                        widen_into(Wu[e, o], bu, bf, kind)
                        usum = np.float32(0.0)
                        for j in range(D):
                            usum += xt[j] * bf[j]
                    hbuf[o] = gsum / (np.float32(1.0) + np.exp(-gsum)) * usum
            nb2 = (D + 31) // 32
            for blk in prange(nb2):
                bu = np.empty(F, np.uint32)
                bf = bu.view(np.float32)
                for o in range(blk * 32, min(D, blk * 32 + 32)):
                    if kind == F32:
                        s = dot(hbuf, Wd[e, o])
                    elif kind == BF16:
                        s = dot_bf16(hbuf, Wd[e, o])
                    else:
                        widen_into(Wd[e, o], bu, bf, kind)
                        s = dot(hbuf, bf)
                    y[t, o] += wt * s
    return y


_experts_1, _experts_p = twins(_experts_decode, fastmath=FAST)


def silu(x):
    return x / (np.float32(1.0) + np.exp(-x))


def moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk):
    """x [T, D] -> y [T, D], counts [E] (the number of tokens each expert received)."""
    x = np.ascontiguousarray(x, np.float32)
    T = len(x)
    E = router.shape[0]
    top, wts = route(linear(x, router), k, bool(norm_topk))
    counts = np.bincount(top.ravel(), minlength=E)
    if T <= SMALL_T and isinstance(gate_proj, np.ndarray):
        kind = kind_of(gate_proj)
        fn = pick(_experts_1, _experts_p, 3 * gate_proj[0].size)
        return fn(x, top, wts, raw(gate_proj), raw(up_proj), raw(down_proj), kind), counts
    if T <= SMALL_T:                                         # a lazy stack of per-expert arrays
        return _decode_each_expert(x, top, wts, counts, gate_proj, up_proj, down_proj), counts
    y = np.zeros_like(x)
    flat = top.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(counts)])
    for e in np.flatnonzero(counts):
        idx = order[bounds[e]:bounds[e + 1]]
        rows = idx // k
        h = silu(linear(x[rows], gate_proj[e])) * linear(x[rows], up_proj[e])
        y[rows] += wts.ravel()[idx][:, None] * linear(h, down_proj[e])
    return y, counts


def _decode_each_expert(x, top, wts, counts, gate_proj, up_proj, down_proj):
    """The fused decode over experts held one array each: a kernel call per chosen expert, on
    the tokens that chose it (a token meets an expert at most once), with that expert's
    arrays given as a stack of one (`W[e][None]`, a view: nothing is copied)."""
    y = np.zeros_like(x)
    for e in np.flatnonzero(counts):
        hit = top == e                                       # [T, k]
        rows = np.flatnonzero(hit.any(axis=1))
        one = [raw(W[e])[None] for W in (gate_proj, up_proj, down_proj)]
        fn = pick(_experts_1, _experts_p, 3 * gate_proj[e].size)
        y[rows] += fn(x[rows], np.zeros((len(rows), 1), np.int64), wts[hit][:, None], *one, kind_of(gate_proj[e]))
    return y
