"""Mixture-of-experts dispatch (twin of cogcore.blocks.moe.moe).

- route: softmax over the E router logits and top-k per token (ties to the lower
  expert index, as the reference's stable sort), optionally renormalised; for a few
  tokens and a float32 router (decode) `routing` is one compiled call with the router's
  dots and the count of tokens per expert.
- decode (a few tokens): the k chosen experts run as fused GEMVs straight over
  the stored expert slices: silu(gate_e x) * (up_e x) with the gate and up rows
  read together, then down_e, the experts added with their routing weights; each
  thread whole experts where they split evenly (top-2 on two threads), else rows
  split across threads; float32 dots four rows per pass over the input,
  bfloat16 is widened in registers inside the dot, float16 rows one at a time.
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

from .expf import divide, expf
from .linear import BF16, F16, F32, FAST, SMALL_T, dot, dot4, dot_bf16, kind_of, linear, raw, widen_into
from .threads import filled, pick, threads_of, twins


@njit(inline="always", fastmath=FAST)
def top_k(logits, k, norm_topk, p, top, wts):
    """One token: the softmax p [E] of its router logits [E], the k best experts into top [k] (best
    first, ties to the lower index) and their weights into wts [k]."""
    E = logits.shape[0]
    mx = -np.inf
    for e in range(E):
        mx = max(mx, logits[e])
    for e in range(E):
        p[e] = expf(logits[e] - mx)
    tot = np.float32(0.0)
    for e in range(E):                    # a loop of its own: see FAST in kernels.linear
        tot += p[e]
    for e in range(E):
        p[e] = divide(p[e], tot)
    s = np.float32(0.0)
    for c in range(k):
        best = -1
        for e in range(E):
            if p[e] >= 0 and (best < 0 or p[e] > p[best]):
                best = e
        top[c] = best
        wts[c] = p[best]
        s += p[best]
        p[best] = -1.0
    if norm_topk:
        for c in range(k):
            wts[c] /= s


@njit(cache=True, fastmath=FAST)
def route(logits, k, norm_topk):
    """logits [T, E] -> top [T, k] (best first), wts [T, k] float32."""
    T, E = logits.shape
    top = np.empty((T, k), np.int64)
    wts = np.empty((T, k), np.float32)
    p = np.empty(E, np.float32)
    for t in range(T):
        top_k(logits[t], k, norm_topk, p, top[t], wts[t])
    return top, wts


@njit(cache=True, fastmath=FAST)
def route_f32(x, router, k, norm_topk):
    """`route` of the logits x router^T for a few tokens x [T, D] and a float32 router [E, D], the
    logits dotted here (four router rows per pass over x) -> top, wts and the tokens each expert
    received [E]: one compiled call for decode's routing."""
    T, E = x.shape[0], router.shape[0]
    top = np.empty((T, k), np.int64)
    wts = np.empty((T, k), np.float32)
    counts = np.zeros(E, np.int64)
    logits, p = np.empty(E, np.float32), np.empty(E, np.float32)
    for t in range(T):
        e = 0
        while e + 4 <= E:
            logits[e], logits[e + 1], logits[e + 2], logits[e + 3] = dot4(
                x[t], router[e], router[e + 1], router[e + 2], router[e + 3])
            e += 4
        for e in range(e, E):
            logits[e] = dot(x[t], router[e])
        top_k(logits, k, norm_topk, p, top[t], wts[t])
        for c in range(k):
            counts[top[t, c]] += 1
    return top, wts, counts


def routing(x, router, k, norm_topk, linear=linear):
    """(top [T, k], wts [T, k], counts [E]) for x [T, D] float32 and a router [E, D] as stored;
    `linear` computes the logits of any other router than a float32 array for a few tokens."""
    if (len(x) <= SMALL_T and isinstance(router, np.ndarray) and router.dtype == np.float32
            and router.flags.c_contiguous):
        return route_f32(x, router, k, bool(norm_topk))
    top, wts = route(linear(x, router), k, bool(norm_topk))
    return top, wts, np.bincount(top.ravel(), minlength=router.shape[0])


@njit(fastmath=FAST, inline="always")
def silu_mul(g, u):
    return divide(g, np.float32(1.0) + expf(-g)) * u


@njit(fastmath=FAST, inline="always")
def f16_dot(a, row, bu, bf):
    """a . row for a float16 row (uint16 bits), widened into the scratch bf (a view of bu)."""
    widen_into(row, bu, bf, F16)
    return dot(a, bf)


EXPERT_TASK_ROWS = 32     # output rows per prange task


@njit(cache=True, fastmath=FAST)
def hidden_rows(xt, Wg, Wu, r0, r1, kind, h):
    """h[r] = silu(Wg[r] . xt) * (Wu[r] . xt) for rows r0 <= r < r1 of one expert's gate and up. float32
    reads two rows of each per pass over the input; bfloat16 one row, widened in registers (explicit
    branches: a generic inlined row helper vectorised the bfloat16 dot worse). A compiled call, not
    inlined: `_experts_decode` calls it from two parallel loops."""
    o = r0
    if kind == F32:
        while o + 2 <= r1:
            g0, g1, u0, u1 = dot4(xt, Wg[o], Wg[o + 1], Wu[o], Wu[o + 1])
            h[o], h[o + 1] = silu_mul(g0, u0), silu_mul(g1, u1)
            o += 2
    bu = np.empty(xt.shape[0] if kind == F16 else 1, np.uint32)     # float16 rows are widened into bf
    bf = bu.view(np.float32)
    for r in range(o, r1):
        if kind == F32:
            g, u = dot(xt, Wg[r]), dot(xt, Wu[r])
        elif kind == BF16:
            g, u = dot_bf16(xt, Wg[r]), dot_bf16(xt, Wu[r])
        else:
            g, u = f16_dot(xt, Wg[r], bu, bf), f16_dot(xt, Wu[r], bu, bf)
        h[r] = silu_mul(g, u)


@njit(cache=True, fastmath=FAST)
def output_rows(h, Wd, r0, r1, kind, out):
    """out[r] = Wd[r] . h for rows r0 <= r < r1 of one expert's down (float32: four rows per pass)."""
    o = r0
    if kind == F32:
        while o + 4 <= r1:
            out[o], out[o + 1], out[o + 2], out[o + 3] = dot4(h, Wd[o], Wd[o + 1], Wd[o + 2], Wd[o + 3])
            o += 4
    bu = np.empty(h.shape[0] if kind == F16 else 1, np.uint32)
    bf = bu.view(np.float32)
    for r in range(o, r1):
        if kind == F32:
            out[r] = dot(h, Wd[r])
        elif kind == BF16:
            out[r] = dot_bf16(h, Wd[r])
        else:
            out[r] = f16_dot(h, Wd[r], bu, bf)


def _experts_decode(x, top, wts, Wg, Wu, Wd, kind, threads):
    """For each token and chosen expert e: h = silu(Wg[e] x) * (Wu[e] x), then y += wt * Wd[e] h, on
    `threads` threads (1 for the serial variant). When the threads can take whole experts (k a multiple
    of their number: any k on one thread, top-2 on two), each thread its experts from gate to down (one
    parallel region a token, no barrier between gate and down); otherwise one region for every expert's
    gate and up rows, one for their down rows. Either way each row's dot is the same, and each output
    row adds the experts in order (as kernels.quant's `_experts`)."""
    T, D = x.shape
    k, F = top.shape[1], Wg.shape[1]
    y = filled(np.empty((T, D), np.float32), 0)
    h, out = np.empty((k, F), np.float32), np.empty((k, D), np.float32)
    per_hidden = (F + EXPERT_TASK_ROWS - 1) // EXPERT_TASK_ROWS        # tasks per expert, gate and up rows
    per_output = (D + EXPERT_TASK_ROWS - 1) // EXPERT_TASK_ROWS        # tasks per expert, down rows
    for t in range(T):
        xt = x[t]
        if k % threads == 0:
            for c in prange(k):
                e = top[t, c]
                hidden_rows(xt, Wg[e], Wu[e], 0, F, kind, h[c])
                output_rows(h[c], Wd[e], 0, D, kind, out[c])
        else:
            for task in prange(k * per_hidden):
                c = task // per_hidden
                r0 = (task - c * per_hidden) * EXPERT_TASK_ROWS
                hidden_rows(xt, Wg[top[t, c]], Wu[top[t, c]], r0, min(F, r0 + EXPERT_TASK_ROWS), kind, h[c])
            for task in prange(k * per_output):
                c = task // per_output
                r0 = (task - c * per_output) * EXPERT_TASK_ROWS
                output_rows(h[c], Wd[top[t, c]], r0, min(D, r0 + EXPERT_TASK_ROWS), kind, out[c])
        for o in range(D):
            for c in range(k):
                y[t, o] += wts[t, c] * out[c, o]
    return y


_experts_1, _experts_p = twins(_experts_decode, fastmath=FAST)


def silu(x):
    return x / (np.float32(1.0) + np.exp(-x))


def moe(x, router, gate_proj, up_proj, down_proj, k, norm_topk):
    """x [T, D] -> y [T, D], counts [E] (the number of tokens each expert received)."""
    x = np.ascontiguousarray(x, np.float32)
    T = len(x)
    top, wts, counts = routing(x, router, k, norm_topk)
    if T <= SMALL_T and isinstance(gate_proj, np.ndarray):
        kind = kind_of(gate_proj)
        fn = pick(_experts_1, _experts_p, 3 * gate_proj[0].size)
        return (fn(x, top, wts, raw(gate_proj), raw(up_proj), raw(down_proj), kind, threads_of(fn, _experts_1)),
                counts)
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
        y[rows] += fn(x[rows], np.zeros((len(rows), 1), np.int64), wts[hit][:, None], *one, kind_of(gate_proj[e]),
                      threads_of(fn, _experts_1))
    return y
