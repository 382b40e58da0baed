"""Native Sparse Attention branches (twin of cogcore.blocks.sparse_attention.nsa_attention).

`nsa_attention`: one task per (query, kv group), split across threads. Per task:
1. compressed attention: scores of the G query heads against every visible
   compressed key, softmax, weighted compressed values -> o_cmp;
2. block scores: each visible compressed block's summed probability spread over
   the selection blocks it overlaps (overlap / stride), computed from the block
   geometry instead of a [n_cmp, n_sel] matrix;
3. top-n selection: block 0, the query's block and the one before are forced, the
   rest picked by repeated argmax (ties to the lower index, as the reference's
   stable sort);
4. selected attention over the kept blocks, 5. window attention: both with the
   chunked running softmax of kernels.attention.attend_range, reading each key once
   for the G heads of the group.
Gating stays in the mixer (three multiply-adds over [T, H, hd]). Block compression
has no twin here: the backend runs the reference's `compress` over kernels.linear.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from .attention import CHUNK, attend_range
from .expf import expf
from .linear import FAST
from .threads import pick, twins


def _nsa(q, K, V, kc, vc, q_pos, l, s, lsel, nsel, w, scale):
    T, H, hd = q.shape
    Hkv = K.shape[1]
    G = H // Hkv
    o_cmp = np.zeros((T, H, hd), np.float32)
    o_slc = np.empty((T, H, hd), np.float32)
    o_win = np.empty((T, H, hd), np.float32)
    kept = np.full((T, Hkv, nsel), -1, np.int64)
    for task in prange(T * Hkv):
        ti = task // Hkv
        g = task % Hkv
        h0 = g * G
        t = q_pos[ti]
        n_vis = (t + 1 - l) // s + 1 if t + 1 >= l else 0
        n_cand = t // lsel + 1
        score = np.zeros(n_cand, np.float32)
        m = np.empty(G, np.float32)
        lsum = np.empty(G, np.float32)
        acc = np.empty((G, hd), np.float32)
        sc = np.empty((G, CHUNK), np.float32)
        # 1. compressed attention, 2. block scores
        if n_vis > 0:
            p = np.empty((G, n_vis), np.float32)
            for i in range(G):
                qi = q[ti, h0 + i]
                mx = -np.inf
                for b in range(n_vis):
                    kb = kc[b, g]
                    d = np.float32(0.0)
                    for j in range(hd):
                        d += qi[j] * kb[j]
                    d *= scale
                    p[i, b] = d
                    mx = max(mx, d)
                tot = np.float32(0.0)
                for b in range(n_vis):
                    e = expf(p[i, b] - mx)
                    p[i, b] = e
                    tot += e
                for b in range(n_vis):
                    p[i, b] /= tot
            for b in range(n_vis):
                vb = vc[b, g]
                psum = np.float32(0.0)
                for i in range(G):
                    pib = p[i, b]
                    psum += pib
                    for j in range(hd):
                        o_cmp[ti, h0 + i, j] += pib * vb[j]
                lo = b * s
                hi = lo + l
                for jb in range(lo // lsel, (hi - 1) // lsel + 1):
                    ov = min(hi, (jb + 1) * lsel) - max(lo, jb * lsel)
                    score[jb] += psum * (np.float32(ov) / np.float32(s))
        # 3. selection
        sel = np.empty(min(n_cand, nsel), np.int64)
        if n_cand <= nsel:
            for j in range(n_cand):
                sel[j] = j
        else:
            cur = t // lsel
            taken = np.zeros(n_cand, np.bool_)
            taken[0] = True
            taken[cur - 1] = True
            taken[cur] = True
            for r in range(nsel - 3):
                best = -1
                for j in range(n_cand):
                    if not taken[j] and (best < 0 or score[j] > score[best]):
                        best = j
                taken[best] = True
            c = 0
            for j in range(n_cand):
                if taken[j]:
                    sel[c] = j
                    c += 1
        # 4. selected attention
        for i in range(G):
            m[i] = -np.inf
            lsum[i] = 0.0
        acc[:] = 0.0
        for c in range(sel.shape[0]):
            kept[ti, g, c] = sel[c]
            a = sel[c] * lsel
            b = min(a + lsel, t + 1)
            attend_range(q, ti, h0, G, K, V, g, a, b, scale, m, lsum, acc, sc)
        for i in range(G):
            for j in range(hd):
                o_slc[ti, h0 + i, j] = acc[i, j] / lsum[i]
        # 5. window attention
        for i in range(G):
            m[i] = -np.inf
            lsum[i] = 0.0
        acc[:] = 0.0
        attend_range(q, ti, h0, G, K, V, g, max(0, t - w + 1), t + 1, scale, m, lsum, acc, sc)
        for i in range(G):
            for j in range(hd):
                o_win[ti, h0 + i, j] = acc[i, j] / lsum[i]
    return o_cmp, o_slc, o_win, kept


_nsa_1, _nsa_p = twins(_nsa, fastmath=FAST)


def nsa_attention(q, K, V, kc, vc, q_pos, shape):
    """Same contract as the reference: o_cmp, o_slc, o_win [T, H, hd] and kept [T, Hkv, n]."""
    hd = q.shape[-1]
    c32 = lambda a: np.ascontiguousarray(a, np.float32)
    if kc.shape[0] == 0:
        kc = vc = np.zeros((1, K.shape[1], hd), np.float32)
    T, H, _ = q.shape
    last = int(np.max(q_pos)) + 1
    work = T * H * hd * 2 * (min(last, shape.select_block * shape.select_count) + min(last, shape.window)
                             + last // shape.stride)
    fn = pick(_nsa_1, _nsa_p, work)
    return fn(c32(q), c32(K), c32(V), c32(kc), c32(vc), np.asarray(q_pos, np.int64),
                shape.block, shape.stride, shape.select_block, shape.select_count, shape.window,
                np.float32(1.0 / np.sqrt(hd)))

