"""Native Sparse Attention branches (twin of cogcore.blocks.sparse_attention.nsa_attention).

Decode (fewer than PREFILL_MIN_T queries), `_nsa`: one task per (query, kv group), split
across threads. Per task:
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
Prefill, `_by_blas`: the same five steps per kv group and block of queries, the scores
as BLAS products masked per query (see its docstring).
Decode's fused steps (a step that compresses no block): `rope_nsa`, RoPE of q and k, the
cache write, the five steps per task (`nsa_task`) and the sigmoid gating of the three
branches in one call; `nsa_step`, the same with the q/k/v/gate and output projections
over weights quantized in one format (kernels.quant's GEMV), the whole layer in
one call. Block compression has no twin here: the backend runs the reference's
`compress` over kernels.linear.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .attention import (CHUNK, PREFILL_MIN_T, QUERY_BLOCK, attend_range, attend_task, by_blas, copy_rows,
                        softmax_rows, write_normalized)
from .expf import divide, expf
from .linear import FAST
from .quant import BLOCK_BYTES, CODE, FLOAT_PATH, HALF_TO_FLOAT, INT8_PATH, _gemv_1, _gemv_p
from .rope import rotate_by, rotation_tables
from .rwkv7 import sigmoid
from .threads import filled, pick, twins

UNION_RATIO = 3          # prefill: kept-block unions up to this many times a query's keys go to BLAS


@njit(inline="always")
def select(score, cur, nsel):
    """The kept selection blocks, ascending, of a query in block `cur` (score [cur + 1] its candidates'):
    all candidates if there are at most nsel, else block 0, cur - 1, cur and the nsel - 3 best
    others by repeated argmax (ties to the lower index, as the reference's stable sort)."""
    n_cand = score.shape[0]
    sel = np.empty(min(n_cand, nsel), np.int64)
    if n_cand <= nsel:
        for j in range(n_cand):
            sel[j] = j
        return sel
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
    return sel


@njit(inline="always", fastmath=FAST)
def attend_kept(q, ti, h0, G, K, V, g, blocks, lsel, t, scale, m, lsum, acc, sc, out):
    """out[ti, h0:h0+G] = softmax attention of query ti (at position t) over the selection blocks
    blocks[c] >= 0 (-1 pads skipped), each up to position t; m, lsum, acc, sc: attend_range's scratch."""
    m[:] = -np.inf
    lsum[:] = 0.0
    acc[:] = 0.0
    for c in range(blocks.shape[0]):
        if blocks[c] >= 0:
            a = blocks[c] * lsel
            attend_range(q, ti, h0, G, K, V, g, a, min(a + lsel, t + 1), scale, m, lsum, acc, sc)
    write_normalized(acc, lsum, out, ti, h0)


@njit(cache=True, fastmath=FAST)         # a call of its own, not inlined: see kernels.attention.attend_range
def nsa_task(q, ti, g, t, K, V, kc, vc, l, s, lsel, nsel, w, scale, o_cmp, o_slc, o_win, kept):
    """The three branches of query ti (at position t) and kv group g: o_cmp, o_slc, o_win [T, H, hd]
    rows ti, heads g*G.. written (o_cmp added to: it starts at zero), kept[ti, g] filled."""
    hd = q.shape[2]
    G = q.shape[1] // K.shape[1]
    h0 = g * G
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
                p[i, b] = divide(p[i, b], tot)
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
    sel = select(score, t // lsel, nsel)
    # 4. selected attention
    kept[ti, g, :sel.shape[0]] = sel
    attend_kept(q, ti, h0, G, K, V, g, kept[ti, g], lsel, t, scale, m, lsum, acc, sc, o_slc)
    # 5. window attention
    attend_task(q, ti, g, K, V, max(0, t - w + 1), t + 1, scale, o_win)


def _nsa(q, K, V, kc, vc, q_pos, l, s, lsel, nsel, w, scale):
    T, H, hd = q.shape
    Hkv = K.shape[1]
    o_cmp = filled(np.empty((T, H, hd), np.float32), 0)
    o_slc = np.empty((T, H, hd), np.float32)
    o_win = np.empty((T, H, hd), np.float32)
    kept = filled(np.empty((T, Hkv, nsel), np.int64), -1)
    for task in prange(T * Hkv):
        ti, g = task // Hkv, task % Hkv
        nsa_task(q, ti, g, q_pos[ti], K, V, kc, vc, l, s, lsel, nsel, w, scale, o_cmp, o_slc, o_win, kept)
    return o_cmp, o_slc, o_win, kept


_nsa_1, _nsa_p = twins(_nsa, fastmath=FAST)


# ---- decode's whole step between the projections: RoPE, cache write, the branches, the gates --------
def _rope_nsa(q, k, v, gate, cos, sin, K, V, n, kc, vc, l, s, lsel, nsel, w, scale):
    """`rope_nsa` after its checks: q, k rotated (q into a copy, k into K) by the table cos, sin [T, hd/2], v
    copied into V, then `nsa_task` for each (query, kv group) and the gated sum of its heads."""
    T, H, hd = q.shape
    Hkv = K.shape[1]
    G = H // Hkv
    qr = np.empty((T, H, hd), np.float32)
    rotate_by(q, cos, sin, qr)
    rotate_by(k, cos, sin, K[n:n + T])
    copy_rows(v, V, n)
    o_cmp = filled(np.empty((T, H, hd), np.float32), 0)
    o_slc = np.empty((T, H, hd), np.float32)
    o_win = np.empty((T, H, hd), np.float32)
    kept = filled(np.empty((T, Hkv, nsel), np.int64), -1)
    out = np.empty((T, H, hd), np.float32)
    for task in prange(T * Hkv):
        ti, g = task // Hkv, task % Hkv
        nsa_task(qr, ti, g, n + ti, K, V, kc, vc, l, s, lsel, nsel, w, scale, o_cmp, o_slc, o_win, kept)
        for h in range(g * G, g * G + G):
            g_cmp, g_slc, g_win = sigmoid(gate[ti, h]), sigmoid(gate[ti, H + h]), sigmoid(gate[ti, 2 * H + h])
            for j in range(hd):
                out[ti, h, j] = g_cmp * o_cmp[ti, h, j] + g_slc * o_slc[ti, h, j] + g_win * o_win[ti, h, j]
    return out, kept


_rope_nsa_1, _rope_nsa_p = twins(_rope_nsa, fastmath=FAST)


def rope_nsa(q, k, v, gate, positions, inv_freq, K, V, n, kc, vc, shape):
    """Decode's sparse-attention step in one compiled call: RoPE of q [T, H, hd] and k [T, Hkv, hd] at
    positions n..n+T-1 (angles in the dtype of inv_freq), the rotated k and v written to rows n..n+T-1 of
    the cache's buffers K, V [>= n + T, Hkv, hd] float32 (rows 0..n-1: positions 0..n-1), the three NSA
    branches of the rotated q over rows 0..n+T-1 and the compressed blocks kc, vc [B, Hkv, hd] (every
    block complete by position n+T-1), and their gates: gate [T, 3H] the logits x gate_proj^T ->
    (sum of sigmoid(gate) times each branch [T, H, hd], kept blocks [T, Hkv, n] int64, -1 pads).
    The twin of `cogcore.blocks.rope.rope`, `KVCache.extend`, `nsa_attention` and the mixer's gating."""
    T, H, hd = q.shape
    Hkv = k.shape[1]
    if (k.shape != v.shape or k.shape[0] != T or K.shape != V.shape or K.shape[1:] != k.shape[1:]
            or kc.shape != vc.shape or kc.shape[1:] != k.shape[1:] or H % Hkv or gate.shape != (T, 3 * H)
            or len(positions) != T or positions[0] != n or K.shape[0] < n + T
            or not (K.dtype == V.dtype == np.float32 and K.flags.c_contiguous and V.flags.c_contiguous)):
        raise ValueError(f"rope_nsa: q {list(q.shape)}, k {list(k.shape)}, v {list(v.shape)}, gate "
                         f"{list(gate.shape)}, {len(positions)} positions, blocks {list(kc.shape)} and buffers "
                         f"{list(K.shape)} for rows {n}..{n + T - 1} do not fit")
    if kc.shape[0] == 0:
        kc = vc = np.zeros((1, Hkv, hd), np.float32)
    c32 = lambda a: np.ascontiguousarray(a, np.float32)
    last = n + T
    work = T * H * hd * 2 * (min(last, shape.select_block * shape.select_count) + min(last, shape.window)
                             + last // shape.stride)
    return pick(_rope_nsa_1, _rope_nsa_p, work)(
        c32(q), c32(k), c32(v), c32(gate), *rotation_tables(positions, inv_freq), K, V, n, c32(kc), c32(vc),
        shape.block, shape.stride, shape.select_block, shape.select_count, shape.window,
        np.float32(1.0 / np.sqrt(hd)))


@njit(cache=True)
def _nsa_step(x, mats, code, table, mode, H, hd, cos, sin, K, V, n, kc, vc, l, s, lsel, nsel, w, scale, parallel):
    """`nsa_step` after its checks: calls of the kernels that `linears` and `rope_nsa` run (their parallel
    variants when `parallel`), shared with them rather than inlined here: one compile of each."""
    T = x.shape[0]
    Hkv = K.shape[1]
    proj = _gemv_p(x, mats[:4], code, table, mode) if parallel else _gemv_1(x, mats[:4], code, table, mode)
    q = np.ascontiguousarray(proj[:, :H * hd]).reshape((T, H, hd))
    k = np.ascontiguousarray(proj[:, H * hd:(H + Hkv) * hd]).reshape((T, Hkv, hd))
    v = np.ascontiguousarray(proj[:, (H + Hkv) * hd:(H + 2 * Hkv) * hd]).reshape((T, Hkv, hd))
    gate = np.ascontiguousarray(proj[:, (H + 2 * Hkv) * hd:])
    if parallel:
        o, kept = _rope_nsa_p(q, k, v, gate, cos, sin, K, V, n, kc, vc, l, s, lsel, nsel, w, scale)
    else:
        o, kept = _rope_nsa_1(q, k, v, gate, cos, sin, K, V, n, kc, vc, l, s, lsel, nsel, w, scale)
    o2 = o.reshape((T, H * hd))
    out = _gemv_p(o2, mats[4:], code, table, mode) if parallel else _gemv_1(o2, mats[4:], code, table, mode)
    return out, kept


def nsa_step(x, mats, qtype, int8, H, positions, inv_freq, K, V, n, kc, vc, shape):
    """The whole sparse-attention decode step in one call over projections packed in one quantized format:
    mats the q, k, v, gate and output weights (rows H hd, Hkv hd, Hkv hd, 3H and D; int8: int8 activations,
    as kernels.quant's linear_i8) of x [T, D]; the rest as `rope_nsa` takes it -> (the output projection
    [T, D], the kept blocks [T, Hkv, n])."""
    T, D = x.shape
    Hkv, hd = K.shape[1], K.shape[2]
    code = CODE[qtype]
    row = D // 32 * BLOCK_BYTES[code]
    want = [(H * hd, row), (Hkv * hd, row), (Hkv * hd, row), (3 * H, row), (D, H * hd // 32 * BLOCK_BYTES[code])]
    if [m.shape for m in mats] != want:
        raise ValueError(f"nsa_step: {qtype} projections of {[list(m.shape) for m in mats]} bytes for D = {D}, "
                         f"{H} heads of {hd} and {Hkv} kv heads")
    if len(positions) != T or positions[0] != n or K.shape[0] < n + T or K.shape != V.shape or \
            kc.shape[1:] != K.shape[1:]:
        raise ValueError(f"nsa_step: {len(positions)} positions, blocks {list(kc.shape)} and buffers "
                         f"{list(K.shape)} for rows {n}..{n + T - 1} do not fit")
    if kc.shape[0] == 0:
        kc = vc = np.zeros((1, Hkv, hd), np.float32)
    last = n + T
    work = T * H * hd * 2 * (min(last, shape.select_block * shape.select_count) + min(last, shape.window)
                             + last // shape.stride) + sum(m.size for m in mats)
    return _nsa_step(
        np.ascontiguousarray(x, np.float32), tuple(mats), code, HALF_TO_FLOAT, INT8_PATH if int8 else FLOAT_PATH, H, hd,
        *rotation_tables(positions, inv_freq), K, V, n, np.ascontiguousarray(kc, np.float32),
        np.ascontiguousarray(vc, np.float32), shape.block, shape.stride,
        shape.select_block, shape.select_count, shape.window, np.float32(1.0 / np.sqrt(hd)), pick(False, True, work))


# ---- prefill: the branches as BLAS products over blocks of queries ----------------------------------
def _select_rows(score, cur, nsel, kept, chosen):
    """Per query i of a block: its kept blocks into kept[i] (-1 pads stay) and chosen[i, j] = kept j?"""
    for i in prange(score.shape[0]):
        sel = select(score[i, :cur[i] + 1], cur[i], nsel)
        for c in range(sel.shape[0]):
            kept[i, c] = sel[c]
            chosen[i, sel[c]] = True


_select_rows_1, _select_rows_p = twins(_select_rows)


def _attend_kept(q, K, V, kept, todo, q_pos, lsel, scale, out):
    """out[t, heads of g] = attention of query t over its kept blocks (kept [T, Hkv, n], -1 pads),
    for the (t, g) with todo[t, g]."""
    T, H, hd = q.shape
    Hkv = K.shape[1]
    G = H // Hkv
    for task in prange(T * Hkv):
        ti, g = task // Hkv, task % Hkv
        if not todo[ti, g]:
            continue
        m, lsum = np.empty(G, np.float32), np.empty(G, np.float32)
        acc, sc = np.empty((G, hd), np.float32), np.empty((G, CHUNK), np.float32)
        attend_kept(q, ti, g * G, G, K, V, g, kept[ti, g], lsel, q_pos[ti], scale, m, lsum, acc, sc, out)


_attend_kept_1, _attend_kept_p = twins(_attend_kept, fastmath=FAST)


def block_weights(n_cmp, n_sel, l, s, lsel):
    """[n_cmp, n_sel]: positions compressed block i and selection block j share, / s (Eq. 9)."""
    i0 = np.arange(n_cmp)[:, None] * s
    j0 = np.arange(n_sel)[None, :] * lsel
    shared = np.minimum(i0 + l, j0 + lsel) - np.maximum(i0, j0)
    return (np.maximum(shared, 0) / s).astype(np.float32)


def _by_blas(q, K, V, kc, vc, q_pos, l, s, lsel, nsel, w, scale, union_ratio):
    """Prefill: per kv group g and block of QUERY_BLOCK queries, the scores of the compressed and
    selected branches are BLAS products over every key some query of the block sees, each row
    masked to its own keys; the window branch is sliding-window attention (kernels.attention.by_blas).

    Neighbouring queries of a trained model mostly keep the same blocks, so the union of a block's
    kept blocks is a small multiple of n. When it is not (random queries keep nearly every block),
    multiplying by the union would cost more than the per-query kernel: those blocks' queries
    take `_attend_kept` instead (union_ratio, UNION_RATIO by default: BLAS reads a key about 3x faster)."""
    T, H, hd = q.shape
    G = H // K.shape[1]
    t = q_pos
    n_vis = np.where(t + 1 >= l, (t + 1 - l) // s + 1, 0)                    # visible compressed blocks
    cur = t // lsel                                                         # the query's selection block
    weight = block_weights(int(n_vis.max()), int(cur.max()) + 1, l, s, lsel)
    o_cmp, o_slc = np.empty((T, H, hd), np.float32), np.empty((T, H, hd), np.float32)
    kept = np.full((T, K.shape[1], nsel), -1, np.int64)
    slow = []                                  # (t0, t1, g): query blocks whose union of kept blocks is large
    for g in range(K.shape[1]):
        heads = slice(g * G, (g + 1) * G)
        for t0 in range(0, T, QUERY_BLOCK):
            t1 = min(T, t0 + QUERY_BLOCK)
            tb, tq = t1 - t0, t[t0:t1]
            qb = q[t0:t1, heads].reshape(-1, hd) * scale                          # [tb G, hd]
            # 1. compressed attention, 2. block scores (summed over the group's heads)
            m, nc = int(n_vis[t0:t1].max()), int(cur[t0:t1].max()) + 1
            p = qb @ kc[:m, g].T                                                   # [tb G, m]
            softmax_rows(p, np.zeros(tb, np.int64), n_vis[t0:t1], G)
            o_cmp[t0:t1, heads] = (p @ vc[:m, g]).reshape(tb, G, hd)
            score = p.reshape(tb, G, m).sum(axis=1) @ weight[:m, :nc]              # [tb, nc]
            # 3. selection
            chosen = np.zeros((tb, nc), np.bool_)
            pick(_select_rows_1, _select_rows_p, tb * nc * nsel)(score, cur[t0:t1], nsel, kept[t0:t1, g], chosen)
            # 4. selected attention over the union of the block's kept blocks
            pos = (np.flatnonzero(chosen.any(axis=0))[:, None] * lsel + np.arange(lsel)).ravel()
            pos = pos[pos <= tq.max()]                                             # [nk] key positions
            if len(pos) > union_ratio * chosen.sum() / tb * lsel:
                slow.append((t0, t1, g))
                continue
            sc = qb @ K[pos, g].T                                                  # [tb G, nk]
            seen = chosen[:, pos // lsel] & (pos[None, :] <= tq[:, None])          # [tb, nk]
            sc[~np.repeat(seen, G, axis=0)] = -np.inf
            softmax_rows(sc, np.zeros(tb, np.int64), np.full(tb, len(pos), np.int64), G)
            o_slc[t0:t1, heads] = (sc @ V[pos, g]).reshape(tb, G, hd)
    if slow:                                   # their selected branch by the per-query kernel
        todo = np.zeros((T, K.shape[1]), np.bool_)
        for t0, t1, g in slow:
            todo[t0:t1, g] = True
        work = int(todo.sum()) * nsel * lsel * G * hd * 2
        pick(_attend_kept_1, _attend_kept_p, work)(q, K, V, kept, todo, t, lsel, scale, o_slc)
    # 5. window
    lo, hi = np.maximum(0, t - w + 1), t + 1
    o_win = by_blas(q, K, V, lo, hi, int((hi - lo).max()), scale)
    return o_cmp, o_slc, o_win, kept


def nsa_attention(q, K, V, kc, vc, q_pos, shape, union_ratio=UNION_RATIO):
    """Same contract as the reference: o_cmp, o_slc, o_win [T, H, hd] and kept [T, Hkv, n].
    union_ratio (prefill): see `_by_blas`; 0 sends every selected block to the per-query kernel."""
    hd = q.shape[-1]
    c32 = lambda a: np.ascontiguousarray(a, np.float32)
    if kc.shape[0] == 0:
        kc = vc = np.zeros((1, K.shape[1], hd), np.float32)
    T, H, _ = q.shape
    if T >= PREFILL_MIN_T:
        return _by_blas(c32(q), c32(K), c32(V), c32(kc), c32(vc), np.asarray(q_pos, np.int64),
                        shape.block, shape.stride, shape.select_block, shape.select_count, shape.window,
                        np.float32(1.0 / np.sqrt(hd)), union_ratio)
    last = int(np.max(q_pos)) + 1
    work = T * H * hd * 2 * (min(last, shape.select_block * shape.select_count) + min(last, shape.window)
                             + last // shape.stride)
    fn = pick(_nsa_1, _nsa_p, work)
    return fn(c32(q), c32(K), c32(V), c32(kc), c32(vc), np.asarray(q_pos, np.int64),
                shape.block, shape.stride, shape.select_block, shape.select_count, shape.window,
                np.float32(1.0 / np.sqrt(hd)))

